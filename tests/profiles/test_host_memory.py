"""Host memory as a planned resource (issue 33): each option's host bytes (measured peak or the
prior's estimate), each node's `host_memory_gb` (declared or probed), shared by the jobs a node
runs at once."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from saturn.planner import plan
from saturn.planner.cores import HOST_MEMORY, core_violations
from saturn.planner.inputs import NodeSpec
from saturn.planner.options import build_options
from saturn.planner.plan import Plan
from saturn.profiles.host_memory import cgroup_limit_bytes, host_bytes, host_oom_row, node_host_memory_gb
from tests.helpers.cli import saturn_cli


def _overlap(a, b) -> bool:
    return a.node == b.node and a.start_s < b.end_s - 1e-9 and b.start_s < a.end_s - 1e-9


def _spilled(jobs: dict[str, float], step: float = 1.0) -> pd.DataFrame:
    """One spilled option per job (1 GPU) with a measured host peak, plus a ddp x2 that needs
    little host memory but is slower per GPU."""
    rows = []
    for job, host in jobs.items():
        rows.append({"job": job, "technique": "spilling", "gpus": 1, "step_time_s": step, "feasible": True,
                     "host_peak_gb": host})
    return pd.DataFrame(rows)


def test_two_spilled_jobs_that_fit_alone_but_not_together_never_run_side_by_side():
    node = [NodeSpec("n0", 2, host_memory_gb=120)]
    p = plan({"a": 100, "b": 100}, node, _spilled({"a": 70, "b": 70}), time_limit_s=5)
    a, b = p.by_job()["a"], p.by_job()["b"]
    assert not _overlap(a, b), "70 + 70 GB > 120 GB: the spilled jobs must not share the node"
    assert a.host_mem_gb == 70 and b.host_mem_gb == 70
    assert not core_violations(p.assignments, node, {}, resource=HOST_MEMORY)
    # a node with room for both runs them side by side
    p2 = plan({"a": 100, "b": 100}, [NodeSpec("n0", 2, host_memory_gb=160)], _spilled({"a": 70, "b": 70}),
              time_limit_s=5)
    assert _overlap(p2.by_job()["a"], p2.by_job()["b"]) and p2.makespan_s < p.makespan_s
    # a small job still shares the node with a spilled one
    p3 = plan({"a": 100, "b": 100}, node, _spilled({"a": 70, "b": 20}), time_limit_s=5)
    assert _overlap(p3.by_job()["a"], p3.by_job()["b"])


def test_running_job_holds_its_host_memory_at_a_replan():
    node = [NodeSpec("n0", 2, host_memory_gb=120)]
    running = {"job": "a", "technique": "spilling", "knobs": {}, "node": "n0", "gpus": [0], "start_s": 0.0,
               "end_s": 50.0, "host_mem_gb": 70.0}
    p = plan({"a": 100, "b": 100}, node, _spilled({"a": 70, "b": 70}), time_limit_s=5, fixed=[running])
    assert p.by_job()["b"].start_s >= 50.0 - 1e-6


def test_option_over_the_node_host_memory_is_ruled_out_with_that_reason():
    rows = pd.concat([_spilled({"a": 90}),
                      pd.DataFrame([{"job": "a", "technique": "ddp", "gpus": 2, "step_time_s": 0.8,
                                     "feasible": True, "host_peak_gb": 10}])])
    node = [NodeSpec("n0", 2, host_memory_gb=64)]
    p = plan({"a": 100}, node, rows, time_limit_s=5)
    assert p.by_job()["a"].technique == "ddp"
    assert "host memory" in " ".join(p.ruled_out["a"]) and "spilling" in " ".join(p.ruled_out["a"])
    assert Plan.from_dict(p.to_dict()).ruled_out == p.ruled_out
    # only the spilled option: the job cannot be planned, and the error says why
    from saturn.errors import InfeasibleError
    from saturn.planner.inputs import normalize_jobs
    with pytest.raises(InfeasibleError, match="host memory"):
        build_options(normalize_jobs({"a": 100}), node, _spilled({"a": 90}))


def test_measured_host_oom_row_is_infeasible_naming_host_memory():
    key = {"job": "a", "technique": "spilling", "gpus": 1, "knobs": "{}"}
    row = host_oom_row(key, 125.3, 123.6)
    assert row["feasible"] is False and row["host_peak_gb"] == 125.3
    assert row["reason"] == "host out of memory: killed at 125.3 GB resident, the node has 123.6 GB"
    from saturn.errors import InfeasibleError
    from saturn.planner.inputs import normalize_jobs

    with pytest.raises(InfeasibleError,
                       match="host out of memory \\(measured: killed at 125.3 GB resident, the node has 123.6 GB\\)"):
        build_options(normalize_jobs({"a": 10}), [NodeSpec("n0", 1)], pd.DataFrame([row]))
    from saturn.profiles.store import failure_applies

    assert failure_applies(row, "any inputs")  # a memory outcome: not retried unchanged


def test_prior_host_estimate_per_technique_and_knob():
    from saturn.prior.shapes import shape_of

    s = shape_of("gpt-6.7b", None, 4, 512, "bf16")
    fp32 = host_bytes(s, "spilling", {}, 1)
    bf16 = host_bytes(s, "spilling", {"optimizer_state": "bf16"}, 1)
    assert bf16.gb < fp32.gb and fp32.gb > 12 * s.params / 1e9  # masters + fp32 moments at least
    offload = host_bytes(s, "zero", {"stage": 3, "offload_optimizer": True, "offload_param": True}, 1)
    assert offload.parts["offloaded_states"] == 16 * s.params
    assert host_bytes(s, "ddp", {}, 2).parts["processes"] == 2 * host_bytes(s, "ddp", {}, 1).parts["processes"]


def test_node_probe_respects_a_cgroup_limit(tmp_path):
    f = tmp_path / "memory.max"
    f.write_text("max\n")
    assert cgroup_limit_bytes([str(f)]) is None
    f.write_text(str(8 * 10**9) + "\n")
    assert cgroup_limit_bytes([str(f)]) == 8 * 10**9
    assert node_host_memory_gb([str(f)]) == 8.0  # the limit, below this machine's memory
    assert node_host_memory_gb([str(tmp_path / "none")]) > 0


def _workload(tmp_path, host_gb: float, jobs: str = "") -> str:
    y = tmp_path / "w.yaml"
    y.write_text(f"""name: giants
