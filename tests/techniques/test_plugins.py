"""Techniques: registration, static checks, and loss curves equal to single-device training.

The parity tests run real 2-process CPU (gloo) training of gpt2-tiny in fp32, so every technique
must follow the single-device (ddp on 1 device) losses within float tolerance.
"""

from __future__ import annotations

import threading

import pytest

from saturn.spec.schema import Job
from saturn.techniques import get_technique, technique_names
from saturn.techniques.pipeline import balanced_split

TOL = 2e-3


def tiny_job(**kw) -> Job:
    base = dict(name="t", model="gpt2-tiny", batch_size=4, seq_len=16, steps=10, precision="fp32",
                optimizer={"name": "adamw", "lr": 1e-3})
    return Job(**{**base, **kw})


def losses(result) -> list[float]:
    assert result.status in ("completed", "interrupted"), result.reason
    return [v for _, v in result.losses]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Single-device losses of the first 4 steps (the curve every technique must follow)."""
    d = tmp_path_factory.mktemp("ref")
    return losses(get_technique("ddp").run(tiny_job(), 1, {}, 0, 4, str(d), device_type="cpu"))


# ------------------------------------------------------------------------- static, fast
def test_registered():
    assert {"ddp", "fsdp", "pipeline", "zero"} <= set(technique_names())


@pytest.mark.parametrize("name", ["ddp", "fsdp", "pipeline", "zero"])
def test_candidates_are_feasible_knob_sets(name):
    t = get_technique(name)
    for gpus in (2, 4):
        if t.feasible(tiny_job(batch_size=8), gpus):
            cands = t.candidates(tiny_job(batch_size=8), gpus)
            assert cands and all(set(c) <= set(t.knobs) for c in cands)


def test_feasibility_reasons():
    assert "divisible" in get_technique("ddp").feasible(tiny_job(batch_size=3), 2).reason
    assert "at least 2" in get_technique("pipeline").feasible(tiny_job(), 1).reason
    assert "layers" in get_technique("pipeline").feasible(tiny_job(), 8).reason  # 4 layers
    assert get_technique("pipeline").feasible(tiny_job(), 2)
    assert get_technique("fsdp").feasible(tiny_job(), 4)


def test_balanced_split_minimizes_heaviest_stage():
    assert balanced_split([1, 1, 1, 1], 2) == [0, 2]
    assert balanced_split([10, 1, 1, 1, 1, 10], 2) == [0, 3]
    w = [5, 1, 1, 1, 1, 1, 4]
    starts = balanced_split(w, 3)
    bounds = list(zip(starts, starts[1:] + [len(w)]))
    assert max(sum(w[a:b]) for a, b in bounds) == 5 and starts[0] == 0


def test_zero_config_accumulates_micro_batches():
    from saturn.techniques.zero import ds_config

    cfg = ds_config(tiny_job(batch_size=8), {"stage": 3, "micro_batch_size": 2}, 2, "cpu")
    assert cfg["gradient_accumulation_steps"] == 2
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["gradient_clipping"] == 0.0


def test_cli_table_lists_all(capsys):
    from saturn.cli.techniques import techniques_command

    techniques_command()
    out = capsys.readouterr().out
    for name in ("ddp", "fsdp", "pipeline", "zero"):
        assert name in out


def test_trial_measures(tmp_path):
    r = get_technique("ddp").trial(tiny_job(), 1, {}, steps=2, device_type="cpu")
    assert r.status == "ok", r.reason
    assert len(r.step_times) == 2 and r.step_time_s > 0 and r.peak_mem_gb > 0 and r.startup_s > 0


def test_infeasible_trial_is_an_outcome():
    r = get_technique("pipeline").trial(tiny_job(), 1, {}, steps=2, device_type="cpu")
    assert r.status == "failed" and "infeasible" in r.reason


# --------------------------------------------------------- 2-process loss-curve parity (slow)
PARITY = [
    ("ddp", {}),
    ("fsdp", {}),
    ("fsdp", {"reshard_after_forward": False, "activation_checkpointing": True}),
    ("pipeline", {"schedule": "1f1b", "n_microbatches": 2}),
    ("pipeline", {"schedule": "gpipe", "n_microbatches": 4, "activation_checkpointing": True}),
    ("zero", {"stage": 2}),
    ("zero", {"stage": 3, "micro_batch_size": 1}),
    ("zero", {"stage": 1, "offload_optimizer": True}),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,knobs", PARITY, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PARITY)])
def test_two_process_loss_curve_matches_single_device(name, knobs, reference, tmp_path):
    res = get_technique(name).run(tiny_job(), 2, knobs, 0, 4, str(tmp_path), device_type="cpu")
    assert losses(res) == pytest.approx(reference, abs=TOL)
    assert res.step == 4 and res.checkpoint.endswith("step-4")


def test_ddp_activation_checkpointing_matches(reference, tmp_path):
    res = get_technique("ddp").run(tiny_job(), 1, {"activation_checkpointing": True}, 0, 4,
                                   str(tmp_path), device_type="cpu")
    assert losses(res) == pytest.approx(reference, abs=TOL)


def test_stop_event_checkpoints_and_resumes(tmp_path):
    """Stopping a run finishes the step, checkpoints, reports 'interrupted'; rerunning resumes."""
    stop = threading.Event()
    timer = threading.Timer(6.0, stop.set)
    timer.start()
    job = tiny_job()
    res = get_technique("ddp").run(job, 1, {}, 0, 100_000, str(tmp_path), device_type="cpu",
                                   stop_event=stop)
    timer.cancel()
    assert res.status == "interrupted" and 0 < res.step < 100_000
    assert res.checkpoint.endswith(f"step-{res.step}")
    again = get_technique("ddp").run(job, 1, {}, 0, res.step + 2, str(tmp_path), device_type="cpu")
    assert again.status == "completed" and [s for s, _ in again.losses] == [res.step, res.step + 1]
