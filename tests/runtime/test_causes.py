"""#31 item 4 and #33 item 4: failure causes from typed signals, never from words in a log.

A worker that prints "out of memory" and raises ValueError fails as ValueError (cold and warm);
CUDA's OutOfMemoryError (or an error raised from it) is "oom"; a worker killed with SIGKILL is
reported as killed, and as "host out of memory: killed at X GB resident, the node has Y GB" when
its memory was near the node's limit (faked with SATURN_NODE_HOST_MEMORY_GB, the documented
hook), never as a timeout of Saturn's own supervision; a host-OOM option is recorded infeasible
with its peak and inputs_hash and is not retried unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from saturn.runtime import causes
from saturn.runtime.launch import run_workers
from saturn.runtime.routing import using_pool
from saturn.runtime.warm import WarmPool

ROOT = Path(__file__).resolve().parents[2]


def test_status_comes_from_the_exception_type_not_its_words():
    import torch

    assert causes.status_of_exception(ValueError("CUDA out of memory")) == "failed"
    assert causes.status_of_exception(RuntimeError("DefaultCPUAllocator: can't allocate memory")) == "failed"
    assert causes.status_of_exception(torch.OutOfMemoryError("x")) == "oom"
    try:
        try:
            raise torch.OutOfMemoryError("x")
        except torch.OutOfMemoryError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as exc:
        assert causes.status_of_exception(exc) == "oom"
    assert causes.status_of_exception(MemoryError()) == "host_oom"
    assert causes.error_type(torch.OutOfMemoryError("x")) == "torch.OutOfMemoryError"


def test_a_sigkill_is_host_oom_only_with_memory_evidence():
    d = causes.Death(0, 9, None, resident_gb=5.0, peak_gb=5.0, limit_gb=100.0, oom_kills=0)
    assert d.status == "failed" and "killed by SIGKILL (not by Saturn)" in d.describe()
    d = causes.Death(0, 9, None, resident_gb=95.0, peak_gb=95.0, limit_gb=100.0, oom_kills=0)
    assert d.status == "host_oom"
    assert d.describe().startswith("host out of memory: killed at 95.0 GB resident, the node has 100.0 GB")
    assert causes.Death(0, 9, None, 5.0, 5.0, 100.0, oom_kills=1).status == "host_oom"  # the kernel counted it
    assert causes.Death(0, 11, None, 95.0, 95.0, 100.0, oom_kills=0).status == "failed"  # SIGSEGV is no OOM


@pytest.fixture(scope="module")
def pool():
    p = WarmPool("cpu", start_timeout_s=120)
    yield p
    p.shutdown()


def _launch(mode, pool, target, payload=None, env=None, timeout_s=120):
    if mode == "warm":
        with using_pool(pool):
            return run_workers(target, payload or {}, [0], device_type="cpu", timeout_s=timeout_s, env=env)
    return run_workers(target, payload or {}, [0], device_type="cpu", timeout_s=timeout_s, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cold", "warm"])
def test_worker_causes_are_typed(mode, pool, monkeypatch):
    res = _launch(mode, pool, "tests.helpers.cause_factories:lying_target")
    assert res["status"] == "failed" and res["error_type"] == "ValueError", res
    assert "ValueError: not a memory problem" in res["reason"]
    res = _launch(mode, pool, "tests.helpers.cause_factories:gpu_oom_target")
    assert res["status"] == "oom" and res["error_type"] == "RuntimeError", res
    res = _launch(mode, pool, "tests.helpers.cause_factories:sigkill_target")  # the real limit: far away
    assert res["status"] == "failed" and res["signal"] == 9, res
    assert "killed by SIGKILL (not by Saturn)" in res["reason"]
    monkeypatch.setenv("SATURN_NODE_HOST_MEMORY_GB", "0.05")  # the node "has" 54 MB: the worker is at it
    res = _launch(mode, pool, "tests.helpers.cause_factories:sigkill_target")
    assert res["status"] == "host_oom" and res["host_peak_gb"] > 0.05, res
    assert res["reason"].startswith("host out of memory: killed at ") and "the node has 0.1 GB" in res["reason"]


@pytest.mark.slow
def test_a_warm_worker_slow_to_die_is_reported_dead_not_as_a_supervision_timeout(pool):
    """Its reply pipe closed, the process exits only 12 s later (the kernel freeing a huge
    resident set): the pool's 10 s wait raised TimeoutExpired, which became the job's cause."""
    res = _launch("warm", pool, "tests.helpers.cause_factories:slow_death_target", {"linger_s": 12})
    assert res["status"] == "failed" and res["signal"] == 9, res
    assert "TimeoutExpired" not in res["reason"] and "killed by SIGKILL" in res["reason"]


LYING = """name: lying
cluster: {devices: cpu, slots: 1}
defaults: {seq_len: 16, batch_size: 4, precision: fp32, steps: 20, techniques: [ddp], gpus: [1]}
jobs:
  - {name: liar, model: gpt2-tiny, data: {factory: "tests.helpers.cause_factories:lying_data"}}
