"""Fast model start (issue 14): models are built on the meta device and initialized in place by
one seeded rule (saturn.zoo.init) that gives every technique and GPU count the same weights."""

from __future__ import annotations

import math

import pytest
import torch

from saturn.spec.schema import ModelSpec
from saturn.zoo import build_model
from saturn.zoo.init import _global_indices, init_kind, materialize, param_key, standard_normal


def test_meta_build_allocates_nothing():
    model = build_model(ModelSpec(name="gpt2-xl"), device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_rule_is_deterministic_and_seeded():
    a = build_model(ModelSpec(name="gpt2-tiny"), seed=3)
    b = build_model(ModelSpec(name="gpt2-tiny"), seed=3)
    c = build_model(ModelSpec(name="gpt2-tiny"), seed=4)
    for (k, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y), k
        if k.endswith("weight") and "ln" not in k:
            assert not torch.equal(x, z), k


def test_rule_values_by_parameter_kind():
    m = build_model(ModelSpec(name="gpt2-tiny", overrides={"n_embd": 256, "n_head": 4}), seed=0)
    sd = m.state_dict()
    assert torch.all(sd["layers.1.ln_1.weight"] == 1) and torch.all(sd["layers.1.ln_1.bias"] == 0)
    assert torch.all(sd["layers.1.attn.c_attn.bias"] == 0)
    assert sd["layers.1.attn.c_attn.weight"].std().item() == pytest.approx(0.02, rel=0.03)
    assert sd["layers.1.mlp.c_proj.weight"].std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.03)
    assert abs(sd["layers.0.wte.weight"].mean().item()) < 1e-3
    assert init_kind(m, "layers.1.attn.c_proj.weight")[1] == pytest.approx(0.01)


def test_vit_follows_the_same_rule():
    m = build_model(ModelSpec(name="vit-tiny"), seed=0)
    sd = m.state_dict()
    assert torch.all(sd["layers.0.cls_token"] == 0)
    assert torch.all(sd["layers.1.attn.in_proj_bias"] == 0)
    assert sd["layers.0.pos"].std().item() == pytest.approx(0.02, rel=0.2)


def test_normal_values_are_standard():
    x = standard_normal(param_key(0, "w"), torch.arange(200_000))
    assert abs(x.mean().item()) < 0.01 and x.std().item() == pytest.approx(1.0, abs=0.01)
    assert torch.isfinite(x).all()


def test_a_shard_gets_exactly_its_slice_of_the_full_tensor():
    """What an FSDP rank (or any sharding, any GPU count) computes for its block."""
    key, shape = param_key(1, "layers.1.mlp.c_fc.weight"), (12, 10)
    full = standard_normal(key, torch.arange(120)).view(shape)
    for off, local in [((0, 0), (6, 10)), ((6, 0), (6, 10)), ((3, 4), (5, 3))]:
        idx = _global_indices(shape, local, off, torch.device("cpu"))
        block = standard_normal(key, idx)
        assert torch.equal(block, full[off[0]:off[0] + local[0], off[1]:off[1] + local[1]])


def test_a_pipeline_stage_materializes_only_its_layers_with_the_same_values():
    full = build_model(ModelSpec(name="gpt2-tiny"), seed=0)
    stage = build_model(ModelSpec(name="gpt2-tiny"), device="meta", seed=0)
    stage.layers[0] = torch.nn.Identity()
    materialize(stage, "cpu", seed=0)
    got = stage.state_dict()
    assert not any(k.startswith("layers.0.") for k in got)
    for k, v in got.items():
        assert torch.equal(v, full.state_dict()[k]), k


def test_factory_models_keep_their_own_init(tmp_path, monkeypatch):
    import sys
    import types

    mod = types.ModuleType("fast_start_factory")
    mod.make = lambda: torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    monkeypatch.setitem(sys.modules, "fast_start_factory", mod)
    a = build_model(ModelSpec(factory="fast_start_factory:make"), seed=5)
    b = build_model(ModelSpec(factory="fast_start_factory:make"), seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.slow
@pytest.mark.parametrize("name,gpus", [("fsdp", 2), ("pipeline", 2)])
def test_sharded_and_staged_builds_start_from_the_single_process_weights(name, gpus, tmp_path):
    """2-process FSDP shards and pipeline stages, initialized where they live, hold exactly the
    weights of a plain single-process build (one step at lr 1e-30 leaves them unchanged)."""
    from saturn.spec.schema import Job
    from saturn.techniques import get_technique
    from saturn.training import catalog, loop
    from saturn.training import checkpoint as ckpt

    job = Job(name="t", model="gpt2-tiny", batch_size=4, seq_len=16, steps=1, precision="fp32",
              optimizer={"name": "sgd", "lr": 1e-30})
    res = get_technique(name).run(job, gpus, {}, 0, 1, str(tmp_path), device_type="cpu")
    assert res.status == "completed", res.reason
    want = loop.build_model(job).state_dict()
    got = loop.build_model(job.model_copy(update={"seed": 9}))
    ckpt.load_checkpoint(catalog.latest_checkpoint(str(tmp_path)), got, None)
    for k, v in got.state_dict().items():
        assert torch.allclose(v, want[k], rtol=0, atol=1e-25), k


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=3).flatmap(
    lambda shape: st.tuples(st.just(shape),
                            st.tuples(*[st.integers(0, n - 1) for n in shape]),
                            st.tuples(*[st.integers(1, n) for n in shape]))),
       st.integers(0, 2**31))
def test_any_block_of_any_shape_matches_the_full_tensor(spec, seed):
    """Whatever block a sharding gives a rank, its values are that block of the full tensor."""
    shape, off, size = spec
    size = tuple(min(s, n - o) for s, n, o in zip(size, shape, off))
    key = param_key(seed, "w")
    full = standard_normal(key, torch.arange(math.prod(shape))).view(shape)
    block = standard_normal(key, _global_indices(tuple(shape), size, off, torch.device("cpu")))
    want = full[tuple(slice(o, o + s) for o, s in zip(off, size))]
    assert torch.equal(block, want)
