"""The plan's costs are the ones that happen (issue 25): on warm workers a launch costs the warm
start and only a device whose worker must still start waits for it; a final save that drains
behind costs its blocking (staging) part; cold launches pay the process start every time."""

from __future__ import annotations

import pandas as pd
import pytest

from saturn.executor import Executor, ExecutorConfig, estimates, planner_inputs
from saturn.executor.backends.simulated import SimulatedBackend

# profiled on a warm worker: launch 1 s; starting a worker 10 s; full save 5 s, staging 0.5 s
ROWS = [{"job": j, "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.1, "feasible": True,
         "status": "ok", "launch_s": 1.0, "checkpoint_s": 5.0, "checkpoint_stage_s": 0.5,
         "checkpoint_source": "measured", "startup_s": 6.0, "worker_start_s": 10.0} for j in ("a", "b")]
JOBS = {"a": 100, "b": 100}  # 10 s of steps each


class WarmSim(SimulatedBackend):
    """A simulated backend that reports warm-worker facts like ProcessBackend does."""

    def __init__(self, facts):
        super().__init__(lambda j, t, g, k: 0.1, startup=lambda j, t, g: 1.5)
        self.facts = facts

    def launch_facts(self, node, slots):
        return dict(self.facts)


def _plan(facts, whole=False):
    ex = Executor(JOBS, {"n": 1}, pd.DataFrame(ROWS), WarmSim(facts),
                  config=ExecutorConfig(introspect=False, time_limit_s=2.0))
    return ex.state.plan if whole else sorted(ex.state.plan["assignments"], key=lambda a: a["start_s"])


def test_warm_workers_plan_the_warm_launch_and_one_worker_start():
    first, second = _plan({"warm": True, "drains_behind": True, "worker_starts": {("n", 0): 10.0}})
    assert first["start_s"] == pytest.approx(10.0)  # the worker starts first, once
    for a in (first, second):  # 1 s warm launch + 10 s steps + 0.5 s staging of the final save
        assert a["end_s"] - a["start_s"] == pytest.approx(11.5)
        ph = {k: v["s"] for k, v in a["phases"].items()}
        assert ph["launch"] == pytest.approx(1.0) and ph["final_save"] == pytest.approx(0.5)
        assert ph["drain"] == pytest.approx(4.5)  # written after the GPU is free: not in the bar
    assert second["start_s"] == pytest.approx(first["end_s"])
    p = _plan({"warm": True, "drains_behind": True, "worker_starts": {("n", 0): 10.0}}, whole=True)
    assert p["durable_s"] == pytest.approx(p["makespan_s"] + 4.5)  # the run ends when it is durable
    assert not [a for a in _plan({"warm": True, "drains_behind": True,
                                  "worker_starts": {("n", 0): 0.0}}) if a["start_s"] == 10.0]


def test_cold_launches_pay_the_process_start_and_the_whole_final_save():
    first, second = _plan({"warm": False, "drains_behind": False})
    assert first["start_s"] == 0.0 and "drain" not in first["phases"]
    for a in (first, second):  # 10 s start + 1 s launch + 10 s steps + 5 s synchronous save
        assert a["end_s"] - a["start_s"] == pytest.approx(26.0)


def test_multi_gpu_final_saves_stay_synchronous_in_the_plan():
    est = estimates.Estimator(pd.DataFrame([{**ROWS[0], "gpus": 2}]))
    est.launch = estimates.LaunchFacts(warm=True, drains_behind=True)
    (row,) = est.rows["a"]
    assert est.final_save_s(row) == 5.0 and est.fixed_cost(row) == pytest.approx(6.0)


def test_a_checkpoint_over_its_share_of_the_staging_budget_is_planned_blocking():
    """Two GPUs share 6 GB of staging: a 4 GB checkpoint may find the budget full, so its saves
    (final and periodic) are planned at their full cost; a 2 GB one drains behind."""
    big = [{**r, "checkpoint_gb": 4.0} for r in ROWS]
    facts = {"warm": True, "drains_behind": True, "staging_budget_gb": 6.0, "node_gpus": 2}
    est = estimates.Estimator(pd.DataFrame(big), checkpoint_every=20)
    est.launch = estimates.LaunchFacts(**facts)
    (row,) = est.rows["a"]
    assert est.over_budget(row) and est.final_save_s(row) == 5.0
    est.launch = estimates.LaunchFacts(**{**facts, "staging_budget_gb": 8.0})
    assert not est.over_budget(row) and est.final_save_s(row) == 0.5
    est.launch = estimates.LaunchFacts(**facts)
    from saturn.executor.state import JobInfo, JobState, RunState

    st = RunState(jobs={"a": JobState(info=JobInfo("a", 100))})
    _, table = planner_inputs.planner_jobs_and_profiles(st, est, 0.0)
    r = table.iloc[0]
    assert r["checkpoint_s"] == 5.0 and r["checkpoint_stage_s"] == 5.0  # periodic ones block too