"""


def _env(tmp_path, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), SATURN_PROFILES=str(tmp_path / "store"), **kw)
    env.pop("SATURN_SEED_PROFILES", None)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("warm", ["1", "0"])
def test_profile_stores_a_value_error_row_not_oom(tmp_path, warm):
    w = tmp_path / "w.yaml"
    w.write_text(LYING)
    res = subprocess.run([sys.executable, "-m", "saturn", "profile", str(w)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env=_env(tmp_path, SATURN_WARM=warm, SATURN_SEED_PROFILES="none"))
    store = pd.read_csv(tmp_path / "store" / "profiles.csv")
    rows = store[store["technique"] == "ddp"]
    assert len(rows), res.stdout + res.stderr
    assert set(rows["status"]) == {"failed"}, rows.to_dict("records")
    assert rows["reason"].str.contains("ValueError").all()
    assert rows["inputs_hash"].astype(str).str.len().min() >= 8  # a change of inputs re-measures


@pytest.mark.slow
@pytest.mark.parametrize("warm", ["1", "0"])
def test_run_fails_a_lying_factory_as_value_error(tmp_path, warm):
    w = tmp_path / "w.yaml"
    w.write_text(LYING)
    p = tmp_path / "p.csv"
    pd.DataFrame([{"job": "liar", "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.1,
                   "startup_s": 1.0, "feasible": True}]).to_csv(p, index=False)
    rd = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "saturn", "run", str(w), "--run-dir", str(rd), "--profiles", str(p),
                          "--no-live", "--max-retries", "0", "--time-limit", "1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env=_env(tmp_path, SATURN_WARM=warm))
    flat = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 1, flat[-3000:]
    assert "liar failed:" in flat and "ValueError: the data factory broke" in flat, flat[-3000:]
    assert "ran out of memory" not in flat and "(OOM)" not in flat, flat[-3000:]
    err = (rd / "jobs" / "liar" / "error.txt").read_text()
    assert "ValueError" in err and "(OOM)" not in err


KILLED = """name: killed
cluster: {devices: cpu, slots: 1}
defaults: {seq_len: 16, batch_size: 4, precision: fp32, steps: 20, gpus: [1]}
jobs:
  - {name: big, model: gpt2-tiny, techniques: [ddp, fsdp], data: {factory: "tests.helpers.cause_factories:killed_data"}}
