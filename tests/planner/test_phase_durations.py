"""A plan that sees every second (issue 14): job durations include launch, periodic background
saves and the final save; `saturn report` splits each job's time by phase, planned vs actual,
and gives the run's goodput."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from saturn.planner import plan
from saturn.planner.inputs import BACKGROUND_SAVE_FRACTION, JobSpec, job_phases, job_runtime_s, periodic_checkpoints

ROW = {"job": "a", "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.5,
       "feasible": True, "status": "ok", "launch_s": 4.0, "checkpoint_s": 6.0,
       "checkpoint_stage_s": 0.8, "checkpoint_source": "measured", "startup_s": 10.0}


def test_periodic_checkpoint_count():
    assert periodic_checkpoints(100, 0) == 0
    assert periodic_checkpoints(100, 20) == 4  # at 20, 40, 60, 80; step 100 is the final save
    assert periodic_checkpoints(101, 20) == 5
    assert periodic_checkpoints(10, 20) == 0


def test_phases_and_their_sources():
    ph = job_phases(ROW, 100, checkpoint_every=20)
    assert ph == {"steps": (50.0, "measured"), "launch": (4.0, "measured"),
                  "final_save": (6.0, "measured"), "checkpoints": (pytest.approx(3.2), "measured")}
    assert job_runtime_s(ROW, 100, 20) == pytest.approx(4 + 50 + 4 * 0.8 + 6)
    # stage cost not measured: a labelled estimate from the full save
    est = job_phases({**ROW, "checkpoint_stage_s": None, "checkpoint_source": None}, 100, 20)
    assert est["checkpoints"] == (pytest.approx(4 * BACKGROUND_SAVE_FRACTION * 6.0), "estimated")
    assert est["final_save"] == (6.0, "estimated")


def test_tables_without_the_split_keep_the_old_duration():
    old = {"step_time_s": 0.5, "startup_s": 10.0, "feasible": True}
    assert job_runtime_s(old, 100) == pytest.approx(100 * 0.5 + 10.0)
    assert job_phases(old, 100)["launch"] == (10.0, "startup_s")
    assert job_runtime_s({**ROW}, 100) == pytest.approx(100 * 0.5 + ROW["startup_s"])  # = launch + save


def test_a_plans_durations_include_checkpoint_cost():
    table = pd.DataFrame([ROW, {**ROW, "job": "b", "step_time_s": 0.25}])
    jobs = [JobSpec("a", 100, checkpoint_every=20), JobSpec("b", 200, checkpoint_every=0)]
    p = plan(jobs, {"n": 1}, table, time_limit_s=5)
    by = p.by_job()
    assert by["a"].duration_s == pytest.approx(4 + 50 + 4 * 0.8 + 6)
    assert by["b"].duration_s == pytest.approx(4 + 50 + 6)  # no periodic saves, still the final one
    assert by["a"].phases["checkpoints"] == {"s": pytest.approx(3.2), "source": "measured"}
    assert by["b"].phases["final_save"]["s"] == 6.0
    again = type(p).from_dict(p.to_dict())  # the plan JSON keeps the phases
    assert again.by_job()["a"].phases == by["a"].phases
    assert p.makespan_s == pytest.approx(by["a"].duration_s + by["b"].duration_s)


def test_old_profile_csv_without_phase_columns_loads(tmp_path):
    from saturn.profiler.table import ProfileStore

    (tmp_path / "profiles.csv").write_text(
        "signature,technique,knobs,gpus,gpu_type,gpu_memory_gb,interconnect,torch_version,status,"
        "feasible,step_time_s,peak_mem_gb,startup_s\n"
        's1,ddp,{},1,cpu,0.0,none,2.0,ok,True,0.5,1.0,3.0\n')
    df = ProfileStore(tmp_path).load()
    assert len(df) == 1 and "checkpoint_stage_s" in df.columns
    assert pd.isna(df["checkpoint_stage_s"].iloc[0])


# ---------------------------------------------------------------- report: phases and goodput
def _simulated_run(tmp_path):
    from saturn.executor import Executor, ExecutorConfig, SimulatedBackend

    table = pd.DataFrame([{**ROW, "job": j, "step_time_s": 1.0} for j in ("a", "b")])
    ex = Executor({"a": 60, "b": 30}, {"n": 1}, table,
                  SimulatedBackend(lambda j, t, g, k: 1.0, startup=lambda *a: 5.0),
                  run_dir=tmp_path, config=ExecutorConfig(interval_s=1e9, time_limit_s=0.5,
                                                          poll_s=math.inf, min_gain_frac=0.02))
    ex.run_until_done()
    return ex


def test_report_phases_goodput_and_chart(tmp_path, capsys):
    from rich.console import Console

    from saturn.executor.report import phases_chart, print_phases, summarize

    _simulated_run(tmp_path)
    s = summarize(tmp_path)
    assert s["gpu_allocation"] == s["gpu_utilization"] and 0 < s["gpu_allocation"] <= 1
    rows = {r["job"]: r for r in s["phases"]}
    assert rows["a"]["planned"]["steps"] == pytest.approx(60.0)
    assert rows["a"]["planned"]["save_teardown"] == pytest.approx(6.0)  # the final save
    assert rows["a"]["planned"]["launch"] == pytest.approx(4.0)
    if rows["a"]["actual"] is None:  # the simulator reports no progress: goodput is a lower bound
        assert s["goodput_complete"] is False
    print_phases(Console(width=150), s)
    out = capsys.readouterr().out
    assert "goodput" in out and "device utilization" in out
    assert phases_chart(tmp_path, tmp_path / "p.png").stat().st_size > 1000


def test_actual_phases_of_an_attempt_from_its_progress_reports():
    from saturn.executor.report import segment_phases
    from saturn.executor.state import Segment

    # launched at 100; steps 0..50 at 0.5 s/step; first report at step 2 (t=111), last at step 50
    # (t=135); ended at 142 after the final save and teardown
    seg = Segment(attempt=1, technique="ddp", knobs={}, node="n", gpus=[0], start_step=0,
                  launched_at=100.0, end_step=50, ended_at=142.0, first_progress=(111.0, 2),
                  last_progress=(135.0, 50))
    ph = segment_phases(seg, last_t=142.0)
    assert ph == {"launch": pytest.approx(10.0), "steps": pytest.approx(25.0),
                  "save_teardown": pytest.approx(7.0)}
    assert segment_phases(Segment(1, "ddp", {}, "n", [0], 0, 100.0), 120.0) is None


def test_a_checkpoint_published_late_does_not_move_the_step_clock():
    """Background saves publish a step's checkpoint while training goes on (seen on an H200: step
    150's checkpoint 28 s after the last step). Its event must not count as step progress: the
    step rate and the report's 'training steps' come from the steps' own reports."""
    from saturn.executor.journal import apply_event
    from saturn.executor.report import segment_phases
    from saturn.executor.state import JobInfo, JobState, RunState

    state = RunState(jobs={"a": JobState(JobInfo(name="a", total_steps=150))})
    apply_event(state, 100.0, "launch", {"job": "a", "technique": "ddp", "node": "n", "gpus": [0],
                                         "start_step": 0})
    for step in range(1, 151):  # 0.1 s/step from t=110
        apply_event(state, 110.0 + 0.1 * (step - 1), "progress", {"job": "a", "step": step, "loss": 1.0})
        if step == 130:  # step 100's background save lands late
            apply_event(state, 123.0, "checkpoint", {"job": "a", "step": 100, "loss": 1.0,
                                                     "checkpoint": "c/step-100"})
            apply_event(state, 123.0, "progress", {"job": "a", "step": 100, "loss": 1.0})
    apply_event(state, 152.0, "progress", {"job": "a", "step": 150, "loss": 1.0})  # final save's event
    seg = state.jobs["a"].current
    assert seg.last_progress == (pytest.approx(124.9), 150)
    ph = segment_phases(seg, last_t=153.0)
    assert ph == {"launch": pytest.approx(9.9), "steps": pytest.approx(15.0),
                  "save_teardown": pytest.approx(28.1)}


def test_the_executors_plan_counts_the_backends_periodic_saves(tmp_path):
    from saturn.executor import Executor, ExecutorConfig, SimulatedBackend

    ex = Executor({"a": 100}, {"n": 1}, pd.DataFrame([ROW]),
                  SimulatedBackend(lambda j, t, g, k: 0.5, startup=lambda *a: 4.0, checkpoint_every=20),
                  run_dir=tmp_path, config=ExecutorConfig(interval_s=1e9, time_limit_s=0.5,
                                                          poll_s=math.inf, min_gain_frac=0.02))
    ex.run_until_done()
    a = ex.journal.plans()[0]["plan"]["assignments"][0]
    assert a["end_s"] - a["start_s"] == pytest.approx(4 + 50 + 4 * 0.8 + 6)
    assert a["phases"]["checkpoints"]["source"] == "measured"


def test_profile_row_splits_a_trials_wall_into_phases():
    """wall = S + (warm-up + timed - 1) t + save + D: the measured save is its own column, not
    part of launch_s; teardown is what is left."""
    from saturn.profiler.hardware import Hardware
    from saturn.profiler.session import trial_row
    from saturn.spec.schema import Job

    job = Job(name="j", model="gpt2-tiny", batch_size=4, seq_len=16, steps=10)
    hw = Hardware("H200", 141.0, "nvlink", "2.11", 1)
    out = {"status": "ok", "step_time_s": 0.5, "startup_s": 8.0, "peak_mem_gb": 1.0,
           "checkpoint_s": 3.0, "checkpoint_stage_s": 0.4}
    # S = 8, 2 warm-up + 4 timed steps -> 5 more steps = 2.5 s, save 3 s, teardown 1.5 s
    r = trial_row(job, "sig", "ddp", 1, "{}", hw, out, steps=4, short=False, wall=15.0, warmup_steps=2)
    assert r["checkpoint_s"] == 3.0 and r["checkpoint_source"] == "measured"
    assert r["checkpoint_stage_s"] == 0.4
    assert r["teardown_s"] == pytest.approx(1.5)
    assert r["launch_s"] == pytest.approx(15.0 - 3.0 - 6 * 0.5)  # S - t + D = 7.5 + 1.5
    assert r["startup_s"] == pytest.approx(r["launch_s"] + 3.0)
    est = trial_row(job, "sig", "ddp", 1, "{}", hw, {**out, "checkpoint_s": None}, steps=4,
               short=False, wall=12.0, warmup_steps=2)
    assert est["checkpoint_source"] == "estimated" and est["checkpoint_s"] > 0
