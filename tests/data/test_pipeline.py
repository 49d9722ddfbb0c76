"""Input pipelines (saturn.data): determinism under every configuration, the online tuner, the
core ledger, and the zoo hook. CPU only, a few seconds in all."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from saturn.data import ImageFiles, PipelineDataset, TokenFiles, make_image_files
from saturn.data.dataset import collate_pairs
from saturn.data.ledger import CoreLedger, fair_shares
from saturn.data.pipeline import Pipeline, PipelineStats, Stage, StageStats
from saturn.data.tuner import PipelineTuner, read_log, summarize_log


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return make_image_files(tmp_path_factory.mktemp("imgs"), 40, size=24, num_classes=4, seed=3)


def _batches(source, workers, prefetch, pin, n=6, bs=8, first=0, change=None):
    stages = source.stages(workers)
    coll = Stage("collate", collate_pairs(pin), workers.get("collate", 1))
    def idx(b):
        return [b * bs + k for k in range(bs)]

    out = []
    with Pipeline(stages, coll, idx, prefetch=prefetch, first_batch=first, num_batches=n) as p:
        for i, b in enumerate(p):
            out.append(b)
            if change and i == 1:  # reconfigure mid-stream, as the tuner does
                p.set_workers(change)
                p.set_prefetch(5)
    return out


CONFIGS = [({}, 1, False, None), ({"read": 3, "decode": 2, "augment": 4, "collate": 2}, 4, True, None),
           ({"decode": 5}, 2, False, {"decode": 1, "augment": 6, "collate": 3}),
           ({"read": 1, "tokenize": 4, "pack": 2, "collate": 3}, 3, True, {"tokenize": 1, "read": 4})]


@pytest.mark.parametrize("workers,prefetch,pin,change", CONFIGS)
def test_every_configuration_gives_identical_batches_in_order(image_dir, workers, prefetch, pin, change):
    src = ImageFiles(image_dir, out_size=16, seed=7)
    ref = _batches(src, {}, 1, False, n=7)
    got = _batches(src, workers, prefetch, pin, n=7, change=change)
    assert len(got) == len(ref) == 7
    for (x0, y0), (x1, y1) in zip(ref, got):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    # batch 5 reads the same files as batch 0 (40 files, 8 per batch): the labels repeat, the
    # augmentation (seeded by the global position) does not
    assert torch.equal(ref[0][1], ref[5][1]) and not torch.equal(ref[0][0], ref[5][0])
    # the inline path (Dataset.__getitem__) equals the pipeline's samples
    assert np.array_equal(src.sample(3)[0], ref[0][0][3].numpy())


def test_token_pipeline_identical_across_configurations(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    src = TokenFiles(str(f), seq_len=16, vocab_size=1000)
    a = _batches(src, {}, 1, False, n=5)
    b = _batches(src, {"read": 2, "tokenize": 3, "pack": 2, "collate": 2}, 4, False, n=5,
                 change={"tokenize": 1, "pack": 4})
    for (x0, y0), (x1, y1) in zip(a, b):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    x, y = a[0]
    assert x.shape == (8, 16) and torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < 1000


def test_resume_mid_stream_gives_the_same_batches(image_dir):
    src = ImageFiles(image_dir, out_size=16, seed=1)
    full = _batches(src, {"decode": 2}, 2, False, n=6)
    tail = _batches(src, {"augment": 3}, 3, False, n=3, first=3)
    for (x0, _), (x1, _) in zip(full[3:], tail):
        assert torch.equal(x0, x1)


def test_stage_error_reaches_the_consumer(image_dir):
    def boom(item, i):
        if i == 5:
            raise OSError("disk gone")
        return item
    src = ImageFiles(image_dir, out_size=16)
    stages = src.stages() + [Stage("boom", boom, 2)]
    with Pipeline(stages, Stage("collate", collate_pairs(False)), lambda b: list(range(b * 4, b * 4 + 4)),
                  prefetch=1) as p:
        p.get()
        with pytest.raises(RuntimeError, match="boom"):
            p.get()


class _SlowStages:
    """read: cheap; slow: 20 ms per item (sleep releases the GIL, so threads scale); pack: cheap."""

    def __len__(self):
        return 10_000

    def stages(self, workers=None):
        w = workers or {}
        return [Stage("read", lambda _x, i: i, w.get("read", 1)),
                Stage("slow", lambda x, i: (time.sleep(0.02), x)[1], w.get("slow", 1)),
                Stage("pack", lambda x, i: (np.full(4, x, np.float32), x), w.get("pack", 1))]


def _run_tuner(budget, windows=6, start=None, log=None):
    src = _SlowStages()
    start = start or {"read": 4, "slow": 1, "pack": 3, "collate": 2}
    p = Pipeline(src.stages(start), Stage("collate", collate_pairs(False), start["collate"]),
                 lambda b: list(range(b * 4, b * 4 + 4)), prefetch=2)
    tuner = PipelineTuner(p, budget=budget, batch_size=4, window_s=0.3, log_path=log)
    stop = time.perf_counter() + windows * 0.3
    p.take_stats()
    next_t = time.perf_counter() + 0.3
    while time.perf_counter() < stop:  # drive the windows from the consumer thread (deterministic)
        p.get()
        if time.perf_counter() >= next_t:
            tuner.step(p.take_stats())
            next_t = time.perf_counter() + 0.3
    p.close()
    return tuner, p


def test_tuner_moves_cores_to_the_slowest_stage(tmp_path):
    log = tmp_path / "job" / "data_tuner.jsonl"
    tuner, p = _run_tuner(budget=10, log=str(log))
    w = p.workers
    assert sum(w.values()) == 10
    assert w["slow"] >= 6 and w["slow"] == max(w.values()), w  # started with 1 of 10
    recs = read_log(log)
    assert recs and recs[0]["action"] == "apportion" and recs[0]["workers_before"]["slow"] == 1
    assert summarize_log(log)["workers"]["slow"] == w["slow"]


def test_tuner_follows_a_shrinking_budget_and_reverts_bad_moves():
    budget = {"n": 10}
    src = _SlowStages()
    p = Pipeline(src.stages({"slow": 6}), Stage("collate", collate_pairs(False)),
                 lambda b: list(range(b * 4, b * 4 + 4)))
    tuner = PipelineTuner(p, budget=lambda: budget["n"], batch_size=4)
    st = StageStats

    def win(thr, wait):
        return PipelineStats(wall_s=1.0, batches=int(thr) // 4, samples=int(thr), wait_s=wait, stages={
            "read": st(100, 0.01, 1), "slow": st(100, 2.0, 6), "pack": st(100, 0.01, 1),
            "collate": st(25, 0.01, 1)})

    tuner.step(win(300, 0.5))  # first window: initial split of 10 cores
    assert sum(p.workers.values()) == 10 and p.workers["slow"] == 7
    budget["n"] = 5  # a co-located job started: fewer cores
    tuner.step(win(300, 0.5))
    assert sum(p.workers.values()) == 5 and p.workers["slow"] == 2
    assert tuner.history[-1]["action"] == "budget"
    # a move whose next window is slower is reverted
    tuner.pending = {"action": "test move", "from": "slow", "to": "read", "workers_before": dict(p.workers),
                     "prefetch_before": p.prefetch, "throughput_before": 300.0}
    p.set_workers({"slow": 1, "read": 2})
    tuner.step(win(100, 0.5))
    assert tuner.history[-1]["action"] == "revert" and p.workers["slow"] == 2
    p.close()


def test_fair_shares_and_ledger(tmp_path):
    assert fair_shares(16, {"a": 16, "b": 16}) == {"a": 8, "b": 8}
    assert fair_shares(16, {"a": 2, "b": 16, "c": 16}) == {"a": 2, "b": 7, "c": 7}
    assert fair_shares(15, {"a": 16, "b": 16}) in ({"a": 8, "b": 7}, {"a": 7, "b": 8})
    led = CoreLedger(tmp_path / "node.json", 16)
    assert led.register("a", 16) == 16
    led.register("b", 16)
    assert led.share("a") == 8
    led.unregister("b")
    assert led.share("a") == 16  # a co-located job ended: its cores come back
    led.register("dead", 4, pid=2**22 + 12345)  # no such process: dropped
    assert "dead" not in led.shares()


def test_zoo_hook_serves_pipeline_batches(tmp_path):
    from saturn.spec.schema import DataSpec
    from saturn.zoo.data import batch_for_step, build_dataset, dataset_size

    spec = DataSpec(name="image-files", path=str(tmp_path / "set"),
                    kwargs={"generate": 24, "workers": {"decode": 2}, "prefetch": 3, "tune": True, "cores": 4})
    cfg = SimpleNamespace(image_size=16, channels=3, num_classes=5)
    ds = build_dataset(spec, 0, cfg, seed=2)
    assert isinstance(ds, PipelineDataset) and dataset_size(spec, 0) == 24
    x, y = batch_for_step(ds, 2, 8, rank=1, world=2)
    assert x.shape == (4, 3, 16, 16) and y.shape == (4,)
    ref = torch.stack([ds[2 * 8 + 4 + k][0] for k in range(4)])
    assert torch.equal(x, ref)
    x3, _ = batch_for_step(ds, 3, 8, rank=1, world=2)
    assert torch.equal(x3, torch.stack([ds[3 * 8 + 4 + k][0] for k in range(4)]))  # wraps past 24
    ds.close()


def test_workload_defaults_run_ahead_with_the_cores_from_the_start(tmp_path, monkeypatch):
    """`data: {name: image-files}` with no pipeline kwargs: tuned, prefetch 4, this process's share
    of the host's cores split over the stages at once (not one worker per stage); what the
    workload sets wins."""
    import saturn.data as sd
    from saturn.spec.schema import DataSpec
    from saturn.zoo.data import build_dataset

    monkeypatch.setattr(sd, "host_gpus", lambda: 2)
    monkeypatch.setattr(sd.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert sd.default_cores() == 7  # 16 cores / 2 GPUs, less the training loop
    cfg = SimpleNamespace(image_size=16, channels=3, num_classes=5)
    ds = build_dataset(DataSpec(name="image-files", path=str(tmp_path / "set"), kwargs={"generate": 8}), 0, cfg)
    try:
        assert ds.tune and ds.prefetch == 4 and ds.cores == 7
        assert ds.workers == {"read": 1, "decode": 2, "augment": 2, "collate": 1}  # (7 - read, collate) / 2 heavy
    finally:
        ds.shutdown()
    mine = build_dataset(DataSpec(name="image-files", path=str(tmp_path / "set"),
                                  kwargs={"tune": False, "prefetch": 1, "cores": 3, "workers": {"decode": 2}}), 0, cfg)
    try:
        assert not mine.tune and mine.prefetch == 1 and mine.cores == 3 and mine.workers == {"decode": 2}
    finally:
        mine.shutdown()
