"""Property tests: on many random instances (single and multi-node, heterogeneous), every plan is
valid, at least the lower bound, and no worse than the best baseline."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saturn.planner import plan, validate_plan
from saturn.planner.baselines import baseline_plans
from saturn.planner.inputs import normalize_cluster, normalize_jobs
from saturn.planner.options import build_options
from saturn.planner.random_instances import random_instance

CLUSTERS = [[8], [4], [8, 8], [4, 8], [2, 2, 4], [8, 8, 8, 8]]


@pytest.mark.parametrize("seed", range(12))
def test_random_instances_plan_is_valid(seed):
    nodes = CLUSTERS[seed % len(CLUSTERS)]
    jobs, cluster, prof = random_instance(4 + 3 * seed, nodes, seed)
    p = plan(jobs, cluster, prof, time_limit_s=0.6)
    validate_plan(p, jobs, cluster, prof)
    assert p.lower_bound_s <= p.makespan_s + 1e-6
    assert p.makespan_s <= min(p.baselines.values()) + 1e-6
    assert p.solver.status in {"optimal", "gap_limit", "slot_optimal", "time_limit", "heuristic"}


@pytest.mark.parametrize("seed", range(6))
def test_baselines_are_valid(seed):
    nodes = CLUSTERS[seed % len(CLUSTERS)]
    jobs, cluster, prof = random_instance(10, nodes, 100 + seed)
    J, N = normalize_jobs(jobs), normalize_cluster(cluster)
    from saturn.planner.plan import Plan

    for assignments in baseline_plans(build_options(J, N, prof), N).values():
        validate_plan(Plan(assignments), jobs, cluster, prof)


@st.composite
def small_instance(draw):
    n_nodes = draw(st.integers(1, 3))
    nodes = {f"n{i}": draw(st.integers(1, 4)) for i in range(n_nodes)}
    max_g = max(nodes.values())
    rows, jobs = [], {}
    for j in range(draw(st.integers(1, 7))):
        name = f"j{j}"
        jobs[name] = draw(st.integers(1, 50))
        for g in draw(st.lists(st.integers(1, max_g), min_size=1, max_size=3, unique=True)):
            rows.append(dict(job=name, technique=draw(st.sampled_from(["ddp", "fsdp"])), gpus=g,
                             step_time_s=draw(st.floats(0.1, 10.0)), feasible=True,
                             startup_s=draw(st.sampled_from([0.0, 1.5]))))
    return jobs, nodes, pd.DataFrame(rows)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_instance())
def test_hypothesis_small_instances(inst):
    jobs, cluster, prof = inst
    p = plan(jobs, cluster, prof, time_limit_s=0.3)
    validate_plan(p, jobs, cluster, prof)
    assert p.makespan_s <= min(p.baselines.values()) + 1e-6
