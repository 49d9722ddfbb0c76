"""Typed technique knobs, the registry's name rule, and the one parsing rule for numbers and knobs
text (issue 13: knobs, canonical form, `_num` in one place)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saturn.parse import canonical_knobs, num
from saturn.spec import Job
from saturn.techniques import get_technique, register, technique_names
from saturn.techniques.base import Technique
from saturn.techniques.knobs import knob, knob_dataclass, knob_infos
from saturn.techniques.registry import validate_knobs


def _job(**kw):
    return Job(name="a", model="gpt2-tiny", batch_size=8, seq_len=16, steps=10, precision="fp32", **kw)


def test_every_builtin_declares_typed_knobs_and_its_candidates_pass_them():
    job = _job()
    for name in technique_names():
        t = get_technique(name)
        if not type(t).__module__.startswith("saturn."):
            continue  # a user class registered by its import path (e.g. another test's fake technique)
        infos = knob_infos(t.knob_type)
        assert infos, f"{name} declares no knob dataclass"
        assert set(t.knobs) == {k.name for k in infos}, name  # help and dataclass list the same knobs
        for g in (1, 2, 4):
            for cand in t.candidates(job, g):
                assert set(cand) <= set(t.knobs), (name, cand)
                validate_knobs(name, cand)  # raises if a proposed setting breaks its own declaration


@pytest.mark.parametrize("tech,knobs,expect", [
    ("fsdp", {"cpu_ofload": True}, "knobs.fsdp.cpu_ofload: unknown knob"),
    ("fsdp", {"cpu_offload": "yes"}, "knobs.fsdp.cpu_offload: Input should be a valid boolean"),
    ("zero", {"stage": 4}, "knobs.zero.stage: Input should be less than or equal to 3"),
    ("ddp", {"bucket_cap_mb": 0}, "knobs.ddp.bucket_cap_mb: Input should be greater than 0"),
    ("ddp", {"grad_compression": "int8"}, "knobs.ddp.grad_compression"),
    ("pipeline", {"split": "x"}, "knobs.pipeline.split"),
])
def test_bad_knobs_name_the_field(tech, knobs, expect):
    with pytest.raises(ValueError, match=expect.replace(".", r"\.")):
        validate_knobs(tech, knobs)


def test_good_partial_knobs_pass_as_given():
    assert validate_knobs("pipeline", {"split": [0, 3]}) == {"split": [0, 3]}
    assert validate_knobs("zero", {"stage": 3, "micro_batch_size": None}) == {"stage": 3, "micro_batch_size": None}


def test_yaml_knobs_bad_field_exits_2_with_the_field_named(tmp_path):
    w = tmp_path / "w.yaml"
    w.write_text("name: k\ncluster: {devices: cpu, slots: 2}\n"
                 "defaults: {model: gpt2-tiny, batch_size: 4, seq_len: 16, steps: 10, precision: fp32}\n"
                 "jobs:\n  - {name: a, knobs: {fsdp: {cpu_offload: maybe}}}\n"
                 "  - {name: b, techniques: [ddp], knobs: {zero: {stage: 2}}}\n")
    r = subprocess.run([sys.executable, "-m", "saturn", "validate", str(w)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    err = " ".join(r.stderr.split())
    assert "knobs.fsdp.cpu_offload" in err and "valid boolean" in err
    assert "knobs.zero" in err and "not in this job's techniques" in err
    assert "Traceback" not in r.stderr


def test_pinned_knobs_reach_the_profiler_candidates_and_the_signature():
    from saturn.profiler.cells import cell_for as _cell

    plain, pinned = _job(), _job(knobs={"ddp": {"bucket_cap_mb": 50}})
    assert plain.signature != pinned.signature  # pinned rows never mix with unpinned ones
    assert _job().signature == plain.signature  # and unpinned signatures did not change
    cell = _cell(get_technique("ddp"), "ddp", pinned, pinned.signature, 2)
    assert cell.candidates and all(c["bucket_cap_mb"] == 50 for c in cell.candidates)
    assert len({canonical_knobs(c) for c in cell.candidates}) == len(cell.candidates)  # no duplicates


def test_registry_refuses_a_second_technique_under_a_taken_name():
    class Impostor(Technique):
        name = "ddp"

        def feasible(self, job, gpus):  # pragma: no cover - never registered
            raise AssertionError

        candidates = trial = run = feasible

    with pytest.raises(TypeError, match="'ddp' is taken"):
        register(Impostor)
    assert type(get_technique("ddp")).__name__ == "DDP"
    register(type(get_technique("ddp")))  # the same class again is fine (import path given twice)


def test_knob_dataclass_is_strict_and_one_line_per_knob():
    @knob_dataclass
    class K:
        steps: int = knob(1, "how many", ge=1)
        compile: bool = knob(False, "torch.compile the model")

    assert [(k.name, k.type, k.default, k.limits) for k in knob_infos(K)] == [
        ("steps", "int", 1, ">= 1"), ("compile", "bool", False, "")]
    with pytest.raises(ValueError, match=r"knobs\.t\.compile"):
        validate_knobs("t", {"compile": "true"}, K)
    assert K(steps=2).steps == 2


@given(st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.booleans(), st.none(),
                                                         st.text(max_size=5), st.lists(st.integers(), max_size=3))))
def test_canonical_knobs_is_one_text_for_equal_knobs(d):
    text = canonical_knobs(d)
    assert canonical_knobs(text) == text  # idempotent through its own text form
    assert canonical_knobs(dict(reversed(list(d.items())))) == text  # key order does not matter
    assert json.loads(text) == d


@given(st.one_of(st.none(), st.text(max_size=8), st.floats(allow_nan=True), st.integers(), st.booleans()))
def test_num_never_raises_and_never_returns_nan(v):
    out = num(v, -1.0)
    assert isinstance(out, float) and not math.isnan(out)


def test_one_rule_everywhere():
    from saturn.executor import estimates
    from saturn.planner import inputs, options
    from saturn.profiler import search, table
    from saturn.profiles import store

    assert inputs.canonical_knobs is search.canonical_knobs is estimates.knobs_key is store._canon_knobs \
        is canonical_knobs
    assert options._num is estimates._num is table._num is num
    assert canonical_knobs(None) == canonical_knobs(float("nan")) == canonical_knobs(" ") == "{}"
    assert num("x", 2.0) == 2.0 and num(float("nan"), 3.0) == 3.0 and num("1.5") == 1.5


@given(st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=6), st.none(), st.booleans()))
def test_a_bool_knob_takes_only_bools_and_names_itself_otherwise(v):
    if isinstance(v, bool):
        assert validate_knobs("fsdp", {"cpu_offload": v}) == {"cpu_offload": v}
    else:
        with pytest.raises(ValueError, match=r"knobs\.fsdp\.cpu_offload: "):
            validate_knobs("fsdp", {"cpu_offload": v})
