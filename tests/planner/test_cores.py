"""CPU cores as a planned resource (saturn.planner.cores): the planner never co-locates jobs
whose input pipelines need more cores than the node has."""

from __future__ import annotations

import pandas as pd

from saturn.planner import plan
from saturn.planner.cores import CoreTimeline, core_violations, cores_needed
from saturn.planner.greedy import greedy_candidates, makespan
from saturn.planner.inputs import NodeSpec, normalize_jobs
from saturn.planner.lower_bound import lower_bound
from saturn.planner.milp import solve_time_indexed
from saturn.planner.options import build_options
from saturn.planner.plan import Assignment


def _profiles(cores: dict[str, float], step: float = 1.0) -> pd.DataFrame:
    rows = []
    for job, c in cores.items():
        for g, speed in ((1, 1.0), (2, 1.8)):
            rows.append({"job": job, "technique": "ddp", "gpus": g, "step_time_s": step / speed,
                         "feasible": True, "cpu_cores": c * speed})  # more GPUs eat data faster
    return pd.DataFrame(rows)


def _overlap(a: Assignment, b: Assignment) -> bool:
    return a.node == b.node and a.start_s < b.end_s - 1e-9 and b.start_s < a.end_s - 1e-9


def test_cores_needed():
    assert cores_needed(256, 0.1, 400) == 7  # 2560 samples/s / 400 per core
    assert cores_needed(256, 0.1, 0) == 0  # nothing measured: unconstrained


def test_planner_refuses_to_colocate_jobs_whose_cores_exceed_the_node():
    node = [NodeSpec("n0", 4, cpu_cores=16)]
    p = plan({"a": 100, "b": 100}, node, _profiles({"a": 10, "b": 10}), time_limit_s=5)
    a, b = p.by_job()["a"], p.by_job()["b"]
    assert not _overlap(a, b), "10 + 10 cores > 16: the jobs must not run at the same time"
    assert a.cpu_cores == 10 and b.cpu_cores == 10
    assert not core_violations(p.assignments, node, {})
    assert "fixed_split" not in p.baselines  # it co-locates 2 x 18 cores: not shown as a baseline
    assert 0 < p.lower_bound_s <= p.makespan_s + 1e-6
    # same jobs on a node with enough cores: they share it (and finish sooner)
    roomy = [NodeSpec("n0", 4, cpu_cores=32)]
    p2 = plan({"a": 100, "b": 100}, roomy, _profiles({"a": 10, "b": 10}), time_limit_s=5)
    assert _overlap(p2.by_job()["a"], p2.by_job()["b"]) and p2.makespan_s < p.makespan_s
    # without core capacity on the node, cores are not planned (old clusters plan as before)
    p3 = plan({"a": 100, "b": 100}, [NodeSpec("n0", 4)], _profiles({"a": 10, "b": 10}), time_limit_s=5)
    assert p3.makespan_s < p2.makespan_s  # 2+2 GPUs at once: 36 cores, more than the 32 above


def test_light_job_still_shares_the_node():
    node = [NodeSpec("n0", 4, cpu_cores=16)]
    p = plan({"a": 100, "b": 100, "c": 100}, node, _profiles({"a": 10, "b": 10, "c": 3}), time_limit_s=5)
    by = p.by_job()
    assert not _overlap(by["a"], by["b"])
    assert _overlap(by["c"], by["a"]) or _overlap(by["c"], by["b"])
    assert not core_violations(p.assignments, node, {})
    assert p.to_dict()["assignments"][0]["cpu_cores"] > 0


def test_milp_rows_keep_core_capacity():
    node = [NodeSpec("n0", 8, cpu_cores=16)]
    jobs = {f"j{i}": 50 + 10 * i for i in range(5)}
    cores = {f"j{i}": 6 if i % 2 else 9 for i in range(5)}
    options = build_options(normalize_jobs(jobs), node, _profiles(cores))
    seed = min((a for _, a in greedy_candidates(options, node)), key=makespan)
    assert not core_violations(seed, node, {})
    r = solve_time_indexed(options, node, seed, lower_bound(options, node), time_limit_s=5, slots=20)
    assert r.assignments is not None and makespan(r.assignments) <= makespan(seed) + 1e-6
    assert not core_violations(r.assignments, node, {})


def test_running_job_cores_are_reserved():
    node = [NodeSpec("n0", 4, cpu_cores=16)]
    running = Assignment("old", "ddp", {}, "n0", [0], 0.0, 50.0, cpu_cores=12)
    p = plan({"a": 100}, node, _profiles({"a": 8}), time_limit_s=5, fixed=[running])
    assert p.by_job()["a"].start_s >= 50.0 - 1e-6


def test_core_timeline():
    t = CoreTimeline(8)
    t.place(0, 10, 5)
    assert not t.fits(5, 10, 4) and t.fits(10, 5, 8) and t.fits(0, 10, 3)
    assert not CoreTimeline(8).fits(0, 1, 9) and CoreTimeline(None).fits(0, 1, 99)
