"""Planner objectives for HPO/online use (#16): completion time in the same time-indexed MILP."""

from __future__ import annotations

import pytest

from saturn.errors import SaturnError
from saturn.planner import plan, validate_plan
from saturn.planner.inputs import JobSpec, NodeSpec
from saturn.planner.objectives import Objective, check_objective, completion_lower_bound
from saturn.planner.options import build_options
from saturn.planner.random_instances import random_instance


@pytest.mark.parametrize("n_jobs,nodes,seed", [(8, [8], 1), (16, [8], 2), (16, [8, 8], 3)])
def test_completion_plans_beat_makespan_plans_on_mean_completion(n_jobs, nodes, seed):
    jobs, cluster, prof = random_instance(n_jobs, nodes, seed=seed)
    by_makespan = plan(jobs, cluster, prof, time_limit_s=2)
    by_completion = plan(jobs, cluster, prof, time_limit_s=2, objective="mean_completion")
    validate_plan(by_completion, jobs, cluster, prof)
    assert by_completion.mean_completion_s < by_makespan.mean_completion_s
    # its own bound, its own baselines (incl. shortest-job-first), in the report
    assert by_completion.objective == "mean_completion"
    assert by_completion.objective_value == pytest.approx(by_completion.mean_completion_s)
    assert 0 < by_completion.objective_lower_bound <= by_completion.objective_value + 1e-6
    assert by_completion.objective_value <= min(by_completion.objective_baselines.values()) + 1e-6
    assert "sjf" in by_completion.objective_baselines
    assert by_completion.lower_bound_s <= by_completion.makespan_s + 1e-6
    d = by_completion.to_dict()
    assert d["objective"]["name"] == "mean_completion" and "sjf" in d["objective"]["baselines"]
    assert type(by_completion).from_dict(d).objective_value == pytest.approx(by_completion.objective_value)


def test_makespan_plans_unchanged_in_shape():
    jobs, cluster, prof = random_instance(8, [8], seed=1)
    p = plan(jobs, cluster, prof, time_limit_s=2)
    assert p.objective == "makespan" and p.objective_value is None and "objective" not in p.to_dict()


def _two_job_instance():
    import pandas as pd

    rows = [{"job": j, "technique": "ddp", "gpus": 1, "step_time_s": 1.0, "feasible": True} for j in ("a", "b")]
    return pd.DataFrame(rows)


def test_weighted_completion_runs_the_heavy_job_first():
    prof = _two_job_instance()
    cluster = {"n0": 1}
    jobs = [JobSpec("a", 100.0, weight=20.0), JobSpec("b", 10.0, weight=1.0)]
    p = plan(jobs, cluster, prof, time_limit_s=2, objective="weighted_completion")
    by = p.by_job()
    # Smith's rule (w/p): a 0.2 > b 0.1, so the long heavy job goes first although it is longer
    assert by["a"].end_s < by["b"].end_s
    a_first, b_first = (20 * 100 + 1 * 110) / 21, (20 * 110 + 1 * 10) / 21
    assert p.objective_value == pytest.approx(min(a_first, b_first))
    unweighted = plan([JobSpec("a", 100.0), JobSpec("b", 10.0)], cluster, prof, time_limit_s=2,
                      objective="mean_completion")
    assert unweighted.by_job()["b"].end_s < unweighted.by_job()["a"].end_s  # shortest first


def test_completion_lower_bound_is_valid_and_tight_on_one_gpu():
    prof = _two_job_instance()
    jobs = [JobSpec("a", 100.0), JobSpec("b", 10.0)]
    nodes = [NodeSpec("n0", 1)]
    options = build_options(jobs, nodes, prof)
    # one GPU: Smith's rule is exact, 10 + 110
    assert completion_lower_bound(options, nodes, {"a": 1.0, "b": 1.0}) == pytest.approx(120.0)
    assert Objective("mean_completion").lower_bound(options, nodes) == pytest.approx(60.0)


def test_objective_names_are_checked():
    assert check_objective(None) == "makespan"
    assert check_objective("Mean-Completion") == "mean_completion"
    with pytest.raises(SaturnError, match="objective"):
        check_objective("fastest")
    with pytest.raises(SaturnError, match="weight"):
        plan([JobSpec("a", 10.0, weight=0.0)], {"n0": 1}, _two_job_instance(), objective="weighted_completion")


def test_yaml_objective_and_weight(tmp_path):
    from saturn.spec import load_workload
    from saturn.spec.schema import Workload

    f = tmp_path / "w.yaml"
    f.write_text("objective: weighted_completion\ncluster: {devices: cpu, slots: 2}\n"
                 "jobs:\n  - {name: a, model: gpt2-tiny, batch_size: 2, steps: 5, weight: 4}\n")
    loaded = load_workload(f)
    assert loaded.objective == "weighted_completion" and loaded.jobs[0].weight == 4

    wl = Workload.model_validate({
        "objective": "weighted_completion",
        "jobs": [{"name": "a", "model": {"name": "gpt2-tiny"}, "batch_size": 2, "steps": 5, "weight": 3}],
    })
    assert wl.objective == "weighted_completion" and wl.jobs[0].weight == 3
    with pytest.raises(Exception, match="objective"):
        Workload.model_validate({"objective": "fast", "jobs": [
            {"name": "a", "model": {"name": "gpt2-tiny"}, "batch_size": 2, "steps": 5}]})
