"""Executor logic on the simulated backend (fast, no processes): plan order, re-planning and
switching, retries, OOM, dynamic jobs, journal replay, status/report, the CLI in --simulate."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from saturn.executor import Executor, ExecutorConfig, SimulatedBackend, candidates, launching, planner_inputs
from saturn.executor.journal import Journal, replay
from saturn.executor.state import JobInfo, JobState, RunState

INF = math.inf


def table(rows):
    return pd.DataFrame([{"job": j, "technique": t, "knobs": "{}", "gpus": g, "step_time_s": s,
                          "startup_s": su, "feasible": True} for j, t, g, s, su in rows])


def cfg(**kw):
    base = dict(interval_s=1e9, time_limit_s=0.5, poll_s=INF, min_gain_frac=0.02)
    base.update(kw)
    return ExecutorConfig(**base)


def sim(true, **kw):
    """Backend whose true step time is true[(job, technique, gpus)]."""
    return SimulatedBackend(lambda j, t, g, k: true[(j, t, g)], **kw)


def tiles(js):
    """Segments cover [0, committed) with no gap and no overlap (no step lost or repeated)."""
    segs = js.segments
    assert segs and segs[0].start_step == 0
    for a, b in zip(segs, segs[1:]):
        assert b.start_step == a.end_step, (a, b)
    return segs[-1].end_step


def test_ready_to_launch_follows_plan_order_on_shared_gpus():
    st = RunState()
    for n in ("a", "b", "c"):
        st.jobs[n] = JobState(JobInfo(n, 10))
    plan = {"assignments": [
        {"job": "a", "technique": "ddp", "knobs": {}, "node": "n", "gpus": [0], "start_s": 0, "end_s": 10},
        {"job": "b", "technique": "ddp", "knobs": {}, "node": "n", "gpus": [0, 1], "start_s": 10, "end_s": 20},
        {"job": "c", "technique": "ddp", "knobs": {}, "node": "n", "gpus": [1], "start_s": 0, "end_s": 30}]}
    assert [a["job"] for a in launching.ready_to_launch(plan, st)] == ["a", "c"]
    st.jobs["a"].status = "completed"
    st.jobs["c"].status = "completed"
    assert [a["job"] for a in launching.ready_to_launch(plan, st)] == ["b"]


def test_choose_plan_margin():
    cur = candidates.Retimed([], 100.0)
    better = candidates.Retimed([], 97.0, switches=["x"])
    assert not candidates.choose_plan(cur, [better], min_gain_frac=0.05).adopt
    assert candidates.choose_plan(cur, [better], min_gain_frac=0.02).adopt
    assert candidates.choose_plan(None, [better]).adopt  # no valid current plan: adopt the best


def test_static_run_matches_plan_when_estimates_are_exact():
    prof = table([("a", "ddp", 1, 1.0, 2.0), ("b", "ddp", 1, 2.0, 2.0), ("c", "ddp", 2, 1.0, 0.0)])
    true = {("a", "ddp", 1): 1.0, ("b", "ddp", 1): 2.0, ("c", "ddp", 2): 1.0}
    be = sim(true, startup=lambda j, t, g: 2.0 if j != "c" else 0.0)
    ex = Executor({"a": 10, "b": 5, "c": 10}, {"n": 2}, prof, be, config=cfg(introspect=False))
    planned = ex.state.plan["makespan_s"]
    res = ex.run_until_done()
    assert all(r.status == "completed" for r in res.values())
    assert ex.makespan_s == pytest.approx(planned, rel=1e-6)
    for js in ex.state.jobs.values():
        assert tiles(js) == js.info.total_steps


def test_replan_switches_a_job_from_its_checkpoint():
    # b is profiled slow (so a runs on 1 GPU beside it) but really finishes early: a then moves to 2 GPUs.
    prof = table([("a", "ddp", 1, 1.0, 5.0), ("a", "fsdp", 2, 0.4, 5.0), ("b", "ddp", 1, 10.0, 5.0)])
    true = {("a", "ddp", 1): 1.0, ("a", "fsdp", 2): 0.4, ("b", "ddp", 1): 1.0}
    be = sim(true, startup=lambda j, t, g: 5.0, checkpoint_s=2.0)
    ex = Executor({"a": 300, "b": 30}, {"n": 2}, prof, be, config=cfg())
    assert {a["job"]: len(a["gpus"]) for a in ex.state.plan["assignments"]} == {"a": 1, "b": 1}
    ex.run_until_done()
    a = ex.state.jobs["a"]
    assert [s.technique for s in a.segments] == ["ddp", "fsdp"]
    assert a.segments[0].status == "interrupted" and ex.state.switches == 1
    assert tiles(a) == 300
    static = Executor({"a": 300, "b": 30}, {"n": 2}, prof, sim(true, startup=lambda j, t, g: 5.0),
                      config=cfg(introspect=False))
    static.run_until_done()
    assert ex.makespan_s < static.makespan_s - 50


def test_no_switch_when_gain_is_below_switching_cost():
    prof = table([("a", "ddp", 1, 1.0, 5.0), ("a", "fsdp", 2, 0.9, 5.0), ("b", "ddp", 1, 10.0, 5.0)])
    true = {("a", "ddp", 1): 1.0, ("a", "fsdp", 2): 0.9, ("b", "ddp", 1): 1.0}
    ex = Executor({"a": 100, "b": 30}, {"n": 2}, prof, sim(true, startup=lambda *a: 5.0, checkpoint_s=2.0),
                  config=cfg())
    ex.run_until_done()
    assert ex.state.switches == 0 and len(ex.state.jobs["a"].segments) == 1


def test_crash_is_retried_from_checkpoint_then_failed_after_bounded_retries():
    prof = table([("a", "ddp", 1, 1.0, 0.0), ("b", "ddp", 1, 1.0, 0.0)])
    true = {("a", "ddp", 1): 1.0, ("b", "ddp", 1): 1.0}
    be = sim(true, crash_at={"a": 25}, checkpoint_every=10)
    ex = Executor({"a": 50, "b": 20}, {"n": 1}, prof, be, config=cfg(max_retries=1))
    ex.run_until_done()
    a = ex.state.jobs["a"]
    assert a.status == "completed" and [s.status for s in a.segments] == ["failed", "completed"]
    assert a.segments[1].start_step == 20 and tiles(a) == 50  # steps 20..24 were lost, not skipped

    class AlwaysCrash(SimulatedBackend):
        def launch(self, job, assignment, start_step, attempt):
            if job.name == "a":
                self.crash_at["a"] = start_step + 1
            return super().launch(job, assignment, start_step, attempt)

    ex = Executor({"a": 50, "b": 20}, {"n": 1}, prof, AlwaysCrash(lambda *k: 1.0), config=cfg(max_retries=2))
    ex.run_until_done()
    assert ex.state.jobs["a"].status == "failed" and len(ex.state.jobs["a"].segments) == 3
    assert "failed 3 times" in ex.state.jobs["a"].reason
    assert ex.state.jobs["b"].status == "completed"


def test_oom_at_run_time_marks_option_infeasible_and_replans():
    prof = table([("a", "fsdp", 2, 0.5, 0.0), ("a", "ddp", 1, 1.0, 0.0)])
    be = sim({("a", "fsdp", 2): 0.5, ("a", "ddp", 1): 1.0}, oom={("a", "fsdp", 2)})
    ex = Executor({"a": 10}, {"n": 2}, prof, be, config=cfg())
    ex.run_until_done()
    a = ex.state.jobs["a"]
    assert [(s.technique, s.status) for s in a.segments] == [("fsdp", "oom"), ("ddp", "completed")]
    assert "fsdp|2" in a.infeasible


def test_submit_and_cancel_while_running():
    prof = table([("a", "ddp", 1, 1.0, 0.0), ("b", "ddp", 1, 1.0, 0.0)])
    be = sim({("a", "ddp", 1): 1.0, ("b", "ddp", 1): 1.0, ("c", "ddp", 1): 1.0})
    ex = Executor({"a": 100, "b": 100}, {"n": 2}, prof, be, config=cfg())
    ex.step()
    be.wait(10)
    ex.step()
    ex.cancel("b")
    ex.submit(JobInfo("c", 20), profiles=table([("c", "ddp", 1, 1.0, 0.0)]))
    res = ex.run_until_done()
    assert res["b"].status == "cancelled" and 8 <= res["b"].steps <= 12
    assert res["c"].status == "completed" and res["a"].status == "completed"
    assert ex.makespan_s == pytest.approx(100, abs=2)  # c ran on b's freed GPU


def test_journal_replay_rebuilds_state(tmp_path):
    prof = table([("a", "ddp", 1, 1.0, 1.0), ("a", "fsdp", 2, 0.4, 1.0), ("b", "ddp", 1, 10.0, 1.0)])
    true = {("a", "ddp", 1): 1.0, ("a", "fsdp", 2): 0.4, ("b", "ddp", 1): 1.0}
    ex = Executor({"a": 200, "b": 30}, {"n": 2}, prof, sim(true, startup=lambda *a: 1.0), run_dir=tmp_path,
                  config=cfg())
    ex.run_until_done()
    again = replay(Journal(tmp_path / "journal.sqlite"))
    for name, js in ex.state.jobs.items():
        r = again.jobs[name]
        assert (r.status, r.committed_step, len(r.segments)) == (js.status, js.committed_step, len(js.segments))
    assert again.plan == json.loads(json.dumps(ex.state.plan))
    assert (tmp_path / "plan.json").exists()

    from saturn.executor.report import gantt, summarize

    s = summarize(tmp_path)
    assert s["done"] and s["switches"] == ex.state.switches and 0 < s["gpu_utilization"] <= 1
    assert gantt(tmp_path, tmp_path / "g.png").stat().st_size > 1000


def test_cli_simulate_status_report(tmp_path, capsys):
    from saturn.cli.run import report_command, run_command, status_command

    w = tmp_path / "w.yaml"
    w.write_text("name: t\ncluster: {devices: cpu, slots: 2}\ndefaults: {seq_len: 8, batch_size: 4, precision: fp32}\n"
                 "jobs:\n  - {name: a, model: gpt2-tiny, steps: 100}\n  - {name: b, model: gpt2-tiny, steps: 50}\n")
    p = tmp_path / "p.csv"
    table([("a", "ddp", 1, 1.0, 2.0), ("a", "ddp", 2, 0.6, 2.0), ("b", "ddp", 1, 1.0, 2.0)]).to_csv(p, index=False)
    rd = tmp_path / "run"
    run_command(workload=w, plan=None, interval=20.0, run_dir=rd, resume=None, simulate=True, profiles=p,
                no_introspect=False, time_limit=0.5, max_retries=2, checkpoint_every=10, noise=0.3, seed=1,
                device_type="cpu", live=False, progress_every=10.0, log_to=None,
                require_measured=False, fuse=False)
    capsys.readouterr()
    status_command(run_dir=rd, json_out=True)
    assert json.loads(capsys.readouterr().out)["done"]
    report_command(run_dir=rd, gantt=None, json_out=tmp_path / "r.json", curves=None)
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["done"] and {j["status"] for j in r["jobs"]} == {"completed"}
    assert (rd / "gantt.png").exists()


def test_shutdown_checkpoints_running_jobs_and_live_view_renders(tmp_path):
    import io

    from rich.console import Console

    from saturn.executor.display import render

    prof = table([("a", "ddp", 1, 1.0, 0.0), ("b", "ddp", 1, 1.0, 0.0)])
    be = sim({("a", "ddp", 1): 1.0, ("b", "ddp", 1): 1.0}, checkpoint_s=1.0)
    ex = Executor({"a": 100, "b": 100}, {"n": 2}, prof, be, run_dir=tmp_path, config=cfg())
    ex.step()
    be.wait(30)
    ex.step()
    buf = io.StringIO()
    Console(file=buf, width=150).print(render(ex))
    assert "a" in buf.getvalue() and "GPUs busy 2/2" in buf.getvalue()
    ex.request_shutdown("SIGTERM")
    ex.run_until_done()
    assert {js.status for js in ex.state.jobs.values()} == {"pending"}
    assert all(js.committed_step == 30 and js.segments[-1].status == "interrupted" for js in ex.state.jobs.values())
    kinds = [k for _, k, _ in Journal(tmp_path / "journal.sqlite").events()]
    assert kinds[-1] == "run_stopped"


def _running_abc(checkpoint_s=2.0):
    """a (ddp x1, 100 steps) on GPU 0 and b (ddp x1, 50 steps) on GPU 1 running for 10 s; c (30 steps)
    planned after b on GPU 1. a also has fsdp x2 (twice as fast)."""
    prof = table([("a", "ddp", 1, 1.0, 0.0), ("a", "fsdp", 2, 0.5, 0.0), ("b", "ddp", 1, 1.0, 0.0),
                  ("c", "ddp", 1, 1.0, 0.0)])
    true = {("a", "ddp", 1): 1.0, ("a", "fsdp", 2): 0.5, ("b", "ddp", 1): 1.0, ("c", "ddp", 1): 1.0}
    given = {"makespan_s": 100.0, "assignments": [
        {"job": "a", "technique": "ddp", "knobs": {}, "node": "n", "gpus": [0], "start_s": 0, "end_s": 100},
        {"job": "b", "technique": "ddp", "knobs": {}, "node": "n", "gpus": [1], "start_s": 0, "end_s": 50},
        {"job": "c", "technique": "ddp", "knobs": {}, "node": "n", "gpus": [1], "start_s": 50, "end_s": 80}]}
    be = sim(true, checkpoint_s=checkpoint_s)
    ex = Executor({"a": 100, "b": 50, "c": 30}, {"n": 2}, prof, be, config=cfg(introspect=False), plan=given)
    ex.step()
    be.wait(10)
    ex.step()
    assert {j.name for j in ex.state.jobs.values() if j.status == "running"} == {"a", "b"}
    return ex, be


def test_retime_pins_running_jobs_and_blocks_moved_jobs_gpus_for_their_checkpoint():
    ex, be = _running_abc()
    now, st, est = be.now(), ex.state, ex.est
    held = {a.job: a for a in planner_inputs.held_gpus(st, est, now)}
    assert set(held) == {"a", "b"}
    assert (held["a"].gpus, held["b"].gpus) == ([0], [1])
    assert held["a"].end_s == pytest.approx(90, abs=1.5) and held["b"].end_s == pytest.approx(40, abs=1.5)

    keep = candidates.retime(st, est, now, {"n": 2}, [candidates.PlannedOption("c", "ddp", {}, 1, "n")], "keep")
    by = {a.job: a for a in keep.assignments}
    assert keep.switches == [] and by["a"].gpus == [0] and by["b"].gpus == [1]
    assert by["c"].start_s == pytest.approx(by["b"].end_s) and by["c"].gpus == [1]
    assert keep.makespan_s == pytest.approx(held["a"].end_s)

    # a moves to fsdp x2: its GPU 0 is held for its checkpoint, then it needs both GPUs (after b)
    moved = candidates.retime(st, est, now, {"n": 2}, [candidates.PlannedOption("a", "fsdp", {}, 2, "n"),
                                                       candidates.PlannedOption("c", "ddp", {}, 1, "n")], "move")
    by = {a.job: a for a in moved.assignments}
    assert moved.switches == ["a"] and set(by) == {"a", "b", "c"}  # no checkpoint pseudo-job in the plan
    ck = est.checkpoint_cost(st.jobs["a"])
    assert by["a"].gpus == [0, 1] and by["a"].start_s >= max(ck, by["b"].end_s) - 1e-9
    assert by["a"].end_s - by["a"].start_s == pytest.approx(st.jobs["a"].live_remaining_steps * 0.5, rel=1e-6)
    # c backfills GPU 0 once a's checkpoint is done, before a restarts on both GPUs
    assert by["c"].gpus == [0] and by["c"].start_s == pytest.approx(ck)
    assert by["c"].end_s <= by["a"].start_s + 1e-9 and moved.makespan_s == pytest.approx(by["a"].end_s)
    # a plan that cannot be placed (3 GPUs on a 2-GPU node) is no candidate
    assert candidates.retime(st, est, now, {"n": 2}, [candidates.PlannedOption("c", "ddp", {}, 3, "n")]) is None


def test_no_move_candidate_is_planned_around_the_running_jobs():
    from saturn.planner import plan, validate_plan

    ex, be = _running_abc()
    now, st, est = be.now(), ex.state, ex.est
    jobs, tab, fixed = planner_inputs.planner_inputs_around_running(st, est, now)
    assert [j.name for j in jobs] == ["c"] and {a.job for a in fixed} == {"a", "b"}
    p = plan(jobs, {"n": 2}, tab, fixed=fixed, time_limit_s=0.5)
    validate_plan(p, jobs, {"n": 2}, tab, fixed=fixed)
    cand = candidates.retimed_from_plan(p, "replan-keep-running")
    by = {a.job: a for a in cand.assignments}
    f = {a.job: a for a in fixed}
    for name in ("a", "b"):  # running jobs kept exactly: option, GPUs, remaining time
        assert (by[name].technique, by[name].gpus, by[name].start_s) == ("ddp", f[name].gpus, 0.0)
        assert by[name].end_s == pytest.approx(f[name].end_s)
    assert by["c"].gpus == [1] and by["c"].start_s == pytest.approx(f["b"].end_s)
    assert cand.switches == [] and cand.makespan_s == pytest.approx(f["a"].end_s)
    # the executor's re-plan has it among its candidates: the best is never worse
    dec = ex.replan("test")
    assert dec is not None and dec.best_s <= cand.makespan_s + 1e-6


def test_stopping_job_holds_its_gpus_for_the_checkpoint_as_a_fixed_pseudo_job():
    from saturn.planner import plan

    ex, be = _running_abc(checkpoint_s=5.0)
    st, est = ex.state, ex.est
    st.jobs["a"].checkpoint_obs.append(4.0)  # measured checkpoint time
    ex.emit("switch", job="a")
    ex.emit("stop_requested", job="a", reason="switch")
    be.stop("a")
    be.wait(1.0)
    now = be.now()
    held = {a.job: a for a in planner_inputs.held_gpus(st, est, now)}
    assert set(held) == {"a@checkpoint", "b"} and planner_inputs.is_checkpoint(held["a@checkpoint"])
    assert held["a@checkpoint"].gpus == [0] and held["a@checkpoint"].end_s == pytest.approx(3.0)
    jobs, tab, fixed = planner_inputs.planner_inputs_around_running(st, est, now)
    assert {j.name for j in jobs} == {"a", "c"}
    p = plan(jobs, {"n": 2}, tab, fixed=fixed, time_limit_s=0.5)
    assert any(a.job == "a@checkpoint" for a in p.assignments)
    cand = candidates.retimed_from_plan(p, "x")
    assert {a.job for a in cand.assignments} == {"a", "b", "c"}
    for a in cand.assignments:
        if a.job != "b" and 0 in a.gpus:
            assert a.start_s >= 3.0 - 1e-9  # GPU 0 is free only once a has checkpointed
    a = next(x for x in cand.assignments if x.job == "a")
    assert a.end_s - a.start_s >= 3.0 + st.jobs["a"].remaining_steps * 0.5 - 1e-6  # checkpoint left + work
