"""Warm execution on CPU slots (gloo, tiny models): the same long-lived workers run job after job
with different techniques and slot counts; a crash or a SIGKILL inside a warm worker is isolated,
the worker replaced and the job retried by the executor; a warm launch reaches its first step
sooner than a cold one."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest

from saturn.runtime.launch import run_workers
from saturn.runtime.routing import using_pool
from saturn.runtime.warm import WarmPool
from saturn.spec.schema import Job
from saturn.techniques import get_technique

pytestmark = pytest.mark.slow
HERE = "tests.runtime.test_warm"


def tiny_job(**kw) -> Job:
    base = dict(name="t", model="gpt2-tiny", batch_size=4, seq_len=16, steps=12, precision="fp32",
                optimizer={"name": "adamw", "lr": 1e-3})
    return Job(**{**base, **kw})


def pid_target(payload: dict, ctx) -> dict:
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(t)
    return {"pid": os.getpid(), "sum": float(t), "port": os.environ["MASTER_PORT"]}


def crash_target(payload: dict, ctx) -> dict:
    if ctx.rank == 1:
        raise RuntimeError("boom from rank 1")
    import torch.distributed as dist

    dist.barrier()  # rank 0 hangs here until the pool kills it
    return {}


@pytest.fixture
def pool():
    p = WarmPool("cpu")
    p.prestart([0, 1])
    yield p
    p.shutdown()


def test_three_jobs_different_techniques_and_slots_on_same_workers(pool, tmp_path):
    """ddp on 1 slot, fsdp on 2, ddp on 2: one job resumed across the switches, same worker pids,
    a fresh process group (port) per job, nothing replaced."""
    job = tiny_job()
    ckpt = str(tmp_path / "ckpt")
    with using_pool(pool):
        first = run_workers(f"{HERE}:pid_target", {}, [0, 1], device_type="cpu", timeout_s=120)
        pids = pool.pids()
        assert sorted(pids.values()) == sorted([first["pid"]] + [p for s, p in pids.items() if s == 1])
        r1 = get_technique("ddp").run(job, [0], {}, 0, 4, ckpt, device_type="cpu", timeout_s=120)
        r2 = get_technique("fsdp").run(job, [0, 1], {}, 4, 4, ckpt, device_type="cpu", timeout_s=120)
        r3 = get_technique("ddp").run(job, [0, 1], {}, 8, 4, ckpt, device_type="cpu", timeout_s=120)
        last = run_workers(f"{HERE}:pid_target", {}, [0, 1], device_type="cpu", timeout_s=120)
    for r, end in ((r1, 4), (r2, 8), (r3, 12)):
        assert r.status == "completed", r.reason
        assert r.step == end and len(r.losses) == 4
    assert [s for s, _ in r1.losses + r2.losses + r3.losses] == list(range(12))
    assert pool.pids() == pids and pool.replaced == 0
    assert last["pid"] == first["pid"] and last["sum"] == 3.0
    assert last["port"] != first["port"]  # a fresh rendezvous per job


def test_crash_in_a_job_replaces_only_its_workers(pool):
    with using_pool(pool):
        before = pool.pids()
        res = run_workers(f"{HERE}:crash_target", {}, [0, 1], device_type="cpu", timeout_s=120, grace_s=2)
        assert res["status"] == "failed" and "boom from rank 1" in res["reason"]
        after = pool.pids()
        assert pool.replaced == 2 and not set(before.values()) & set(after.values())
        ok = run_workers(f"{HERE}:pid_target", {}, [0, 1], device_type="cpu", timeout_s=120)
    assert ok["sum"] == 3.0 and ok["pid"] == after[0]


# ------------------------------------------------------------------- through the executor
class _CrashOnce:
    """Tokens whose first read of sample `at` raises (once per flag file): a bug inside a job."""

    def __init__(self, vocab_size: int, seq_len: int, flag: str, at: int):
        from saturn.zoo.data import SyntheticTokens

        self.inner, self.flag, self.at = SyntheticTokens(vocab_size, seq_len), flag, at

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        time.sleep(0.01)
        if i == self.at and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            raise RuntimeError("injected crash inside the warm worker")
        return self.inner[i]


def crash_once(seq_len: int, vocab_size: int, flag: str, at: int):
    return _CrashOnce(vocab_size, seq_len, flag, at)


WORKLOAD = """name: warm-exec
cluster: {devices: cpu, slots: 2}
defaults: {seq_len: 16, batch_size: 4, precision: fp32, model: gpt2-tiny, techniques: [ddp]}
jobs:
  - {name: crashy, steps: 40, gpus: [1],
     data: {factory: "tests.runtime.test_warm:crash_once", kwargs: {vocab_size: 256, flag: "%s", at: 60}}}
  - {name: killme, steps: 40, gpus: [1],
     data: {factory: "tests.runtime.test_warm:crash_once", kwargs: {vocab_size: 256, flag: "%s", at: -1}}}
