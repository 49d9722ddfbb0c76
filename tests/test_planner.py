"""Unit tests of the planner: validator, inputs, errors, baselines, warm start, JSON round trip."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pandas as pd
import pytest

from saturn.errors import InfeasibleError, MissingProfilesError, SaturnError
from saturn.planner import InvalidPlanError, Plan, plan, validate_plan
from saturn.planner.inputs import normalize_cluster, normalize_jobs
from saturn.planner.lower_bound import allotment_bound, simple_bound
from saturn.planner.options import build_options


def table(rows):
    return pd.DataFrame(
        [dict(job=j, technique=t, gpus=g, step_time_s=s, feasible=f, knobs=k) for j, t, g, s, f, k in rows]
    )


PROFILES = table(
    [
        ("a", "ddp", 1, 1.0, True, "{}"),
        ("a", "ddp", 2, 0.6, True, "{}"),
        ("a", "fsdp", 2, 0.9, True, "{}"),
        ("b", "ddp", 1, 2.0, True, "{}"),
        ("b", "ddp", 2, 1.1, True, "{}"),
        ("b", "ddp", 4, 0.7, True, "{}"),
        ("c", "spilling", 1, 4.0, True, "{}"),
        ("c", "fsdp", 2, 1.5, True, '{"ckpt": true}'),
        ("c", "fsdp", 4, 0.9, True, '{"ckpt": true}'),
        ("c", "ddp", 4, float("nan"), False, "{}"),
    ]
)
JOBS = {"a": 100, "b": 100, "c": 100}


def test_plan_valid_and_json_round_trip(tmp_path):
    p = plan(JOBS, {"n0": 4}, PROFILES, time_limit_s=2)
    validate_plan(p, JOBS, {"n0": 4}, PROFILES)
    d = p.to_dict()
    assert set(d) >= {"makespan_s", "lower_bound_s", "solver", "assignments"}
    assert set(d["solver"]) >= {"status", "gap", "time_s"}
    assert {a["job"] for a in d["assignments"]} == set(JOBS)
    for a in d["assignments"]:
        assert set(a) >= {"job", "technique", "knobs", "node", "gpus", "start_s", "end_s"}
    assert d["lower_bound_s"] <= d["makespan_s"] + 1e-9
    back = Plan.from_json(p.to_json(tmp_path / "p.json"))
    assert back.to_dict() == json.loads(json.dumps(d))
    validate_plan(d, JOBS, {"n0": 4}, PROFILES)  # dicts are accepted too


def test_plan_not_worse_than_any_baseline():
    p = plan(JOBS, {"n0": 4}, PROFILES, time_limit_s=2)
    assert p.baselines and all(p.makespan_s <= v + 1e-9 for v in p.baselines.values())
    assert set(p.baselines) >= {"whole_node", "one_gpu", "greedy_min_area"}


def _valid_plan():
    return plan(JOBS, {"n0": 4}, PROFILES, time_limit_s=1)


def test_validator_catches_overlap():
    d = _valid_plan().to_dict()
    a, b = d["assignments"][0], d["assignments"][1]
    b["node"], b["gpus"] = a["node"], list(a["gpus"])[: len(b["gpus"])] + list(b["gpus"])[len(a["gpus"]):]
    dur = b["end_s"] - b["start_s"]
    b["start_s"], b["end_s"] = a["start_s"], a["start_s"] + dur
    if len(b["gpus"]) != len(set(b["gpus"])):
        pytest.skip("constructed plan has duplicated ids")
    with pytest.raises(InvalidPlanError, match="overlaps"):
        validate_plan(d, JOBS, {"n0": 4}, PROFILES)


def test_validator_catches_wrong_duration_node_ids_and_missing_job():
    base = _valid_plan().to_dict()
    d = copy.deepcopy(base)
    d["assignments"][0]["end_s"] += 1.0
    with pytest.raises(InvalidPlanError, match="differs from profiled runtime"):
        validate_plan(d, JOBS, {"n0": 4}, PROFILES)
    d = copy.deepcopy(base)
    d["assignments"][0]["node"] = "nope"
    with pytest.raises(InvalidPlanError, match="unknown node"):
        validate_plan(d, JOBS, {"n0": 4}, PROFILES)
    d = copy.deepcopy(base)
    d["assignments"][0]["gpus"] = [7] * len(d["assignments"][0]["gpus"])
    with pytest.raises(InvalidPlanError, match="bad GPU ids"):
        validate_plan(d, JOBS, {"n0": 4}, PROFILES)
    d = copy.deepcopy(base)
    d["assignments"].pop()
    with pytest.raises(InvalidPlanError, match="assigned 0 times"):
        validate_plan(d, JOBS, {"n0": 4}, PROFILES)
    d = copy.deepcopy(base)
    d["assignments"][0]["technique"] = "zero3"
    with pytest.raises(InvalidPlanError, match="no feasible profile row"):
        validate_plan(d, JOBS, {"n0": 4}, PROFILES)


def test_validator_checks_lower_bound():
    d = _valid_plan().to_dict()
    d["lower_bound_s"] = d["makespan_s"] * 2
    with pytest.raises(InvalidPlanError, match="lower bound"):
        validate_plan(d, JOBS, {"n0": 4}, PROFILES)


def test_job_with_no_feasible_option_is_named():
    prof = pd.concat([PROFILES, table([("d", "ddp", 1, 1.0, False, "{}"), ("d", "fsdp", 2, 1.0, False, "{}")])])
    with pytest.raises(InfeasibleError, match="'d'"):
        plan({**JOBS, "d": 10}, {"n0": 4}, prof, time_limit_s=1)


def test_job_needing_more_gpus_than_any_node_is_named():
    prof = pd.concat([PROFILES, table([("big", "fsdp", 8, 1.0, True, "{}")])])
    with pytest.raises(InfeasibleError, match=r"'big' needs at least 8 GPUs.*largest node has 4"):
        plan({**JOBS, "big": 10}, {"n0": 4, "n1": 2}, prof, time_limit_s=1)


def test_missing_profiles_name_the_job():
    with pytest.raises(MissingProfilesError, match="ghost"):
        plan({**JOBS, "ghost": 10}, {"n0": 4}, PROFILES, time_limit_s=1)


def test_bad_inputs_are_user_errors():
    with pytest.raises(SaturnError, match="lacks column"):
        plan(JOBS, {"n0": 4}, PROFILES.drop(columns=["feasible"]), time_limit_s=1)
    with pytest.raises(SaturnError, match="steps"):
        plan({"a": 0}, {"n0": 4}, PROFILES, time_limit_s=1)
    with pytest.raises(SaturnError, match="at least 1 GPU"):
        plan(JOBS, {"n0": 0}, PROFILES, time_limit_s=1)


def test_heterogeneous_nodes_big_job_goes_to_big_node():
    prof = pd.concat([PROFILES, table([("big", "fsdp", 8, 0.5, True, "{}")])])
    jobs = {**JOBS, "big": 100}
    cluster = {"small": 2, "large": 8}
    p = plan(jobs, cluster, prof, time_limit_s=2)
    validate_plan(p, jobs, cluster, prof)
    assert p.by_job()["big"].node == "large"


def test_gpu_type_rows_only_match_their_nodes():
    prof = table([("a", "ddp", 1, 1.0, True, "{}"), ("a", "ddp", 1, 0.1, True, "{}")])
    prof["gpu_type"] = ["A100", "H200"]
    nodes = [SimpleNamespace(name="x", gpus=1, gpu_type="a100", gpu_memory_gb=80)]
    p = plan({"a": 100}, nodes, prof, time_limit_s=1)
    assert p.makespan_s == pytest.approx(100.0)


def test_job_objects_respect_allowed_techniques_and_gpus():
    jobs = [
        SimpleNamespace(name="a", steps=100, techniques=["fsdp"], gpus=None),
        SimpleNamespace(name="b", steps=100, techniques=None, gpus=[1, 2]),
        SimpleNamespace(name="c", total_steps=100, steps=None, techniques=None, gpus=None),
    ]
    cluster = SimpleNamespace(nodes=[SimpleNamespace(name="n0", gpus=4, gpu_type=None, gpu_memory_gb=None)])
    p = plan(jobs, cluster, PROFILES, time_limit_s=1)
    validate_plan(p, jobs, cluster, PROFILES)
    assert p.by_job()["a"].technique == "fsdp"
    assert len(p.by_job()["b"].gpus) <= 2
    with pytest.raises(InfeasibleError, match="'a'.*allowed techniques"):
        plan([SimpleNamespace(name="a", steps=100, techniques=["zero3"], gpus=None)], cluster, PROFILES, time_limit_s=1)


def test_pruning_keeps_pareto_front():
    jobs, nodes = normalize_jobs(JOBS), normalize_cluster({"n0": 4})
    opts = build_options(jobs, nodes, PROFILES)
    assert [(o.technique, o.gpus) for o in opts["a"].options] == [("ddp", 1), ("ddp", 2)]
    assert [(o.technique, o.gpus) for o in opts["c"].options] == [("spilling", 1), ("fsdp", 2), ("fsdp", 4)]


def test_allotment_bound_is_at_least_simple_bound_and_valid():
    jobs, nodes = normalize_jobs(JOBS), normalize_cluster({"n0": 4})
    opts = build_options(jobs, nodes, PROFILES)
    lb = allotment_bound(opts, nodes)
    assert simple_bound(opts, nodes) <= lb
    assert lb <= plan(JOBS, {"n0": 4}, PROFILES, time_limit_s=2).makespan_s + 1e-9


def test_warm_start_is_honoured_and_tolerates_removed_jobs():
    first = plan(JOBS, {"n0": 4}, PROFILES, time_limit_s=2)
    d = first.to_dict()
    d["assignments"].append({**d["assignments"][0], "job": "gone"})  # a job no longer present
    again = plan(JOBS, {"n0": 4}, PROFILES, time_limit_s=0.2, warm_start=d)
    assert again.makespan_s <= first.makespan_s + 1e-9
    # a worse hand-made warm start never makes the result worse than the greedy plan
    seq = plan(JOBS, {"n0": 4}, PROFILES, time_limit_s=0.2, warm_start=Plan.from_dict(d))
    assert seq.makespan_s <= min(seq.baselines.values()) + 1e-9


def test_warm_start_candidate_keeps_options_and_nodes():
    from saturn.planner.solve import warm_start_assignments

    jobs, nodes = normalize_jobs(JOBS), normalize_cluster({"n0": 4, "n1": 4})
    opts = build_options(jobs, nodes, PROFILES)
    prev = plan(JOBS, {"n0": 4, "n1": 4}, PROFILES, time_limit_s=1)
    replay = warm_start_assignments(opts, nodes, prev)
    before, after = prev.by_job(), {a.job: a for a in replay}
    for j in JOBS:
        assert (after[j].technique, after[j].node, len(after[j].gpus)) == (
            before[j].technique, before[j].node, len(before[j].gpus))


def test_export_model(tmp_path):
    from saturn.planner.milp import export_model

    out = export_model(JOBS, {"n0": 4}, PROFILES, tmp_path / "m.mps")
    assert out.exists() and out.stat().st_size > 100
