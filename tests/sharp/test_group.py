"""SHARP: many spilled models on a pool of workers train exactly as each would alone.

CPU only, tiny models, worker threads over the host ("CPU slots"). The reference for every model
is solo spilling training (`SpillingEngine.train_step` in a loop), which tests/techniques/spilling/test_engine.py
ties to plain single-device training.
"""

from __future__ import annotations

import pytest
import torch

from saturn.sharp import Progress, ShardedLRTF, SharpGroup
from saturn.sharp.jobs import build_member
from saturn.spec.schema import Job
from saturn.techniques.spilling import SpillingEngine, engine_kwargs
from saturn.training import catalog, loop
from saturn.training import checkpoint as ckpt
from saturn.zoo.data import batch_for_step

torch.set_num_threads(1)
STEPS = 4


def _job(name: str, model="gpt2-tiny", seed: int = 0, lr: float = 1e-3, **kw) -> Job:
    mname = model if isinstance(model, str) else model["name"]
    data = "synthetic-images" if mname.startswith("vit") else "synthetic-tokens"
    base = dict(name=name, model=model, data=data, batch_size=4, seq_len=16, steps=STEPS,
                precision="fp32", seed=seed, optimizer={"name": "adamw", "lr": lr,
                                                        "weight_decay": 0.1})
    base.update(kw)
    return Job(**base)


JOBS = [_job("a"), _job("b", {"name": "gpt2-tiny", "overrides": {"dropout": 0.2}}, seed=1),
        _job("c", "vit-tiny", seed=2, lr=3e-3)]
KNOBS = {"shard_layers": 1}


def _solo(job: Job, steps: int = STEPS, ckpt_dir=None):
    engine = SpillingEngine(loop.build_model(job), "cpu", **engine_kwargs(job, KNOBS))
    ds = loop.build_dataset(job, engine.model)
    losses = [engine.train_step(*batch_for_step(ds, s, job.batch_size)) for s in range(steps)]
    path = engine.save_checkpoint(ckpt_dir, steps, {}) if ckpt_dir else None
    return losses, engine, path


def _group(tmp_path, jobs=JOBS, workers=2, **kw):
    members = [build_member(j, KNOBS, "cpu", end_step=STEPS, ckpt_dir=str(tmp_path / j.name))
               for j in jobs]
    group = SharpGroup(members, workers, **kw)
    stats = group.run()
    return group, stats


def test_lrtf_picks_longest_remaining_on_a_hand_made_case():
    s = ShardedLRTF([Progress("a", steps_left=3, tasks_per_step=5, task_time_s=1.0),   # 15 s
                     Progress("b", steps_left=2, tasks_per_step=5, task_time_s=2.0),   # 20 s
                     Progress("c", steps_left=1, tasks_per_step=5, task_time_s=4.0)])  # 20 s
    assert s.pick() == "b"  # longest; the tie with c goes to the model listed first
    s.start("b")
    assert s.pick() == "c"  # b is busy: next longest
    s.start("c")
    assert s.pick() == "a"
    s.start("a")
    assert s.pick() is None  # one task per model at a time
    s.complete("b", seconds=2.0)  # b: 9 tasks x 2 s = 18 s
    s.complete("c", seconds=4.0)  # c: 4 x 4 = 16 s
    s.complete("a", seconds=1.0)  # a: 14 x 1 = 14 s
    assert [s.models[n].remaining_s for n in "bca"] == [18.0, 16.0, 14.0]
    assert s.pick() == "b" and s.pick(exclude=["b"]) == "c"
    # one worker, fixed task times: LRTF evens the remaining times out, then round-robins
    order = []
    while not s.all_finished:
        n = s.pick()
        s.start(n)
        s.complete(n, seconds={"a": 1.0, "b": 2.0, "c": 4.0}[n],
                   step_done=s.models[n].tasks_done_in_step + 1 == 5)
        order.append(n)
    # 18 16 14 -> b; b/c tie at 16 -> b (listed first); 14 16 14 -> c; 14 14 12 -> a; ...
    assert order[:9] == ["b", "b", "c", "a", "b", "a", "a", "b", "c"]
    assert {n: order.count(n) for n in "abc"} == {"a": 14, "b": 9, "c": 4}


