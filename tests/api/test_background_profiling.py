"""Submit returns at once (#16): new signatures are profiled in the background, the job is planned
from a labelled estimate and re-planned when the measurement lands."""

from __future__ import annotations

import threading
import time

import pytest

import saturn
from saturn.api import synthetic_profiles
from saturn.api.background_profiling import estimate_rows, shape_key
from saturn.profiles.store import upsert_rows

CPU2 = saturn.Cluster(devices="cpu", slots=2)


def _job(name, bs=4, steps=30):
    return saturn.Job(name=name, model="gpt2-tiny", batch_size=bs, seq_len=16, steps=steps, precision="fp32",
                      gpus=[1], techniques=["ddp"])


class SlowProfiler:
    """Stands in for `saturn profile`: takes `delay_s`, then stores 1 s/step rows for the jobs."""

    def __init__(self, delay_s=1.0):
        self.delay_s, self.calls, self.release = delay_s, [], threading.Event()

    def __call__(self, workload, store_dir=None, **kw):
        self.calls.append(([j.name for j in workload.jobs], kw))
        time.sleep(self.delay_s)
        upsert_rows(synthetic_profiles(workload.jobs, step_time_s=1.0, startup_s=0.5).to_dict("records"), store_dir)


def test_submit_returns_at_once_and_the_estimate_is_replaced_by_the_measurement(tmp_path):
    prof, events = SlowProfiler(delay_s=1.5), []
    with saturn.Orchestrator(CPU2, backend="simulate", store_dir=tmp_path / "store", profiler=prof, sim_speed=1,
                             on_profile=events.append, profile_limits={"techniques": ["ddp"], "gpus": [1]}) as orch:
        # (building a Job imports torch the first time: not timed). The guessed step time of
        # gpt2-tiny here is ~3 ms: 1500 steps run ~4.5 s, so the 1.5 s measurement lands meanwhile.
        a, b = _job("a", steps=1500), _job("b", steps=1500)
        t0 = time.monotonic()
        fa, fb = orch.submit(a), orch.submit(b)  # same signature: profiled once
        assert time.monotonic() - t0 < 1.0  # did not wait for the 1.5 s profile
        early = orch.report("a")
        assert early.profile.startswith("estimate: guessed")
        ra, rb = fa.result(timeout=60), fb.result(timeout=60)
        assert ra.status == rb.status == "completed"
        assert ra.profile == "measured"
        # a batch-size sibling is estimated from the measured one, scaled by batch size
        fc = orch.submit(_job("c", bs=8, steps=2))
        assert orch.report("c").profile == "estimate: batch-scaled from batch size 4"
        assert fc.result(timeout=60).status == "completed"
    assert [c[0] for c in prof.calls] == [["a"], ["c"]]
    assert [e["status"] for e in events if e["signature"] == str(_job("a").signature)] == ["queued", "started", "done"]
    assert events[0]["jobs"] == ["a"]


def test_profiling_failure_fails_the_waiting_job_with_the_reason(tmp_path):
    def broken(workload, store_dir=None, **kw):
        raise RuntimeError("CUDA out of memory on every option")

    events = []
    with saturn.Orchestrator(CPU2, backend="simulate", store_dir=tmp_path / "store", profiler=broken,
                             sim_speed=1, profile_limits={"budget_min": 5}, on_profile=events.append) as orch:
        fut = orch.submit(_job("a", steps=100000))  # runs for minutes on the guessed step time

        def told():
            rep = orch.report("a")
            return "out of memory" in (rep.reason if rep.status == "failed" else rep.profile)

        deadline = time.monotonic() + 20
        while not told() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert told(), (orch.report("a"), events)  # pending when the news came: failed with it; running: labelled
        orch.cancel("a")
        assert fut.result(timeout=30).status in ("failed", "cancelled")
    assert events[-1]["status"] == "failed" and "out of memory" in events[-1]["reason"]


def test_estimates_are_labelled():
    a = _job("a")
    rows = estimate_rows(a, CPU2.resolved(), {})
    assert rows["source"].iloc[0].startswith("estimate: guessed from") and rows["step_time_s"].iloc[0] > 0
    measured = synthetic_profiles([a], step_time_s=2.0)
    rows = estimate_rows(_job("b", bs=8), CPU2.resolved(), {shape_key(a): (4, measured)})
    assert rows["step_time_s"].iloc[0] == pytest.approx(4.0)  # linear in batch size
    with pytest.raises(saturn.errors.SaturnError, match="profile_limits"):
        saturn.Orchestrator(CPU2, backend="simulate", profiler=lambda *a, **k: None, profile_limits={"tech": 1})