"""


def test_crash_and_kill_in_warm_workers_are_isolated_and_retried(pool, tmp_path):
    from saturn.executor import Executor, ExecutorConfig, ProcessBackend
    from saturn.spec import load_workload

    w = tmp_path / "w.yaml"
    w.write_text(WORKLOAD % (tmp_path / "crashed", tmp_path / "never"))
    rows = [{"job": j, "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.05, "startup_s": 1.0,
             "status": "ok"} for j in ("crashy", "killme")]
    wl = load_workload(w)
    rd = tmp_path / "run"
    backend = ProcessBackend(rd, device_type="cpu", checkpoint_every=10, pool=pool)
    ex = Executor(wl.jobs, wl.cluster.resolved(), pd.DataFrame(rows), backend, run_dir=rd,
                  config=ExecutorConfig(interval_s=1e9, time_limit_s=1.0, poll_s=0.2))
    killed, start_pids = None, pool.pids()
    deadline = time.monotonic() + 240
    try:
        while ex.step():
            js = ex.state.jobs["killme"]
            if killed is None and js.status == "running" and js.committed_step >= 10:
                slot = js.current.gpus[0]
                killed = pool.pids()[slot]
                os.kill(killed, 9)  # SIGKILL the warm worker running killme
            assert time.monotonic() < deadline, "run took too long"
            ex.backend.wait(0.2)
    finally:
        ex.backend.shutdown()
    crashy, killme = ex.state.jobs["crashy"], ex.state.jobs["killme"]
    assert killed is not None and (tmp_path / "crashed").exists()
    for js in (crashy, killme):
        assert js.status == "completed"
        assert [s.status for s in js.segments].count("failed") == 1  # its own failure only
        assert js.segments[-1].end_step == 40 and js.segments[1].start_step >= 10
        assert all(b.start_step == a.end_step for a, b in zip(js.segments, js.segments[1:]))
    assert "injected crash" in (rd / "jobs" / "crashy" / "log.txt").read_text()
    assert pool.replaced >= 2 and killed not in pool.pids().values()
    assert not set(start_pids.values()) & set(pool.pids().values())  # both crashed workers replaced


def test_warm_launch_reaches_first_step_sooner_than_cold(pool):
    job = tiny_job()
    ddp = get_technique("ddp")
    cold = ddp.trial(job, [0], {}, 2, 120, device_type="cpu", warmup=1)
    with using_pool(pool):
        ddp.trial(job, [0], {}, 2, 120, device_type="cpu", warmup=1)  # first job settles the worker
        warm = ddp.trial(job, [0], {}, 2, 120, device_type="cpu", warmup=1)
    assert cold.status == warm.status == "ok", (cold.reason, warm.reason)
    assert warm.startup_s < cold.startup_s, (warm.startup_s, cold.startup_s)
    assert pool.replaced == 0


def test_gpu_worker_host_rss_gets_slack_but_gpu_memory_does_not():
    """A GPU worker is judged by its GPU memory; host RSS (allocator caches) gets >= 2 GiB slack."""
    from saturn.runtime.warm import _MIB, WarmPool

    pool = object.__new__(WarmPool)
    pool.device_type, pool.tolerance = "cuda", 256 * _MIB
    assert pool._tolerance("reserved") == 256 * _MIB and pool._tolerance("rss") == 2048 * _MIB
    pool.device_type = "cpu"
    assert pool._tolerance("rss") == 256 * _MIB