def test_sharp_losses_and_checkpoints_equal_solo_spilling(tmp_path):
    group, stats = _group(tmp_path, workers=2)
    for job in JOBS:
        ref, _, path = _solo(job, ckpt_dir=str(tmp_path / "solo" / job.name))
        m = group.members[job.name]
        assert [s for s, _ in m.losses] == list(range(STEPS))
        assert [v for _, v in m.losses] == pytest.approx(ref, rel=1e-6, abs=1e-6)
        # the same checkpoint: load both into plain modules and compare every tensor
        got, want = loop.build_model(job), loop.build_model(job)
        opt_g = loop.build_optimizer(job, got.parameters())
        opt_w = loop.build_optimizer(job, want.parameters())
        assert ckpt.load_checkpoint(m.checkpoints[-1], got, opt_g)["step"] == STEPS
        ckpt.load_checkpoint(path, want, opt_w)
        for (k, a), (_, b) in zip(got.state_dict().items(), want.state_dict().items()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
        assert opt_g.state_dict()["state"][0]["step"] == STEPS
    assert stats.tasks == sum(STEPS * len(m.engine.tasks()) for m in group.members.values())
    assert stats.killed_workers == 0 and 0.0 <= stats.idle_fraction(2) < 1.0
    assert set(stats.order) == {"a", "b", "c"}


@pytest.mark.parametrize("workers,faults", [(1, {0: 6}), (2, {0: 3, 1: 10})])
def test_worker_killed_mid_step_is_recovered_without_lost_steps(tmp_path, workers, faults):
    group, stats = _group(tmp_path, workers=workers, faults=faults)
    assert stats.killed_workers == len(faults) and stats.retried_tasks == len(faults)
    for job in JOBS:
        ref, _, _ = _solo(job)
        m = group.members[job.name]
        assert [s for s, _ in m.losses] == list(range(STEPS))  # no step lost or repeated
        assert [v for _, v in m.losses] == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_member_leaves_the_group_and_continues_under_plain_training(tmp_path):
    group, _ = _group(tmp_path, workers=2, leave_at={"a": 2})
    a = group.members["a"]
    assert a.left_at == 2 and [s for s, _ in a.losses] == [0, 1]
    assert [s for s, _ in group.members["b"].losses] == list(range(STEPS))  # others go on
    # what DDP on one device runs: the plain trainer, resumed from the member's checkpoint
    job = JOBS[0]
    model = loop.build_model(job)
    opt = loop.build_optimizer(job, model.parameters())
    assert ckpt.load_checkpoint(catalog.latest_checkpoint(str(tmp_path / "a")), model, opt)["step"] == 2
    ds = loop.build_dataset(job, model)
    step = loop.standard_step(model, model.loss, opt, job, "cpu")
    rest = [float(step(*batch_for_step(ds, s, job.batch_size))) for s in range(2, STEPS)]
    ref, _, _ = _solo(job)
    assert [v for _, v in a.losses] + rest == pytest.approx(ref, rel=1e-5, abs=1e-5)


@pytest.mark.slow
def test_member_leaves_and_resumes_under_the_ddp_technique(tmp_path):
    from saturn.techniques import get_technique

    group, _ = _group(tmp_path, jobs=JOBS[:2], workers=2, leave_at={"a": 2})
    job = JOBS[0]
    r = get_technique("ddp").run(job, 1, {}, 0, STEPS, str(tmp_path / "a"), device_type="cpu")
    assert r.status == "completed" and [s for s, _ in r.losses] == [2, 3]
    ref, _, _ = _solo(job)
    got = [v for _, v in group.members["a"].losses] + [v for _, v in r.losses]
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_run_group_resumes_and_stops_gracefully(tmp_path):
    import threading

    from saturn.sharp.runner import run_group

    root, metrics = str(tmp_path / "ckpt"), str(tmp_path / "metrics")
    first = run_group(JOBS, checkpoint_root=root, knobs=KNOBS, workers=2,
                      end_steps={j.name: 2 for j in JOBS}, metrics_dir=metrics)
    assert all(r["status"] == "completed" and r["step"] == 2 for r in first.values())
    stop = threading.Event()
    stop.set()  # SIGTERM at once: every member stops at its next step boundary, checkpointed
    mid = run_group(JOBS, checkpoint_root=root, knobs=KNOBS, workers=2, stop=stop,
                    metrics_dir=metrics)
    assert all(r["status"] == "interrupted" for r in mid.values())
    rest = run_group(JOBS, checkpoint_root=root, knobs=KNOBS, workers=2, metrics_dir=metrics)
    for job in JOBS:
        ref, _, _ = _solo(job)
        losses = first[job.name]["losses"] + mid[job.name]["losses"] + rest[job.name]["losses"]
        assert [s for s, _ in losses] == list(range(STEPS))  # nothing lost, nothing repeated
        if job.name != "b":  # b uses dropout: checkpoints hold no RNG state (as for any technique)
            assert [v for _, v in losses] == pytest.approx(ref, rel=1e-6, abs=1e-6)
        lines = (tmp_path / "metrics" / f"{job.name}.jsonl").read_text().splitlines()
        import json

        assert [json.loads(x)["step"] for x in lines] == list(range(1, STEPS + 1))
        assert catalog.read_meta(rest[job.name]["checkpoint"])["technique"] == "sharp"
