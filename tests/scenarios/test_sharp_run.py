"""A SHARP group chosen by the planner runs end to end through the real executor on CPU slots:
one attempt (one runner process) trains every member, each member's metrics, checkpoints and
status land in its own job directory like a solo job's, each member's losses equal solo
spilling training, and `--resume` after the executor is SIGKILLed loses no logged step.
The process tests are slow (seconds to tens of seconds each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.paths import ROOT

KNOBS = {"shard_layers": 1}
GROUP = "sharp:a+b+c"

WORKLOAD = """name: tiny-sharp
cluster: {devices: cpu, slots: 1}
defaults: {seq_len: 16, batch_size: 4, precision: fp32, model: gpt2-tiny}
jobs:
  - {name: a, steps: %(steps)d, seed: 0, data: %(data)s}
  - {name: b, steps: %(steps)d, seed: 1, techniques: [spilling], data: %(data)s}
  - {name: c, steps: %(steps_c)d, seed: 2, data: %(data)s,
     optimizer: {name: adamw, lr: 0.003, weight_decay: 0.1}}
"""
SLOW_DATA = '{factory: "tests.helpers.slow_data:slow_tokens", kwargs: {vocab_size: 256, delay_s: 0.01}}'



def _files(tmp_path, steps, steps_c, data="synthetic-tokens"):
    from saturn.planner import sharp_option

    w = tmp_path / "w.yaml"
    w.write_text(WORKLOAD % {"steps": steps, "steps_c": steps_c, "data": data})
    rows = [{"job": j, "technique": "spilling", "knobs": json.dumps(KNOBS), "gpus": 1,
             "step_time_s": 1.0, "startup_s": 1.0, "feasible": True} for j in "abc"]
    # measured group row (as scripts/bench_sharp.py emits): faster than the members one by one
    rows.append(sharp_option.group_row(["a", "b", "c"], 0.5, 1, knobs=KNOBS, startup_s=1.0))
    p = tmp_path / "p.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return w, p


def _solo_losses(job, steps):
    """Solo spilling training of `job` (the reference SHARP must equal)."""
    import torch

    from saturn.techniques.spilling import SpillingEngine, engine_kwargs
    from saturn.training import loop
    from saturn.zoo.data import batch_for_step

    torch.set_num_threads(1)
    engine = SpillingEngine(loop.build_model(job), "cpu", **engine_kwargs(job, KNOBS))
    ds = loop.build_dataset(job, engine.model)
    return [engine.train_step(*batch_for_step(ds, s, job.batch_size)) for s in range(steps)]


def _lines(path: Path):
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _tiles(js):
    segs = js.segments
    assert segs[0].start_step == 0
    for x, y in zip(segs, segs[1:]):
        assert y.start_step == x.end_step, [(s.start_step, s.end_step, s.status) for s in segs]
    return segs[-1].end_step


@pytest.mark.slow
def test_planner_chosen_group_runs_as_one_attempt_with_solo_losses(tmp_path):
    from saturn.executor import Executor, ExecutorConfig, ProcessBackend
    from saturn.executor.report import summarize
    from saturn.spec import load_workload
    from saturn.training.catalog import latest_checkpoint, read_meta

    w, p = _files(tmp_path, 6, 4)
    wl = load_workload(w)
    rd = tmp_path / "run"
    ex = Executor(wl.jobs, wl.cluster.resolved(), pd.read_csv(p),
                  ProcessBackend(rd, device_type="cpu", checkpoint_every=2, warm=False), run_dir=rd,
                  config=ExecutorConfig(interval_s=1e9, time_limit_s=1.0, poll_s=0.1))
    assert {a["job"] for a in ex.state.plan["assignments"]} == {"a", "b", "c"}
    assert all(a["knobs"].get("group") == GROUP for a in ex.state.plan["assignments"])
    deadline = time.monotonic() + 240
    try:
        while ex.step():
            assert time.monotonic() < deadline, "run took too long"
            ex.backend.wait(0.1)
    finally:
        ex.backend.shutdown()
    pids = {js.segments[0].pid for js in ex.state.jobs.values()}
    assert len(pids) == 1 and None not in pids  # one runner process for the whole group
    for job in wl.jobs:
        js = ex.state.jobs[job.name]
        assert js.status == "completed" and _tiles(js) == job.steps
        assert [s.technique for s in js.segments] == ["sharp"]
        d = rd / "jobs" / job.name
        metrics = _lines(d / "metrics.jsonl")
        assert [m["step"] for m in metrics] == list(range(job.steps))
        assert [m["loss"] for m in metrics] == pytest.approx(_solo_losses(job, job.steps), rel=1e-5, abs=1e-5)
        ck = latest_checkpoint(str(d / "ckpt"))
        assert ck and read_meta(ck)["step"] == job.steps and ck == js.checkpoint
        steps = [r["step"] for r in _lines(d / "progress.jsonl") if "checkpoint" not in r]
        assert steps == list(range(1, job.steps + 1))  # one live metrics line per step
    rep = {j["job"]: j for j in summarize(rd)["jobs"]}
    assert all(rep[n]["group"] == GROUP and rep[n]["technique"] == "sharp" for n in "abc")


@pytest.mark.slow
def test_failed_group_attempt_is_retried_from_member_checkpoints(tmp_path):
    """SIGKILL of the group's runner process mid-run: every member's attempt fails, the group
    is relaunched from each member's newest checkpoint, and the members still tile their steps."""
    from saturn.executor import Executor, ExecutorConfig, ProcessBackend
    from saturn.spec import load_workload

    w, p = _files(tmp_path, 16, 12, data=SLOW_DATA)
    wl = load_workload(w)
    rd = tmp_path / "run"
    ex = Executor(wl.jobs, wl.cluster.resolved(), pd.read_csv(p),
                  ProcessBackend(rd, device_type="cpu", checkpoint_every=4, warm=False), run_dir=rd,
                  config=ExecutorConfig(interval_s=1e9, time_limit_s=1.0, poll_s=0.1))
    killed = False
    deadline = time.monotonic() + 240
    try:
        while ex.step():
            a = ex.state.jobs["a"]
            if not killed and a.status == "running" and a.committed_step >= 4 and a.current.pid:
                os.killpg(a.current.pid, signal.SIGKILL)
                killed = True
            assert time.monotonic() < deadline, "run took too long"
            ex.backend.wait(0.1)
    finally:
        ex.backend.shutdown()
    assert killed
    for job in wl.jobs:
        js = ex.state.jobs[job.name]
        assert js.status == "completed" and _tiles(js) == job.steps
        assert js.segments[0].status == "failed" and len(js.segments) == 2
        assert js.segments[1].technique == "sharp"  # relaunched as the group, from its checkpoint
    assert ex.state.jobs["a"].segments[1].start_step >= 4
    assert len({js.segments[1].pid for js in ex.state.jobs.values()}) == 1


