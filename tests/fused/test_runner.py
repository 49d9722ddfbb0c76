"""Each member of a fused group stays a job (issue 36): its own metrics lines and checkpoints; one
member leaving (cancelled, pruned or finished) does not change the others' steps or losses; its
checkpoint, in the technique-neutral format, resumes solo and in another group."""

from __future__ import annotations

import json

import pytest
import torch

from saturn.fused.grouping import FusionRefusal
from saturn.fused.runner import FusedRun
from saturn.training import checkpoint as ckpt
from saturn.training import loop as training
from saturn.zoo.data import batch_for_step
from tests.fused.test_engine import LOSS_TOL, STEPS, job, solo


def _jobs():
    return [job("a"), job("b", seed=1, optimizer={"lr": 3e-3}), job("c", seed=2, optimizer={"lr": 2e-3})]


def _run(tmp_path, jobs, **kw):
    dirs = {j.name: str(tmp_path / j.name / "ckpt") for j in jobs}
    paths = {j.name: str(tmp_path / j.name / "progress.jsonl") for j in jobs}
    for j in jobs:
        (tmp_path / j.name).mkdir(parents=True, exist_ok=True)
    return FusedRun(jobs, ckpt_dirs=dirs, metrics_paths=paths, readback_every=2, **kw)


def test_a_member_leaving_mid_run_leaves_the_others_unchanged(tmp_path):
    full = _run(tmp_path / "full", _jobs()).run()
    run = _run(tmp_path / "cut", _jobs())
    calls = []
    step = run.engine.step

    def step_and_cancel(steps):  # cancel b during its third step (as Orchestrator.cancel would)
        calls.append(list(steps))
        if len(calls) == 3:
            run.leave("b")
        return step(steps)

    run.engine.step = step_and_cancel
    cut = run.run()
    assert cut["b"]["status"] == "interrupted" and cut["b"]["step"] == 3  # leaves after that step
    assert [len(c) for c in calls] == [3] * 3 + [2] * (STEPS - 3)  # the group shrank to 2
    for name in ("a", "c"):
        assert cut[name]["status"] == "completed" and cut[name]["step"] == STEPS
        assert cut[name]["losses"] == full[name]["losses"]  # bit for bit
    meta = ckpt.read_meta(cut["b"]["checkpoint"])
    assert meta["step"] == 3 and meta["job"]["name"] == "b" and meta["technique"] == "fused"
    lines = [json.loads(x) for x in (tmp_path / "cut" / "b" / "progress.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "step_time_s" in x] == [1, 2, 3]
    assert any(x.get("checkpoint") == cut["b"]["checkpoint"] for x in lines)


def test_a_member_that_finishes_early_leaves_the_group(tmp_path):
    res = _run(tmp_path, _jobs(), end_steps={"a": 3}).run()
    assert res["a"] == {**res["a"], "status": "completed", "step": 3}
    assert ckpt.read_meta(res["a"]["checkpoint"])["step"] == 3
    assert res["b"]["step"] == res["c"]["step"] == STEPS


def test_member_checkpoint_resumes_solo_and_in_another_group(tmp_path):
    jobs = _jobs()
    first = _run(tmp_path, jobs, end_steps={"a": 3, "b": 3, "c": 3}).run()
    ref, _ = solo(jobs[0])
    # solo: the plain single-device step from the member's checkpoint (the load every technique uses)
    model = training.build_model(jobs[0])
    opt = training.build_optimizer(jobs[0], model.parameters())
    meta = ckpt.load_checkpoint(first["a"]["checkpoint"], model, opt)
    step = training.standard_step(model, model.loss, opt, jobs[0], "cpu")
    data = training.build_dataset(jobs[0], model)
    resumed = [float(step(*batch_for_step(data, s, 4))) for s in range(int(meta["step"]), STEPS)]
    assert max(abs(a - b) for a, b in zip(resumed, ref[3:])) <= LOSS_TOL
    # another group: a (from its checkpoint, now beside a new job d) continues where it stopped
    other = [jobs[0], job("d", seed=5, optimizer={"lr": 5e-4})]
    again = _run(tmp_path, other).run()
    assert [s for s, _ in again["a"]["losses"]] == list(range(3, STEPS))
    assert max(abs(x[1] - r) for x, r in zip(again["a"]["losses"], ref[3:])) <= LOSS_TOL
    assert again["d"]["losses"][0][0] == 0
    assert torch.isfinite(torch.tensor([x[1] for x in again["d"]["losses"]])).all()


def test_a_waiting_job_refills_a_freed_slot(tmp_path):
    full = _run(tmp_path / "full", _jobs()[:2]).run()
    run = _run(tmp_path / "refill", _jobs()[:2])
    newcomer = job("n", seed=7, optimizer={"lr": 4e-3})
    step = run.engine.step
    calls = []

    def step_and_swap(steps):  # b is pruned during its second step; n waits for its slot
        calls.append(list(run.engine.names))
        if len(calls) == 2:
            run.leave("b")
            run.join(newcomer, ckpt_dir=str(tmp_path / "n" / "ckpt"))
        return step(steps)

    run.engine.step = step_and_swap
    res = run.run()
    assert calls[:3] == [["a", "b"], ["a", "b"], ["a", "n"]]
    assert res["a"]["losses"] == full["a"]["losses"]  # a is unchanged by the swap, bit for bit
    ref, _ = solo(newcomer)
    assert [s for s, _ in res["n"]["losses"]] == list(range(STEPS))
    assert max(abs(x[1] - r) for x, r in zip(res["n"]["losses"], ref)) <= LOSS_TOL
    assert res["n"]["status"] == "completed" and ckpt.read_meta(res["n"]["checkpoint"])["step"] == STEPS
    with pytest.raises(FusionRefusal, match="batch_size"):
        run.join(job("x", batch_size=8))
