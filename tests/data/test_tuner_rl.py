"""The InTune-style RL tuner (saturn.data.tuner_rl): it moves cores to the slow stage, keeps to the
core budget, has its harmful moves reverted by the guard rail, and never changes the batches.

Policy tests drive the agent with windows from a capacity model of a pipeline (deterministic, no
threads, milliseconds); the batch test runs the real Pipeline with the agent exploring on every
window. CPU only, a few seconds in all."""

from __future__ import annotations

import time

import pytest
import torch

from saturn.data import ImageFiles, PipelineDataset, make_image_files
from saturn.data.dataset import collate_pairs
from saturn.data.pipeline import Pipeline, Stage
from saturn.data.policies import make_tuner
from saturn.data.simpipe import ModelPipe
from saturn.data.tuner import PipelineTuner
from saturn.data.tuner_rl import RLTuner

BATCH = 4
COSTS = {"read": 0.001, "slow": 0.020, "pack": 0.001, "collate": 0.004}  # s per item (collate: per batch)


def model(workers: dict[str, int]) -> ModelPipe:
    return ModelPipe(COSTS, workers, BATCH)


def best_capacity(budget: int) -> float:
    return model({}).best(budget)[0]


def test_rl_agent_moves_cores_to_the_slow_stage():
    pipe = model({"read": 4, "slow": 1, "pack": 3, "collate": 2})
    tuner = RLTuner(pipe, budget=10, batch_size=BATCH, seed=1)
    thr = []
    for _ in range(60):
        tuner.step(pipe.window())
        assert sum(pipe.workers.values()) == 10 and min(pipe.workers.values()) >= 1
        thr.append(pipe.capacity())
    best = best_capacity(10)  # slow 7 of 10 cores: 350 samples/s
    assert thr[0] < 0.3 * best
    late = thr[-15:]
    assert sorted(late)[len(late) // 2] >= 0.9 * best, late  # median of the last windows near the optimum
    assert pipe.workers["slow"] == max(pipe.workers.values()) >= 6, pipe.workers
    moves = [r for r in tuner.history if r["action"] == "move"]
    assert moves and all(r["tuner"] == "rl" for r in tuner.history)
    # it learned that moving a worker onto the bottleneck pays: those moves were kept
    into_slow = [r for r in moves if r["workers"]["slow"] > r["workers_before"]["slow"]]
    assert len(into_slow) >= 5


def test_rl_agent_respects_a_changing_core_budget():
    budget = {"n": 10}
    pipe = model({"read": 1, "slow": 1, "pack": 1, "collate": 1})
    tuner = RLTuner(pipe, budget=lambda: budget["n"], batch_size=BATCH, seed=2)
    for k, n in enumerate([10] * 20 + [5] * 20 + [8] * 20):
        changed = budget["n"] != n
        budget["n"] = n
        tuner.step(pipe.window())
        total = sum(pipe.workers.values())
        assert total == n, (k, pipe.workers)  # followed at once, and moves never change the total
        assert min(pipe.workers.values()) >= 1
        if changed:
            assert tuner.history[-1]["action"] == "budget"
    with pytest.raises(ValueError, match="data.kwargs.tuner"):
        make_tuner("bandit", pipe, budget=4, batch_size=BATCH)
    assert isinstance(make_tuner("hill", pipe, budget=4, batch_size=BATCH), PipelineTuner)


def test_guard_rail_reverts_the_rl_agents_harmful_moves():
    # start at the optimum and make the agent explore on every window: most moves hurt
    pipe = model({"read": 1, "slow": 7, "pack": 1, "collate": 1})
    tuner = RLTuner(pipe, budget=10, batch_size=BATCH, eps0=1.0, eps_decay=1.0, eps_min=1.0, seed=3)
    best = pipe.capacity()
    reverted = 0
    for _ in range(40):
        before = pipe.workers
        cap_before = pipe.capacity()
        tuner.step(pipe.window())
        last = tuner.history[-1] if tuner.history else None
        fresh_move = last is not None and last["action"] == "move" and last["window"] == tuner.windows
        if fresh_move and pipe.capacity() < 0.95 * cap_before:
            tuner.step(pipe.window())  # the next window judges it
            assert tuner.history[-1]["action"] == "revert", tuner.history[-2:]
            assert pipe.workers == before and pipe.capacity() == cap_before
            reverted += 1
    assert reverted >= 5
    # no harmful configuration outlives the window after it: the optimum is back every other window
    assert pipe.capacity() >= 0.95 * best or tuner.pending is not None
    # and the agent learned from the reverts: moving the bottleneck's workers away is valued below
    # doing nothing
    acts = dict((a, tuner.w @ phi) for a, phi in tuner._actions(best, 0.5))
    away = [v for a, v in acts.items() if a[0] == "move" and a[1] == "slow"]
    assert away and max(away) < acts[("noop",)]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return make_image_files(tmp_path_factory.mktemp("imgs"), 24, size=24, num_classes=4, seed=5)


def _run(src, n, tuner_kw=None):
    def idx(b):
        return [b * BATCH + k for k in range(BATCH)]

    pipe = Pipeline(src.stages({}), Stage("collate", collate_pairs(False)), idx, prefetch=2, num_batches=n)
    tuner = None
    if tuner_kw is not None:
        tuner = RLTuner(pipe, **tuner_kw).start()
    out = []
    try:
        for b in pipe:
            out.append(b)
            if tuner is not None:
                time.sleep(0.01)  # let the agent act between batches
    finally:
        if tuner is not None:
            tuner.stop()
        pipe.close()
    return out, tuner


def test_batches_are_identical_whatever_the_rl_agent_does(image_dir):
    src = ImageFiles(image_dir, out_size=16, seed=9)
    ref, _ = _run(src, 30)
    got, tuner = _run(src, 30, dict(budget=8, batch_size=BATCH, window_s=0.03, eps0=1.0, eps_decay=1.0,
                                    eps_min=1.0, min_wait_frac=0.0, seed=4))
    acted = [r for r in tuner.history if r["action"] in ("move", "prefetch", "apportion", "revert")]
    assert len(acted) >= 3, tuner.history  # it really reconfigured the pipeline mid-stream
    assert len(got) == len(ref) == 30
    for (x0, y0), (x1, y1) in zip(ref, got):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_tuner_knob_reaches_the_dataset(image_dir):
    ds = PipelineDataset(ImageFiles(image_dir, out_size=16), tune=True, tuner="rl", cores=6, window_s=0.05)
    try:
        ds.batch_for_step(0, BATCH)
        assert isinstance(ds._tuner, RLTuner)
    finally:
        ds.shutdown()
    with pytest.raises(ValueError, match="data.kwargs.tuner.*allowed"):
        PipelineDataset(ImageFiles(image_dir, out_size=16), tuner="dqn")
