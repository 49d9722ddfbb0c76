"""`numerics: exact | low-memory` (issue 33): the user's choice of what training computes. Under
exact no option that rounds optimizer state or gradients is proposed, estimated or planned;
under low-memory the planner weighs them; contradictions are spec errors naming the field."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from saturn.errors import SpecError
from saturn.planner import plan
from saturn.planner.inputs import JobSpec, NodeSpec
from saturn.techniques.checks import load_workload
from tests.helpers.cli import saturn_cli

HEAD = "name: t\ndefaults: {seq_len: 16, batch_size: 4, steps: 5}\njobs:\n"


@pytest.mark.parametrize("job,fragments", [
    ("{name: a, model: gpt2-tiny, numerics: approximate}", ["numerics", "exact", "low-memory", "approximate"]),
    ("{name: a, model: gpt2-tiny, knobs: {spilling: {optimizer_state: bf16}}}",
     ["knobs.spilling", "optimizer_state bf16", "numerics: exact", "numerics: low-memory"]),
    ("{name: a, model: gpt2-tiny, numerics: low-memory, precision: fp32}", ["numerics: low-memory", "precision: fp32"]),
    ("{name: a, model: gpt2-tiny, techniques: [ddp], knobs: {ddp: {grad_compression: bf16}}}",
     ["knobs.ddp", "grad_compression bf16", "numerics: exact"]),
])
def test_numerics_checked_naming_the_field(write_yaml, job, fragments):
    with pytest.raises(SpecError) as info:
        load_workload(write_yaml(HEAD + "  - " + job + "\n"))
    for frag in fragments:
        assert frag in str(info.value), f"{frag!r} not in: {info.value}"


def test_bad_numerics_exits_2_before_any_work(write_yaml, capsys):
    code, out, _ = saturn_cli(["validate", str(write_yaml(HEAD + "  - {name: a, model: gpt2-tiny, numerics: fast}\n"))],
                              capsys)
    assert code == 2 and "numerics" in out and "Traceback" not in out


def test_low_memory_allows_the_pinned_knob(write_yaml):
    w = load_workload(write_yaml(HEAD + "  - {name: a, model: gpt2-tiny, numerics: low-memory, "
                                        "knobs: {spilling: {optimizer_state: bf16}}}\n"))
    assert w.jobs[0].numerics == "low-memory"
    assert load_workload(write_yaml(HEAD + "  - {name: a, model: gpt2-tiny}\n")).jobs[0].numerics == "exact"


def test_spilling_candidates_follow_numerics(write_yaml):
    from saturn.techniques.registry import get_technique

    exact = load_workload(write_yaml(HEAD + "  - {name: a, model: gpt2-tiny}\n")).jobs[0]
    low = exact.model_copy(update={"numerics": "low-memory"})
    tech = get_technique("spilling")
    assert not [c for c in tech.candidates(exact, 1) if c.get("optimizer_state") == "bf16"]
    assert [c for c in tech.candidates(low, 1) if c.get("optimizer_state") == "bf16"]


def _rows() -> pd.DataFrame:
    exact = '{"optimizer_state":"fp32"}'
    rounded = '{"optimizer_state":"bf16"}'
    return pd.DataFrame([
        {"job": j, "technique": "spilling", "knobs": k, "gpus": 1, "step_time_s": s, "feasible": True}
        for j in ("e", "l") for k, s in ((exact, 2.0), (rounded, 1.5))])


def test_planner_never_picks_a_rounding_option_under_exact():
    jobs = [JobSpec("e", 10), JobSpec("l", 10, numerics="low-memory")]
    p = plan(jobs, [NodeSpec("n0", 2)], _rows(), time_limit_s=3)
    assert p.by_job()["e"].knobs == {"optimizer_state": "fp32"}
    assert p.by_job()["l"].knobs == {"optimizer_state": "bf16"}  # faster, and allowed


def test_prior_low_memory_fits_a_host_that_exact_does_not(tmp_path, capsys, monkeypatch):
    """gpt-6.7b on one H100 whose host has 80 GB (issue 33's case): fp32 moments do not fit the
    host, bf16 moments do. low-memory plans spilling with bf16 state; exact cannot plan and says
    host memory is why."""
    monkeypatch.setenv("SATURN_PROFILES", str(tmp_path / "store"))

    def workload(numerics: str) -> str:
        y = tmp_path / f"{numerics}.yaml"
        y.write_text("name: g\ncluster:\n  nodes: [{name: n0, gpus: 1, gpu_memory_gb: 80, gpu_type: H100, "
                     "host_memory_gb: 80}]\njobs:\n  - {name: big, model: gpt-6.7b, batch_size: 4, seq_len: 512, "
                     f"steps: 8, techniques: [spilling], numerics: {numerics}}}\n")
        return str(y)

    code, out, _ = saturn_cli(["plan", workload("low-memory"), "--time-limit", "3", "--json", "-"], capsys)
    assert code == 0, out
    (a,) = json.loads(out[out.index("{"):out.rindex("}") + 1])["assignments"]
    assert a["technique"] == "spilling" and a["knobs"]["optimizer_state"] == "bf16" and a["host_mem_gb"] <= 80
    code, out, _ = saturn_cli(["plan", workload("exact"), "--time-limit", "3"], capsys)
    assert code == 2 and "host memory" in out, out
