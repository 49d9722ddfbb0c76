"""The Python API: stage functions (profile/plan/run) and the online Orchestrator on the simulated
backend (virtual clock paced to the wall clock; fast)."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest

import saturn
from saturn.api import JobReport, OrchestratorError, synthetic_profiles

CPU2 = saturn.Cluster(devices="cpu", slots=2)


def _job(name: str, steps: int = 100, lr: float = 1e-3, **kw) -> saturn.Job:
    return saturn.Job(name=name, model="gpt2-tiny", batch_size=4, seq_len=16, steps=steps, precision="fp32",
                      gpus=kw.pop("gpus", [1]), optimizer={"name": "adamw", "lr": lr}, **kw)


def _loss(job, step):  # lower lr -> lower loss in this toy world
    return 1.0 + 1000 * job.optimizer.lr + 5.0 / (1 + step)


def _orch(**kw):
    kw.setdefault("profiles", synthetic_profiles([_job("x")], step_time_s=1.0, startup_s=1.0))
    return saturn.Orchestrator(CPU2, backend="simulate", sim_speed=kw.pop("sim_speed", 200), sim_loss=_loss,
                               **kw)


def test_exports():
    for name in ("Workload", "Job", "Cluster", "Node", "load_workload", "SaturnError", "profile", "plan", "run",
                 "Orchestrator", "JobFuture", "JobReport"):
        assert hasattr(saturn, name), name
        assert name in saturn.__all__


def test_plan_and_simulated_run_match_the_cli(tmp_path):
    wl = saturn.load_workload("configs/examples/gpt2-sweep.yaml")
    p = saturn.plan(wl, time_limit_s=5)
    assert {a.job for a in p.assignments} == {j.name for j in wl.jobs}
    assert p.makespan_s >= p.lower_bound_s > 0
    wl = saturn.load_workload("configs/examples/tiny-cpu.yaml")
    res = saturn.run("configs/examples/tiny-cpu.yaml", simulate=True, run_dir=tmp_path / "run", time_limit_s=2)
    assert set(res) == {j.name for j in wl.jobs}
    assert all(r.status == "completed" and r.steps == wl.job(n).total_steps for n, r in res.items())


def test_plan_with_a_given_table():
    jobs = [_job("a"), _job("b", lr=3e-3)]
    wl = saturn.Workload(name="t", cluster=CPU2, jobs=jobs)
    p = saturn.plan(wl, profiles=synthetic_profiles(jobs, gpus=(1, 2)), time_limit_s=2)
    assert len(p.assignments) == 2


def test_orchestrator_submit_report_result():
    with _orch() as orch:
        futs = orch.submit_many([_job("a"), _job("b", lr=2e-3)])
        deadline = time.monotonic() + 10
        while not orch.report("a").metrics and time.monotonic() < deadline:
            time.sleep(0.02)
        rep = orch.report("a")
        assert rep.status in ("running", "completed") and rep.metrics and rep.technique == "ddp"
        res = [f.result(timeout=30) for f in futs]
    for r, lr in zip(res, (1e-3, 2e-3)):
        assert isinstance(r, JobReport) and r.status == "completed" and r.step == 100
        assert r.loss == pytest.approx(_loss(_job("z", lr=lr), 100))
        steps = [s for s, _ in r.metrics]
        assert steps == sorted(steps) and steps[-1] == 100
    assert set(orch.results) == {"a", "b"}


def test_cancel_frees_gpus_for_a_waiting_job():
    """3 one-slot jobs on 2 slots: c waits; cancelling a running job starts c on its slot at once.
    (Planned for the makespan: under the default mean_completion objective the short c would go first.)"""
    with _orch(objective="makespan") as orch:
        fa, fb, fc = orch.submit_many([_job("a", steps=400), _job("b", steps=400), _job("c", steps=50)])
        deadline = time.monotonic() + 10
        both = lambda: (orch.report("a").status == orch.report("b").status == "running"  # noqa: E731
                        and orch.report("a").step > 0)  # (cancel now acts at once: let a make progress)
        while not both() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert orch.report("c").status == "pending"
        freed = orch.report("a").gpus
        orch.cancel("a")
        ra = fa.result(timeout=10)
        assert ra.status == "cancelled" and 0 < ra.step < 400
        rc = fc.result(timeout=30)
        assert rc.status == "completed" and rc.gpus == freed
        assert fb.result(timeout=30).status == "completed"
        with orch.lock:
            st = orch.executor.state
            c_launch = st.jobs["c"].segments[0].launched_at
            b_end = st.jobs["b"].segments[-1].ended_at
        assert c_launch < b_end  # c did not wait for b: it got a's slot when a was cancelled


def test_cancel_pending_job_and_future_cancel():
    with _orch() as orch:
        fa, fb, fc = orch.submit_many([_job("a", steps=200), _job("b", steps=200), _job("c")])
        assert fc.cancel()
        rc = fc.result(timeout=10)
        assert rc.status == "cancelled" and rc.step == 0
        orch.shutdown(cancel_jobs=True)
    assert fa.result(0).status == fb.result(0).status == "cancelled"


def test_errors():
    with _orch() as orch:
        orch.submit(_job("a", steps=20))
        with pytest.raises(OrchestratorError):
            orch.submit(_job("a"))  # still running
        with pytest.raises(OrchestratorError):
            orch.cancel("nope")
        with pytest.raises(OrchestratorError, match="no profile rows"):
            orch.submit(saturn.Job(name="big", model="gpt2-small", batch_size=4, steps=5))
        with pytest.raises(OrchestratorError, match="no profile rows"):  # all or nothing
            orch.submit_many([_job("ok1"), saturn.Job(name="big2", model="gpt2-small", batch_size=4, steps=5)])
        with pytest.raises(OrchestratorError, match="already submitted"):
            orch.submit_many([_job("d"), _job("d")])
        assert "ok1" not in orch and "d" not in orch
        orch.wait(timeout=30)
        fut = orch.submit(_job("a", steps=10))  # a finished job's name can be reused
        assert fut.result(timeout=30).status == "completed"
    with pytest.raises(OrchestratorError):
        orch.submit(_job("late"))


def test_infeasible_job_fails_its_future_only():
    prof = pd.concat([synthetic_profiles([_job("x")], step_time_s=1.0)]).assign(gpus=4)  # needs 4 slots
    with _orch(profiles=prof) as orch:
        fut = orch.submit(_job("wide", gpus=[4]))
        r = fut.result(timeout=30)
        assert r.status == "failed"
        ok = orch.submit(_job("ok", steps=10), profiles=synthetic_profiles([_job("x")], step_time_s=1.0))
        assert ok.result(timeout=30).status == "completed"


def test_done_callback_and_wait_timeout():
    seen = []
    with _orch(sim_speed=40) as orch:
        fut = orch.submit(_job("a", steps=40))
        fut.add_done_callback(lambda f: seen.append(f.result().status))
        with pytest.raises(TimeoutError):
            orch.wait(timeout=0.05)
        orch.wait(timeout=30)
    assert seen == ["completed"]
    assert math.isfinite(fut.result().loss)


def test_batch_window_plans_a_burst_of_submissions_together():
    """Jobs submitted one by one within the window reach the executor in one command: one plan."""
    with _orch(batch_window_s=0.3) as orch:
        futs = []
        for i in range(3):
            futs.append(orch.submit(_job(f"b{i}", steps=20)))
            time.sleep(0.05)
        assert all(f.result(timeout=30).status == "completed" for f in futs)
        with orch.lock:
            plans = [d for _, k, d in orch.executor.journal.events() if k == "plan"]
    assert {a["job"] for a in plans[0]["plan"]["assignments"]} == {"b0", "b1", "b2"}
