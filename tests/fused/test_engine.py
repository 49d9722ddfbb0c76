"""The fused engine trains each member as its solo run would (issue 36): same init, same data,
same optimizer updates, losses equal up to float32 rounding of the batched matmuls (see
`saturn.fused.engine`'s docstring for why not bit-for-bit); bad groupings and models that do not
vmap are refused, with the reason, before anything trains."""

from __future__ import annotations

import pytest
import torch

from saturn.fused.engine import FusedEngine
from saturn.fused.grouping import FusionRefusal, check_group, refusal
from saturn.fused.vmap_check import vmap_refusal
from saturn.spec.schema import Job
from saturn.training import loop as training
from saturn.zoo.data import batch_for_step

STEPS = 6
# |fused - solo| per member loss: ~1 float32 ulp per step (measured <= 1e-6 over these steps); a
# member stepped with another's hyperparameters or data is off by > 1e-3 after one step
LOSS_TOL = 5e-6
# parameters: Adam divides by sqrt(v), so an element whose gradient is ~0 can turn a 1-ulp gradient
# difference into a visible step (measured max 1.2e-4 on vit-tiny, mean <= 4e-8); a step at a
# wrong lr moves elements by >= 1e-3
PARAM_MAX, PARAM_MEAN = 5e-4, 2e-7


def job(name: str, seed: int = 0, model: object = "gpt2-tiny", **kw) -> Job:
    vision = str(model).startswith("vit")
    spec = {"name": name, "model": model if isinstance(model, dict) else {"name": model},
            "data": {"name": "synthetic-images" if vision else "synthetic-tokens"},
            "batch_size": 4, "seq_len": 16, "steps": STEPS, "seed": seed, "precision": "fp32",
            "optimizer": {"name": "adamw", "lr": 1e-3}}
    for k, v in kw.items():
        if k == "optimizer":
            spec["optimizer"] = {**spec["optimizer"], **v}
        else:
            spec[k] = v
    return Job.model_validate(spec)


def solo(j: Job, steps: int = STEPS) -> tuple[list[float], torch.nn.Module]:
    """The reference: the plain single-device step (training.standard_step) on the job's data."""
    torch.manual_seed(1234)
    model = training.build_model(j)
    dataset = training.build_dataset(j, model)
    opt = training.build_optimizer(j, model.parameters())
    step = training.standard_step(model, model.loss, opt, j, "cpu")
    return [float(step(*batch_for_step(dataset, s, j.batch_size))) for s in range(steps)], model


SWEEP = [dict(seed=0), dict(seed=1, optimizer={"lr": 3e-3, "weight_decay": 0.1}),
         dict(seed=0, optimizer={"lr": 2e-3, "betas": [0.8, 0.99], "eps": 1e-6})]


@pytest.mark.parametrize("model", ["gpt2-tiny", "vit-tiny"])
def test_members_match_their_solo_runs(model):
    jobs = [job(f"m{i}", model=model, **kw) for i, kw in enumerate(SWEEP)]
    engine = FusedEngine(jobs)
    fused = [engine.step([s] * len(jobs)).tolist() for s in range(STEPS)]
    for k, j in enumerate(jobs):
        ref, ref_model = solo(j)
        got = [row[k] for row in fused]
        assert max(abs(a - b) for a, b in zip(ref, got)) <= LOSS_TOL, (j.name, ref, got)
        mine = dict(engine.members[k].model.named_parameters())
        diff = torch.cat([(mine[n] - p).abs().flatten() for n, p in ref_model.named_parameters()])
        assert diff.max() <= PARAM_MAX and diff.mean() <= PARAM_MEAN, (j.name, diff.max(), diff.mean())
    # the members really differ (different hyperparameters / seeds give different curves)
    assert fused[-1][0] != fused[-1][1] != fused[-1][2]


def test_member_parameters_alias_the_stack():
    jobs = [job("a"), job("b", seed=1)]
    engine = FusedEngine(jobs)
    engine.step([0, 0])
    p = next(engine.members[1].model.parameters())
    assert p.data_ptr() == engine.params[next(iter(engine.params))][1].data_ptr()


def test_per_member_clipping_touches_only_its_member():
    jobs = [job("a"), job("b", seed=1)]
    free = FusedEngine(jobs)
    clipped = FusedEngine(jobs, max_grad_norm={"b": 1e-3})
    for s in range(3):
        lf, lc = free.step([s, s]).tolist(), clipped.step([s, s]).tolist()
    assert lf[0] == lc[0]  # member a: same losses whether or not b is clipped
    assert abs(lf[1] - lc[1]) > 1e-4


def test_bad_groupings_are_refused_with_the_field():
    base = job("a")
    cases = {"model architecture": job("b", model={"name": "gpt2-tiny", "overrides": {"n_layer": 3}}),
             "batch_size": job("b", batch_size=8), "precision": job("b", precision="bf16"),
             "seq_len": job("b", seq_len=32), "optimizer.name": job("b", optimizer={"name": "sgd"})}
    for field, other in cases.items():
        with pytest.raises(FusionRefusal, match=field):
            check_group([base, other])
    vit = job("v", model="vit-tiny")
    assert "model architecture" in refusal([base, vit])
    assert "dropout" in refusal([job("d", model={"name": "gpt2-tiny", "overrides": {"dropout": 0.1}})])
    assert refusal([base, job("b", seed=3, optimizer={"lr": 0.01, "weight_decay": 0.2})]) == ""
    with pytest.raises(FusionRefusal, match="batch_size"):
        FusedEngine([base, job("b", batch_size=8)])


@pytest.mark.parametrize("factory,why", [("tests.fused.models:batch_norm_net", "BatchNorm1d"),
                                         ("tests.fused.models:branchy_net", "vmap")])
def test_user_models_that_do_not_vmap_are_refused(factory, why):
    j = job("u", model={"factory": factory})
    assert why in vmap_refusal(j)
    with pytest.raises(FusionRefusal, match=why):
        FusedEngine([j, job("w", seed=1, model={"factory": factory})])


@pytest.mark.parametrize("factory", ["tests.fused.models:mlp_net", "tests.fused.models:buffered_net"])
def test_user_model_that_vmaps_matches_solo(factory):
    jobs = [job("u", model={"factory": factory}),
            job("w", seed=1, optimizer={"lr": 3e-3}, model={"factory": factory})]
    assert vmap_refusal(jobs[0]) == ""
    engine = FusedEngine(jobs)
    fused = [engine.step([s, s]).tolist() for s in range(STEPS)]
    for k, j in enumerate(jobs):
        ref, _ = solo(j)
        assert max(abs(a - row[k]) for a, row in zip(ref, fused)) <= LOSS_TOL
    gone = engine.remove("u")  # a leaving member keeps its values (and buffers) in its own storage
    assert all(b.data_ptr() != t.data_ptr() for b, t in zip(gone.model.buffers(), engine.buffers.values()))
