"""Saves leave the device at staging speed (issue 25): a background save blocks only while the
state is copied to host memory; the bytes drain behind, after the job when a warm worker runs it;
the job is *finishing* (slot free, result not durable) until its checkpoint is published; a run
ends only when every result is durable; a kill while draining resumes from the last durable
checkpoint; a full staging budget makes the next save wait."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import torch

from saturn.runtime import drain, staging
from saturn.training import catalog, loop
from saturn.training import checkpoint as ckpt
from tests.helpers.tiny import cpu_ctx, tiny_job, trainable


@pytest.fixture
def fresh_staging(tmp_path, monkeypatch):
    """This process's drains on a private ledger (so the budget is the test's)."""
    drain.set_drain_behind(False)
    drain.release_staging()  # this process's buffers go back to the ledger they came from
    monkeypatch.setenv("SATURN_STAGING_LEDGER", str(tmp_path / "ledger.json"))
    monkeypatch.setattr(drain.DRAINS, "area", None)
    yield
    drain.set_drain_behind(False)
    drain.release_staging()


def test_final_save_drains_behind_and_publishes_later(tmp_path, monkeypatch, fresh_staging):
    monkeypatch.setenv("SATURN_TEST_SLOW_DRAIN_S", "1.5")
    drain.set_drain_behind(True)
    _, _, t = trainable(tiny_job())
    d = tmp_path / "ckpt"
    t0 = time.perf_counter()
    res = loop.train(tiny_job(), t, cpu_ctx(), mode="run", start_step=0, num_steps=6,
                         checkpoint_dir=str(d), technique="test")
    took = time.perf_counter() - t0
    assert res["durable"] is False and res["checkpoint"] == str(d / "step-6")
    assert drain.draining(str(d)) == [str(d / "step-6")]
    assert catalog.latest_checkpoint(str(d)) is None and took < 1.5  # returned before the write
    assert res["phases"]["save_block_s"] < 1.0 and res["phases"]["steps_s"] > 0
    assert drain.wait_pending() == str(d / "step-6")
    meta = catalog.check_intact(str(d / "step-6"))
    assert meta["step"] == 6 and meta["drain_s"] >= 1.5 and meta["save_block_s"] < 1.0


def test_cold_final_save_is_durable_on_return(tmp_path, fresh_staging):
    _, _, t = trainable(tiny_job())
    d = tmp_path / "ckpt"
    res = loop.train(tiny_job(), t, cpu_ctx(), mode="run", start_step=0, num_steps=6,
                         checkpoint_dir=str(d), checkpoint_every=2, technique="test")
    assert res["durable"] is True and catalog.latest_checkpoint(str(d)) == str(d / "step-6")


def _state(mb: float):
    n = int(mb * 2**20 / 4)
    return {"w": torch.randn(n), "b": torch.zeros(3)}


def test_full_staging_budget_makes_the_next_save_wait(tmp_path, monkeypatch, fresh_staging):
    """Room for one staged save: the second waits until the first drain frees its buffer; with
    room for two it does not wait."""
    monkeypatch.setenv("SATURN_TEST_SLOW_DRAIN_S", "1.5")
    sd = _state(4)
    need = staging.nbytes_of({"model": sd})
    monkeypatch.setenv("SATURN_STAGING_BUDGET_GB", str(1.5 * need / 1e9))
    with drain.in_background():
        ckpt.save_state(str(tmp_path / "a"), 1, sd, {}, {})
        assert drain.last_save_cost()["budget_wait_s"] < 0.5
        t0 = time.perf_counter()
        ckpt.save_state(str(tmp_path / "b"), 1, sd, {}, {})
    waited = drain.last_save_cost()["budget_wait_s"]
    assert waited > 1.0 and time.perf_counter() - t0 >= waited
    assert catalog.latest_checkpoint(str(tmp_path / "a")) is not None  # its drain ended first
    drain.release_staging()  # waits for the drains, gives the buffers back
    monkeypatch.setenv("SATURN_STAGING_BUDGET_GB", str(2.5 * need / 1e9))
    monkeypatch.setattr(drain.DRAINS, "area", None)
    with drain.in_background():
        ckpt.save_state(str(tmp_path / "c"), 1, sd, {}, {})
        ckpt.save_state(str(tmp_path / "d"), 1, sd, {}, {})
    assert drain.last_save_cost()["budget_wait_s"] < 0.5


def test_ledger_is_shared_and_drops_dead_processes(tmp_path):
    led = staging.Ledger(tmp_path / "l.json", budget=100)
    other = staging.Ledger(tmp_path / "l.json", budget=100)  # another process's view
    assert led.try_reserve(60) and not other.try_reserve(50, pid=1)
    led.release(60)
    assert other.try_reserve(50, pid=1) and other.held() == 50
    (tmp_path / "l.json").write_text(json.dumps({str(2**22 + 12345): 90}))  # a dead process's
    assert led.held() == 0 and led.try_reserve(100)


def test_staging_area_reuses_the_smallest_fitting_buffer_among_sizes(tmp_path):
    """Two free buffers of different sizes: acquiring one must not compare tensors elementwise
    (seen on an H200: list.remove raised 'The size of tensor a must match the size of tensor b')."""
    area = staging.StagingArea(staging.Ledger(tmp_path / "l.json", budget=10_000))
    big, _ = area.acquire(4096)
    small, _ = area.acquire(1024)
    assert big is not None and small is not None
    area.release(big)
    area.release(small)
    got, _ = area.acquire(1000)
    assert got is small and area.held_bytes() == 4096 + 1024
    area.release(got)
    area.close()


# --------------------------------------------------------------------------- through the executor
WORKLOAD = """name: drains
cluster: {devices: cpu, slots: 1}
defaults: {seq_len: 16, batch_size: 4, precision: fp32, model: gpt2-tiny, techniques: [ddp], gpus: [1]}
jobs:
  - {name: a, steps: %d}
  - {name: b, steps: %d}
