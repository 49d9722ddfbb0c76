"""The Orchestrator for online/HPO use (#16): completion-time planning by default, resume=True."""

from __future__ import annotations

import pytest

import saturn
from saturn.api import OrchestratorError, synthetic_profiles

CPU2 = saturn.Cluster(devices="cpu", slots=2)


def _job(name, steps):
    return saturn.Job(name=name, model="gpt2-tiny", batch_size=4, seq_len=16, steps=steps, precision="fp32",
                      gpus=[1], techniques=["ddp"])


def _first_launches(objective):
    prof = synthetic_profiles([_job("x", 10)], step_time_s=1.0, startup_s=0.5)
    with saturn.Orchestrator(CPU2, backend="simulate", profiles=prof, sim_speed=400, objective=objective) as orch:
        futs = orch.submit_many([_job("long1", 300), _job("long2", 300), _job("short", 20)])
        for f in futs:
            f.result(timeout=60)
        with orch.lock:
            return {n: js.segments[0].launched_at for n, js in orch.executor.state.jobs.items()}


def test_orchestrator_plans_for_early_results_by_default():
    # (times on the paced virtual clock, which also runs while the first plan is solved)
    d = _first_launches("mean_completion")
    assert d["short"] <= min(d["long1"], d["long2"]) + 1e-6  # the short trial's result comes first
    m = _first_launches("makespan")
    assert m["short"] >= max(m["long1"], m["long2"]) + 250  # the makespan objective runs it last


def test_bad_objective_is_a_clear_error():
    with pytest.raises(saturn.errors.SaturnError, match="objective"):
        saturn.Orchestrator(CPU2, backend="simulate", objective="fastest")


@pytest.mark.slow
def test_resume_continues_a_run_directory(tmp_path):
    prof = synthetic_profiles([_job("x", 10)], step_time_s=0.05, startup_s=5.0)
    run_dir = tmp_path / "run"
    kw = dict(run_dir=run_dir, backend="process", profiles=prof, interval_s=1e9, time_limit_s=1.0, poll_s=0.1)
    with saturn.Orchestrator(CPU2, **kw) as orch:
        first = orch.submit(_job("a", 6)).result(timeout=120)
    assert first.status == "completed"
    with pytest.raises(OrchestratorError, match="resume=True"):
        saturn.Orchestrator(CPU2, **kw)
    with saturn.Orchestrator(CPU2, resume=True, **kw) as orch:
        assert "a" in orch and orch.future("a").done()
        again = orch.report("a")
        assert again.status == "completed" and again.step == 6 and [s for s, _ in again.metrics] == list(range(1, 7))
        second = orch.submit(_job("b", 4)).result(timeout=120)
    assert second.status == "completed" and second.step == 4
    with saturn.Orchestrator(CPU2, resume=True, **kw) as orch:  # both jobs are in the one journal
        assert sorted(orch.jobs) == ["a", "b"]
