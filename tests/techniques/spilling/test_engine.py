"""Spilling technique: the engine follows plain single-device training, checkpoints are neutral.

Everything runs on the CPU with tiny models (the engine's CPU path is the CUDA path without
streams); `gpu`-marked tests repeat the key check on a GPU with real streams and pinned memory.
"""

from __future__ import annotations

import pytest
import torch

from saturn.spec.schema import Job
from saturn.techniques import get_technique
from saturn.techniques.spilling import SpillingEngine, budget_shards, engine_kwargs, packed_shards, uniform_shards
from saturn.training import catalog, loop
from saturn.training import checkpoint as ckpt
from saturn.zoo.data import batch_for_step

torch.set_num_threads(1)


def _job(model: str = "gpt2-tiny", **kw) -> Job:
    name = model if isinstance(model, str) else model["name"]
    data = "synthetic-images" if name.startswith("vit") else "synthetic-tokens"
    base = dict(name="j", model=model, data=data, batch_size=4, seq_len=16, steps=8,
                precision="fp32", optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.1})
    base.update(kw)
    return Job(**base)


def _plain(job: Job, steps: int, model=None, optimizer=None, start: int = 0):
    """The reference: plain single-device training with the shared building blocks."""
    model = model or loop.build_model(job)
    optimizer = optimizer or loop.build_optimizer(job, model.parameters())
    ds = loop.build_dataset(job, model)
    step = loop.standard_step(model, model.loss, optimizer, job, "cpu")
    losses = [float(step(*batch_for_step(ds, s, job.batch_size))) for s in range(start, start + steps)]
    return losses, model, optimizer


def _engine(job: Job, **knobs) -> SpillingEngine:
    kw = engine_kwargs(job, knobs)
    kw["cpu_fused_optimizer"] = knobs.get("cpu_fused_optimizer", True)
    return SpillingEngine(loop.build_model(job), "cpu", **kw)


def _spill(engine: SpillingEngine, job: Job, steps: int, start: int = 0) -> list[float]:
    ds = loop.build_dataset(job, engine.model)
    return [engine.train_step(*batch_for_step(ds, s, job.batch_size))
            for s in range(start, start + steps)]


@pytest.mark.parametrize("model", ["gpt2-tiny", "vit-tiny"])
@pytest.mark.parametrize("knobs", [
    {"shard_layers": 1, "prefetch": 1},
    {"shard_layers": 2, "prefetch": 2},
    {"shard_layers": 3, "prefetch": 0},
    {"shard_layers": 1, "optimizer_on": "gpu"},
    {"shard_layers": 1, "offload_activations": True, "prefetch": 2},
    {"shard_layers": 0, "gpu_budget_gb": 0.0005},  # packed from a (tiny) memory budget
])
def test_follows_single_device_loss_curve(model, knobs):
    job = _job(model)
    ref, ref_model, _ = _plain(job, 5)
    # the loop-based CPU AdamW, as in the reference: fused Adam rounds differently, and Adam turns
    # rounding noise on ~zero gradients (ViT's key bias) into +-lr updates
    eng = _engine(job, cpu_fused_optimizer=False, **knobs)
    got = _spill(eng, job, 5)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-5)
    x0, y0 = batch_for_step(loop.build_dataset(job, ref_model), 0, job.batch_size)
    with torch.no_grad():  # it does learn: the first batch's loss dropped (5 steps of fresh
        assert float(ref_model.loss(ref_model(x0), y0)) < ref[0]  # batches are noise-bound)
    final = eng.model_state_dict()
    for name, t in ref_model.state_dict().items():
        torch.testing.assert_close(final[name], t, rtol=1e-4, atol=1e-5)