"""


def _executor(tmp_path, pool, steps=(20, 20), checkpoint_every=0):
    from saturn.executor import Executor, ExecutorConfig, ProcessBackend
    from saturn.spec import load_workload

    w = tmp_path / "w.yaml"
    w.write_text(WORKLOAD % steps)
    wl = load_workload(w)
    rows = [{"job": j, "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.05 + 0.01 * i,
             "startup_s": 1.0, "status": "ok"} for i, j in enumerate(("a", "b"))]
    rd = tmp_path / "run"
    backend = ProcessBackend(rd, device_type="cpu", checkpoint_every=checkpoint_every, pool=pool)
    return rd, Executor(wl.jobs, wl.cluster.resolved(), pd.DataFrame(rows), backend, run_dir=rd,
                        config=ExecutorConfig(interval_s=1e9, time_limit_s=1.0, poll_s=0.1))


def _events(rd):
    db = sqlite3.connect(str(rd / "journal.sqlite"))
    return [(t, k, json.loads(d)) for t, k, d in db.execute("SELECT t, kind, data FROM events ORDER BY seq")]


@pytest.mark.slow
def test_next_job_starts_while_the_previous_checkpoint_drains(tmp_path):
    from saturn.executor.report import summarize
    from saturn.runtime.warm import WarmPool

    pool = WarmPool("cpu", env={"SATURN_TEST_SLOW_DRAIN_S": "3:20"})  # final saves drain slowly
    pool.prestart([0])
    try:
        rd, ex = _executor(tmp_path, pool)
        res = ex.run_until_done()
    finally:
        pool.shutdown()
    ev = _events(rd)
    first = min((e for e in ev if e[1] == "finished"), key=lambda e: e[0])
    done = first[2]["job"]
    other = "b" if done == "a" else "a"
    assert first[2].get("durable") is False
    durable_t = next(t for t, k, d in ev if k == "durable" and d["job"] == done)
    launch_t = next(t for t, k, d in ev if k == "launch" and d["job"] == other)
    steps_t = next(t for t, k, d in ev if k == "progress" and d["job"] == other)
    assert launch_t < durable_t and steps_t < durable_t  # the slot trained while the drain wrote
    assert [k for _, k, _ in ev][-1] == "run_finished"
    assert max(t for t, k, _ in ev if k == "durable") <= ev[-1][0]
    for j in ("a", "b"):
        assert res[j].status == "completed" and res[j].checkpoint == str(rd / "jobs" / j / "ckpt" / "step-20")
        assert catalog.check_intact(res[j].checkpoint)["step"] == 20  # durable when the run returned
    jobs = {j["job"]: j for j in summarize(rd)["jobs"]}
    ph = jobs[done]["phases"]
    assert ph["drain_s"] >= 3.0 and ph["save_block_s"] < 3.0 and ph["steps_s"] > 0 and ph["launch_s"] >= 0
    from saturn.executor.report import gantt, load_run, segment_spans

    state, _ = load_run(rd)
    assert "draining" in [sp[2] for sp in segment_spans(state.jobs[done].segments[-1], ev[-1][0])]
    assert gantt(rd, tmp_path / "gantt.png").stat().st_size > 1000


@pytest.mark.slow
def test_sigkill_while_draining_resumes_from_the_last_durable_checkpoint(tmp_path):
    from saturn.runtime.warm import WarmPool

    pool = WarmPool("cpu", env={"SATURN_TEST_SLOW_DRAIN_S": "60:20"})  # the final save hangs
    pool.prestart([0])
    killed = None
    try:
        rd, ex = _executor(tmp_path, pool, steps=(20, 4), checkpoint_every=10)

        deadline = time.monotonic() + 240
        while ex.step():
            a = ex.state.jobs["a"]
            if killed is None and a.status == "finishing":
                killed = pool.pids()[0]
                os.kill(killed, 9)  # SIGKILL the worker while it writes a's final checkpoint
                pool.env["SATURN_TEST_SLOW_DRAIN_S"] = "0"  # the replacement writes at full speed
            assert time.monotonic() < deadline, "run took too long"
            ex.backend.wait(0.1)
        ex.emit("run_finished", reason="")
    finally:
        pool.shutdown()
    a = ex.state.jobs["a"]
    assert killed is not None and a.status == "completed"
    lost = next(d for _, k, d in _events(rd) if k == "durable" and d["job"] == "a")
    ck10 = str(rd / "jobs" / "a" / "ckpt" / "step-10")
    assert lost["ok"] is False and lost["step"] == 10 and lost["checkpoint"] == ck10
    assert ck10 in lost["reason"] and "step-20" in lost["reason"]  # says which checkpoint it used
    assert [s.start_step for s in a.segments] == [0, 10]
    steps = [json.loads(x)["step"] for x in (rd / "jobs" / "a" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(20))  # every logged step is there, once
    assert catalog.check_intact(str(rd / "jobs" / "a" / "ckpt" / "step-20"))["step"] == 20


@pytest.mark.parametrize("published", [True, False])
def test_resume_settles_a_job_that_was_finishing(tmp_path, published):
    """The executor died while a final checkpoint drained (its workers died with it): on resume
    the job is completed if the checkpoint was published, else it runs again from its newest
    durable one, and the journal says which."""
    from saturn.executor import Executor, ExecutorConfig
    from saturn.executor.backends.simulated import SimulatedBackend

    rd = tmp_path / "run"
    rows = pd.DataFrame([{"job": "a", "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.1,
                          "startup_s": 0.0, "feasible": True}])
    cfg = ExecutorConfig(interval_s=1e9, time_limit_s=0.5, poll_s=float("inf"))
    ex = Executor({"a": 20}, {"n": 1}, rows, SimulatedBackend(lambda *a: 0.1), run_dir=rd, config=cfg)
    ex._launch_ready()
    d = rd / "jobs" / "a" / "ckpt"
    model, opt, _ = trainable(tiny_job())
    ckpt.save_checkpoint(str(d), 10, model, opt, {})
    if published:
        ckpt.save_checkpoint(str(d), 20, model, opt, {})
    ex.emit("progress", job="a", step=20, loss=1.0)
    ex.emit("finished", job="a", status="completed", step=20, checkpoint=str(d / "step-20"), durable=False)
    assert ex.state.jobs["a"].status == "finishing" and not ex.state.done()
    ex.close()
    ex2 = Executor.resume(rd, lambda off: SimulatedBackend(lambda *a: 0.1, start_time=off), config=cfg)
    a = ex2.state.jobs["a"]
    ev = [d for _, k, d in _events(rd) if k == "durable"][-1]
    if published:
        assert a.status == "completed" and a.committed_step == 20 and ev["ok"] is True
    else:
        assert a.status in ("pending", "running") and a.committed_step == 10 and ev["ok"] is False
        assert str(d / "step-10") in ev["reason"] and ev["checkpoint"] == str(d / "step-10")


def _acquire_within(area, nbytes, limit_s):
    """area.acquire(nbytes) in a thread: (buffer, waited) or None if it did not return in limit_s."""
    out = []
    t = threading.Thread(target=lambda: out.append(area.acquire(nbytes)), daemon=True)
    t.start()
    t.join(limit_s)
    return out[0] if out else None


@pytest.mark.parametrize("entry", ["foreign_live_int", "stale_start", "non_numeric", "negative", "not_a_pid"])
def test_ledger_ignores_foreign_and_malformed_entries(tmp_path, caplog, entry):
    """#31 item 6: an entry of a live process that is not a Saturn saver (claiming a huge budget)
    blocked the first save for 3,600 s; a non-numeric one crashed every staged save. Both are
    ignored with a warning (and kept in the file: not ours to drop)."""
    path = tmp_path / "l.json"
    live = str(os.getppid())  # alive, and no Saturn saver recorded it
    bad = {"foreign_live_int": {live: 10**15},
           "stale_start": {live: {"bytes": 10**15, "start": 1}},
           "non_numeric": {live: "lots"},
           "negative": {live: {"bytes": -5, "start": staging.process_start(int(live))}},
           "not_a_pid": {"ghost": 10**15}}[entry]
    path.write_text(json.dumps(bad))
    area = staging.StagingArea(staging.Ledger(path, budget=10_000))
    got = _acquire_within(area, 4096, 10.0)
    assert got is not None and got[0] is not None and got[1] < 5.0
    assert "ignoring entry" in caplog.text
    assert area.ledger.held() == 4096
    kept = json.loads(path.read_text())
    assert kept[next(iter(bad))] == next(iter(bad.values()))  # the foreign entry is left as found
    area.release(got[0])
    area.close()
    assert area.ledger.held() == 0


def test_staging_wait_is_bounded(tmp_path, monkeypatch):
    """A genuine saver holding the whole budget makes a save wait at most WAIT_LIMIT_S (then the
    caller saves synchronously), never the old 3,600 s."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        led = staging.Ledger(tmp_path / "l.json", budget=10_000)
        assert led.try_reserve(10_000, pid=other.pid)
        monkeypatch.setattr(staging, "WAIT_LIMIT_S", 0.5)
        got = _acquire_within(staging.StagingArea(led), 4096, 10.0)
        assert got is not None and got[0] is None and 0.4 < got[1] < 5.0
    finally:
        other.kill()
        other.wait()