cluster:
  nodes: [{{name: n0, gpus: 1, gpu_memory_gb: 80, gpu_type: H100, host_memory_gb: {host_gb}}}]
jobs:
  - {{name: big, model: gpt-6.7b, batch_size: 4, seq_len: 512, steps: 8, techniques: [spilling, zero]}}
{jobs}""")
    return str(y)


def test_saturn_plan_names_host_memory_in_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SATURN_PROFILES", str(tmp_path / "store"))
    # too little host memory for every option: exit 2, the reason names host memory
    code, out, _ = saturn_cli(["plan", _workload(tmp_path, 64), "--time-limit", "3"], capsys)
    assert code == 2, out
    assert "host memory" in out and "host_memory_gb" in out
    # room for spilling but not for ZeRO-3 offload: spilling is planned, zero is ruled out
    code, out, _ = saturn_cli(["plan", _workload(tmp_path, 150), "--time-limit", "3"], capsys)
    assert code == 0, out
    assert "host GB" in out and "ruled out" in out and "host memory" in out
    code, out, _ = saturn_cli(["plan", _workload(tmp_path, 150), "--time-limit", "3", "--json", "-"], capsys)
    d = json.loads(out[out.index("{"):out.rindex("}") + 1])
    (a,) = d["assignments"]
    assert a["technique"] == "spilling" and 0 < a["host_mem_gb"] <= 150
    assert any("zero" in w and "host memory" in w for w in d["ruled_out"]["big"])