@pytest.mark.slow
def test_resume_after_executor_sigkill_loses_no_logged_step(tmp_path):
    import psutil

    from saturn.executor.report import load_run

    w, p = _files(tmp_path, 32, 24, data=SLOW_DATA)
    rd = tmp_path / "run"
    cmd = [sys.executable, "-m", "saturn.cli.run", "run", str(w), "--run-dir", str(rd), "--profiles", str(p),
           "--no-live", "--checkpoint-every", "4", "--interval", "1000", "--time-limit", "1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, "executor ended before it could be killed"
        assert time.monotonic() < deadline
        state = None
        if (rd / "journal.sqlite").exists():
            try:
                state, _ = load_run(rd)
            except Exception:  # noqa: BLE001 - racing the first writes
                state = None
        if state and state.jobs and all(js.committed_step >= 4 and js.status == "running"
                                        for js in state.jobs.values()):
            break
        time.sleep(0.2)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    assert not [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    res = subprocess.run([sys.executable, "-m", "saturn.cli.run", "run", "--resume", str(rd), "--no-live",
                          "--checkpoint-every", "4"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=False, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    after, _ = load_run(rd)
    for name, total in (("a", 32), ("b", 32), ("c", 24)):
        js = after.jobs[name]
        assert js.status == "completed" and _tiles(js) == total
        assert js.segments[0].status == "lost" and js.segments[0].end_step >= 4
        assert {s.technique for s in js.segments} == {"sharp"}
        # every step was logged live, and a step trained twice (after the last checkpoint
        # before the kill) logged the same loss both times
        seen = {}
        for r in _lines(rd / "jobs" / name / "progress.jsonl"):
            if "checkpoint" in r:
                continue
            assert seen.setdefault(r["step"], r["loss"]) == pytest.approx(r["loss"], rel=1e-6, abs=1e-6)
        assert sorted(seen) == list(range(1, total + 1))
    out = subprocess.run([sys.executable, "-m", "saturn.cli.run", "report", str(rd)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert GROUP in out.stdout


def test_groups_are_planned_only_where_they_can_run_and_merge_when_running(tmp_path):
    """Fast, no processes: a simulated backend cannot run a group, so the plan keeps solo
    options; a running group's members become one fixed holder of their GPUs for the planner."""
    from saturn.executor import Executor, ExecutorConfig, SimulatedBackend
    from saturn.executor.sharp_dispatch import _merge_fixed, expand
    from saturn.planner.plan import Assignment

    rows = pd.read_csv(_files(tmp_path, 4, 4)[1])
    ex = Executor({"a": 4, "b": 4, "c": 4}, {"n0": 1}, rows,
                  SimulatedBackend(lambda job, tech, g, knobs: 1.0),
                  config=ExecutorConfig(interval_s=1e9, time_limit_s=1.0))
    assert {a["technique"] for a in ex.state.plan["assignments"]} == {"spilling"}
    knobs = {"shard_layers": 1, "group": GROUP}
    held = [Assignment(m, "sharp", dict(knobs), "n0", [0], 0.0, end) for m, end in (("a", 3.0), ("b", 5.0))]
    held.append(Assignment("c@checkpoint", "sharp", dict(knobs), "n0", [0], 0.0, 1.0))
    merged = _merge_fixed(held)
    # c's save runs in the group's process on the group's GPU: part of the group's hold (two
    # holders of GPU 0 at once would make the planner refuse the fixed assignments)
    assert [(a.job, a.end_s) for a in merged] == [(GROUP, 5.0)]
    assert [(a.job, a.end_s) for a in _merge_fixed(held[2:])] == [(GROUP + "@checkpoint", 1.0)]
    out = expand(merged)
    assert [a.job for a in out] == ["a", "b", "c"]
    assert all(a.knobs["group"] == GROUP for a in out)

