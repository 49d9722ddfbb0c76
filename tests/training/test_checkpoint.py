"""Technique-neutral checkpoints: atomic layout, and resuming across techniques and process counts
with the same model + optimizer state and data position (the loss curve continues unchanged)."""

from __future__ import annotations

import os

import pytest
import torch

from saturn.spec.schema import Job
from saturn.techniques import get_technique
from saturn.training import catalog, loop
from saturn.training import checkpoint as ckpt

TOL = 2e-3


def tiny_job() -> Job:
    return Job(name="t", model="gpt2-tiny", batch_size=4, seq_len=16, steps=10, precision="fp32",
               optimizer={"name": "adamw", "lr": 1e-3})


def _plain(job):
    """Single process, no process group: what the spilling technique and tools see."""
    model = loop.build_model(job)
    opt = loop.build_optimizer(job, model.parameters())
    return model, opt


def _train_in_process(job, model, opt, steps, start=0):
    from saturn.zoo.data import batch_for_step

    data = loop.build_dataset(job, model)
    step = loop.standard_step(model, model.loss, opt, job, "cpu")
    return [float(step(*batch_for_step(data, s, job.batch_size))) for s in range(start, start + steps)]


# ------------------------------------------------------------------ single process, fast
def test_round_trip_layout_and_pruning(tmp_path):
    job = tiny_job()
    model, opt = _plain(job)
    _train_in_process(job, model, opt, 2)
    for step in (2, 3, 4):
        path = ckpt.save_checkpoint(str(tmp_path), step, model, opt, {"technique": "test"})
    assert path == str(tmp_path / "step-4")
    assert sorted(os.listdir(tmp_path)) == ["latest", "step-3", "step-4"]  # keep=2, no tmp-*
    assert catalog.latest_checkpoint(str(tmp_path)) == path
    fresh, fresh_opt = _plain(job.model_copy(update={"seed": 1}))
    meta = ckpt.load_checkpoint(path, fresh, fresh_opt)
    assert meta["step"] == 4 and meta["technique"] == "test"
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    a, b = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)


def test_latest_survives_crashed_save_and_stale_pointer(tmp_path):
    job = tiny_job()
    model, opt = _plain(job)
    ckpt.save_checkpoint(str(tmp_path), 1, model, opt, {})
    (tmp_path / "tmp-2").mkdir()  # a save that crashed half-way
    assert catalog.latest_checkpoint(str(tmp_path)) == str(tmp_path / "step-1")
    (tmp_path / "latest").write_text("step-9\n")  # pointer to something gone
    assert catalog.latest_checkpoint(str(tmp_path)) == str(tmp_path / "step-1")
    assert catalog.latest_checkpoint(str(tmp_path / "nothing")) is None


def test_canonical_names(tmp_path):
    job = tiny_job()
    model, opt = _plain(job)
    loop.apply_activation_checkpointing(model)  # must not change parameter names
    model_sd, optim_sd = ckpt.canonical_state(model, opt)
    assert "layers.1.attn.c_attn.weight" in model_sd
    assert "layers.1.attn.c_attn.weight" in optim_sd["state"]


# ------------------------------------------------ across techniques and process counts (slow)
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    res = get_technique("ddp").run(tiny_job(), 1, {}, 0, 10, str(d), device_type="cpu")
    return [v for _, v in res.losses]


CHAIN = [("fsdp", 2, {}), ("ddp", 1, {}), ("pipeline", 2, {}), ("zero", 2, {"stage": 3}),
         ("ddp", 2, {}), ("fsdp", 2, {"reshard_after_forward": False}), ("zero", 2, {"stage": 2}),
         ("pipeline", 2, {"schedule": "gpipe"}), ("fsdp", 2, {})]


@pytest.mark.slow
def test_switching_techniques_continues_the_loss_curve(reference, tmp_path):
    """FSDP×2 -> DDP×1 -> pipeline×2 -> ZeRO-3×2 -> DDP×2 -> FSDP×2 -> ZeRO-2×2 -> GPipe×2 -> FSDP×2,
    one step each after the first two, all through one checkpoint directory."""
    got, step = [], 0
    for i, (name, gpus, knobs) in enumerate(CHAIN):
        n = 2 if i == 0 else 1
        res = get_technique(name).run(tiny_job(), gpus, knobs, step, n, str(tmp_path),
                                      device_type="cpu")
        assert res.status == "completed", f"{name}: {res.reason}"
        assert [s for s, _ in res.losses] == list(range(step, step + n))
        got += [v for _, v in res.losses]
        step = res.step
    assert got == pytest.approx(reference, abs=TOL)


@pytest.mark.slow
def test_fsdp_checkpoint_loads_in_a_plain_process(reference, tmp_path):
    """What spilling does: load a 2-process FSDP checkpoint without any process group."""
    res = get_technique("fsdp").run(tiny_job(), 2, {}, 0, 3, str(tmp_path), device_type="cpu")
    assert res.status == "completed", res.reason
    model, opt = _plain(tiny_job())
    meta = ckpt.load_checkpoint(catalog.latest_checkpoint(str(tmp_path)), model, opt)
    assert meta["step"] == 3 and meta["technique"] == "fsdp" and meta["world_size"] == 2
    assert _train_in_process(tiny_job(), model, opt, 2, start=3) == pytest.approx(reference[3:5],
                                                                                 abs=TOL)