"""


@pytest.mark.slow
def test_host_oom_kill_is_reported_recorded_and_not_retried(tmp_path):
    """Both options of the job are SIGKILLed at the (faked) host limit: each is tried once,
    recorded as a host_oom row with its peak and inputs_hash, and the job fails saying so in
    `saturn run`, `status`, `report` and error.txt -- never as a timeout."""
    from saturn.executor.journal import open_journal
    from saturn.profiler.hardware import hardware_for_cluster
    from saturn.profiles.store import load_store, lookup, upsert_rows
    from saturn.spec import load_workload

    w = tmp_path / "w.yaml"
    w.write_text(KILLED)
    wl = load_workload(str(w))
    hw = hardware_for_cluster(wl.cluster).key()
    sig = str(wl.jobs[0].signature)
    upsert_rows([{"signature": sig, "technique": t, "knobs": "{}", "gpus": 1, **hw, "status": "ok",
                  "feasible": True, "step_time_s": 0.05 * (i + 1), "startup_s": 1.0, "source": "profiler",
                  "measured_at": "2026-01-01T00:00:00"} for i, t in enumerate(["ddp", "fsdp"])],
                tmp_path / "store")
    rd = tmp_path / "run"
    env = _env(tmp_path, SATURN_NODE_HOST_MEMORY_GB="0.05", SATURN_SEED_PROFILES="none")
    cli = [sys.executable, "-m", "saturn"]
    res = subprocess.run([*cli, "run", str(w), "--run-dir", str(rd), "--no-live", "--max-retries", "3",
                          "--time-limit", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    outs = {"run": res.stdout + res.stderr}
    assert res.returncode == 1, outs["run"][-3000:]
    for cmd in ("status", "report"):
        r = subprocess.run([*cli, cmd, str(rd)], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
        outs[cmd] = r.stdout + r.stderr
    outs["error.txt"] = (rd / "jobs" / "big" / "error.txt").read_text()
    for name, out in outs.items():
        flat = " ".join(out.split())
        assert "host out of memory: killed at" in flat and "the node has 0.1 GB" in flat, (name, out[-3000:])
        assert "Timeout" not in flat and "timed out" not in flat, (name, out[-3000:])
    journal = open_journal(rd)
    techs = [d["technique"] for _, kind, d in journal.events() if kind == "launch"]
    journal.close()
    assert sorted(techs) == ["ddp", "fsdp"], techs  # each option once, never retried unchanged
    store = pd.read_csv(tmp_path / "store" / "profiles.csv")
    bad = store[store["status"] == "host_oom"]
    assert sorted(bad["technique"]) == ["ddp", "fsdp"], store.to_dict("records")
    assert (bad["host_peak_gb"] > 0.05).all() and (bad["inputs_hash"].astype(str).str.len() >= 8).all()
    assert not bad["feasible"].astype(bool).any()
    # the next plan sees both options infeasible (the earlier ok rows are superseded), not retried
    rows, _ = lookup(wl.jobs, wl.cluster, load_store(tmp_path / "store"))
    assert len(rows) == 2 and not rows["feasible"].astype(bool).any(), rows.to_dict("records")
    assert set(rows["status"]) == {"host_oom"}


def test_a_newer_memory_failure_supersedes_the_options_ok_row_but_not_other_knobs():
    """After a host OOM the option is infeasible for the next plan (an unchanged option is never
    retried), while another knob setting of the technique stays plannable."""
    from saturn.profiles.store import lookup
    from saturn.spec.schema import Cluster, Job
    from saturn.spec.signature import inputs_hash

    job = Job(name="j", model="gpt2-tiny", batch_size=4, seq_len=16, steps=5, precision="fp32", gpus=[1])
    hw = {"gpu_type": "cpu", "gpu_memory_gb": 0, "interconnect": "none", "torch_version": "x"}
    base = {"signature": str(job.signature), "gpus": 1, **hw, "startup_s": 1.0}
    table = pd.DataFrame([
        {**base, "technique": "spilling", "knobs": '{"optimizer_state":"fp32"}', "status": "ok", "feasible": True,
         "step_time_s": 1.0, "measured_at": "2026-01-01T00:00:00+0000", "inputs_hash": ""},
        {**base, "technique": "spilling", "knobs": '{"optimizer_state":"bf16"}', "status": "ok", "feasible": True,
         "step_time_s": 1.2, "measured_at": "2026-01-01T00:00:00+0000", "inputs_hash": ""},
        {**base, "technique": "spilling", "knobs": '{"optimizer_state":"fp32"}', "status": "host_oom",
         "feasible": False, "step_time_s": None, "measured_at": "2026-01-02T00:00:00+0000",
         "inputs_hash": inputs_hash(job), "host_peak_gb": 125.0, "host_memory_gb": 128.0,
         "reason": "host out of memory: killed at 125.0 GB resident, the node has 128.0 GB"}])
    cluster = Cluster(devices="cpu", slots=1)
    rows, _ = lookup([job], cluster, table)
    assert len(rows) == 1 and bool(rows.iloc[0]["feasible"]), rows.to_dict("records")
    assert "bf16" in rows.iloc[0]["knobs"]  # the leaner setting is planned; fp32 is not retried
    rows, _ = lookup([job], cluster, table[table["knobs"].str.contains("fp32")])
    assert list(rows["status"]) == ["host_oom"], rows.to_dict("records")