def test_dropout_is_replayed_in_recomputation():
    job = _job(model={"name": "gpt2-tiny", "overrides": {"dropout": 0.2}})
    ref, _, _ = _plain(job, 3)  # build_model seeds the RNG: both runs see the same dropout masks
    eng = _engine(job, shard_layers=1)
    assert _spill(eng, job, 3) == pytest.approx(ref, rel=1e-5, abs=1e-5)
    eng = _engine(job, shard_layers=1)
    torch.manual_seed(7)  # other masks: another curve (so the check above is not vacuous)
    assert _spill(eng, job, 3) != pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_shard_partitions():
    assert uniform_shards(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert packed_shards([5, 1, 1, 1, 5], 3) == [(0, 1), (1, 4), (4, 5)]
    assert packed_shards([1, 1, 1], 100) == [(0, 3)]
    # 2 resident shards (prefetch 1) x (params + grads) must fit 65% of the budget
    assert budget_shards([10] * 8, budget_bytes=200, prefetch=1) == [(0, 3), (3, 6), (6, 8)]
    job = _job()
    eng = _engine(job, shard_layers=2)
    assert eng.ranges == [(0, 2), (2, 4)]
    # the master module is the canonical SequentialModel: names are untouched
    assert set(eng.model_state_dict()) == set(loop.build_model(job).state_dict())
    with pytest.raises(ValueError):
        SpillingEngine(loop.build_model(job), "cpu", shards=[(0, 1), (2, 4)])


@pytest.mark.parametrize("optimizer_on", [pytest.param("cpu", id="optimizer-on-cpu"),
                                          pytest.param("gpu", id="optimizer-on-device")])
def test_checkpoint_resume_equals_uninterrupted(tmp_path, optimizer_on):
    job = _job()
    full = _spill(_engine(job, shard_layers=1, optimizer_on=optimizer_on), job, 8)
    first = _engine(job, shard_layers=1, optimizer_on=optimizer_on)
    a = _spill(first, job, 4)
    path = first.save_checkpoint(str(tmp_path), 4, {"technique": "spilling"})
    assert catalog.latest_checkpoint(str(tmp_path)) == path
    second = _engine(job, shard_layers=2, optimizer_on=optimizer_on)  # other shards: still fine
    meta = second.load_checkpoint(path)
    assert meta["step"] == 4
    b = _spill(second, job, 4, start=4)
    assert a + b == pytest.approx(full, rel=1e-6, abs=1e-6)


def test_checkpoint_moves_to_and_from_plain_training(tmp_path):
    job = _job()
    ref, _, _ = _plain(job, 8)
    # spilling -> plain single-device trainer (what DDP with 1 GPU runs)
    eng = _engine(job, shard_layers=1)
    a = _spill(eng, job, 4)
    path = eng.save_checkpoint(str(tmp_path / "s"), 4, {})
    model = loop.build_model(job)
    opt = loop.build_optimizer(job, model.parameters())
    assert ckpt.load_checkpoint(path, model, opt)["step"] == 4
    b, _, _ = _plain(job, 4, model, opt, start=4)
    assert a + b == pytest.approx(ref, rel=1e-5, abs=1e-5)
    # plain -> spilling
    c, model, opt = _plain(job, 4)
    path = ckpt.save_checkpoint(str(tmp_path / "p"), 4, model, opt, {})
    eng = _engine(job, shard_layers=2)
    eng.load_checkpoint(path)
    d = _spill(eng, job, 4, start=4)
    assert c + d == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_technique_interface():
    t = get_technique("spilling")
    job = _job()
    assert t.feasible(job, 1)
    assert not t.feasible(job, 2) and "exactly 1" in t.feasible(job, 2).reason
    assert not t.feasible(_job(precision="fp16"), 1)
    assert t.candidates(job, 2) == []
    cands = t.candidates(job, 1)
    assert cands and cands[0]["prefetch"] == 1
    for c in cands:
        assert set(c) <= set(t.knobs)
        assert all(t.knobs[k] for k in c)


@pytest.mark.slow
def test_trial_and_run_through_the_launcher(tmp_path):
    """One launched trial and a run that resumes (worker processes, CPU slot)."""
    t = get_technique("spilling")
    job = _job()
    res = t.trial(job, 1, {"shard_layers": 2}, steps=2, timeout_s=300, device_type="cpu", warmup=1)
    assert res.status == "ok", res.reason
    assert res.step_time_s > 0 and res.startup_s > 0 and len(res.step_times) == 2
    bad = t.trial(job, 1, {"prefetch": 7}, steps=1, timeout_s=300, device_type="cpu", warmup=0)
    assert bad.status == "failed" and "prefetch" in bad.reason
    d = str(tmp_path / "ckpt")
    r1 = t.run(job, 1, {"shard_layers": 1}, 0, 2, d, device_type="cpu")
    assert r1.status == "completed" and r1.step == 2 and r1.checkpoint
    r2 = t.run(job, 1, {"shard_layers": 2}, 0, 4, d, device_type="cpu")
    assert r2.status == "completed" and r2.step == 4 and [s for s, _ in r2.losses] == [2, 3]
    ref, _, _ = _plain(job, 4)
    assert [v for _, v in r1.losses + r2.losses] == pytest.approx(ref, rel=1e-5, abs=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("knobs", [{"shard_layers": 1, "prefetch": 1},
                                   {"shard_layers": 2, "prefetch": 2},
                                   {"shard_layers": 1, "optimizer_on": "gpu"},
                                   {"shard_layers": 1, "offload_activations": True}])
def test_cuda_streams_follow_single_device(knobs):
    job = _job(model={"name": "gpt2-tiny", "overrides": {"n_layer": 6}}, precision="fp32")
    model = loop.build_model(job).cuda()
    opt = loop.build_optimizer(job, model.parameters())
    ds = loop.build_dataset(job, model)
    step = loop.standard_step(model, model.loss, opt, job, "cuda")
    ref = [float(step(*(t.cuda() for t in batch_for_step(ds, s, 4)))) for s in range(5)]
    eng = SpillingEngine(loop.build_model(job), "cuda", **engine_kwargs(job, knobs))
    got = [eng.train_step(*batch_for_step(ds, s, 4)) for s in range(5)]
    assert got == pytest.approx(ref, rel=1e-3, abs=1e-3)  # TF32/cuBLAS differences only
