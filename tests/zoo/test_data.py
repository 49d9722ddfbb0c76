"""The zoo's synthetic data is made where it is cheap (issue 25): whole batches by a few kernels on
the training device, ahead of the step, never per sample on the host on the step's path; and a
sample stays a pure function of (seed, position): the same batch at any rank count, after a
resume, and on any device."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saturn.spec.schema import Job
from saturn.training import loop
from saturn.zoo import data as zd
from saturn.zoo.data import SyntheticImages, SyntheticTokens, batch_for_step, made_on_device


@dataclass
class Ctx:
    rank: int = 0
    world_size: int = 1
    device_type: str = "cpu"
    launch_time: float = 0.0

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def stop_requested(self) -> bool:
        return False


def _trainable(dataset, seen: list, *, rank: int = 0, world: int = 1, step_s: float = 0.0):
    def step(x, y):
        if step_s:
            time.sleep(step_s)
        seen.append((x.clone(), y.clone()))
        return x.float().mean()

    return loop.Trainable(step_fn=step, save=lambda d, s, m: f"{d}/{s}", load=lambda p: {},
                              device=torch.device("cpu"), dp_rank=rank, dp_world=world, dataset=dataset)


def _job(batch: int = 4) -> Job:
    return Job(name="j", model="vit-tiny", batch_size=batch, seq_len=1, steps=1, data="synthetic-images")


def _run(dataset, *, start: int = 0, steps: int = 6, **kw) -> tuple[list, dict]:
    seen: list = []
    res = loop.train(_job(), _trainable(dataset, seen, **kw), Ctx(), mode="run", start_step=start,
                         num_steps=steps, readback_every=3)
    return seen, res


def test_training_makes_synthetic_batches_ahead_on_its_device_not_per_sample(monkeypatch):
    """Fails when a synthetic batch is built on the critical path: per sample on the host
    (`__getitem__`, the pre-issue-25 path: 0.16 s per ViT-base batch, 3x the GPU step), in the
    training loop's own thread, or on another device than the training device."""
    ds = SyntheticImages(8, 3, 4, seed=1)
    calls: list[tuple[str, torch.device, int]] = []
    real = SyntheticImages.samples

    def spy(self, index):
        calls.append((threading.current_thread().name, index.device, len(index)))
        return real(self, index)

    def per_sample(self, i):
        raise AssertionError("a synthetic batch was built sample by sample on the host")

    monkeypatch.setattr(SyntheticImages, "samples", spy)
    monkeypatch.setattr(SyntheticImages, "__getitem__", per_sample)
    seen, res = _run(ds)
    assert res["status"] == "completed" and len(seen) == 6
    assert len(calls) == 6  # one call per batch, never one per sample
    assert all(name.startswith("saturn-batches") for name, _, _ in calls)  # ahead, not in the loop
    assert all(dev == torch.device("cpu") and n == 4 for _, dev, n in calls)  # the training device


def test_slow_synthetic_generation_is_hidden_behind_the_step(monkeypatch):
    """A batch that takes 60% of a step to make costs the step no data wait: it is made ahead."""
    ds = SyntheticTokens(64, 8)
    real = SyntheticTokens.samples

    def slow(self, index):
        time.sleep(0.03)
        return real(self, index)

    monkeypatch.setattr(SyntheticTokens, "samples", slow)
    seen = []
    res = loop.train(_job(), _trainable(ds, seen, step_s=0.05), Ctx(), mode="trial", num_steps=8,
                         warmup=2)
    assert res["data_wait_s"] < 0.01, res["data_wait_s"]


def test_same_batches_after_a_resume_and_at_any_rank_count():
    ds = SyntheticImages(8, 3, 4, seed=3)
    full, _ = _run(ds, steps=6)
    resumed, _ = _run(ds, start=3, steps=3)
    for (x, y), (rx, ry) in zip(full[3:], resumed):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    halves = [_run(ds, steps=6, rank=r, world=2)[0] for r in range(2)]
    for s in range(6):
        assert torch.equal(torch.cat([halves[0][s][0], halves[1][s][0]]), full[s][0])
        assert torch.equal(torch.cat([halves[0][s][1], halves[1][s][1]]), full[s][1])


@pytest.mark.parametrize("ds", [SyntheticTokens(97, 12, size=10, seed=5), SyntheticImages(9, 2, 3, size=10, seed=5)],
                         ids=["tokens", "images"])
def test_a_batch_is_its_samples_whatever_the_batch(ds):
    """Vectorized batches equal the samples one by one (wrapping at the dataset size); different
    positions and seeds give different samples."""
    assert made_on_device(ds)
    x, y = batch_for_step(ds, 2, 6)  # positions 12..17 -> 2..7
    for k in range(6):
        sx, sy = ds[2 + k]
        assert torch.equal(x[k], sx) and torch.equal(y[k], sy)
    assert not torch.equal(x[0], x[1])
    other = type(ds)(*(ds.vocab, ds.seq_len) if isinstance(ds, SyntheticTokens) else
                     (ds.shape[1], ds.shape[0], ds.num_classes), size=10, seed=6)
    assert not torch.equal(other[2][0], x[0])


def test_only_declared_datasets_are_made_on_the_device():
    """A user dataset with a `samples` of its own (torchvision's ImageFolder has a list; this one a
    method meaning something else) stays on the host path, sample by sample."""
    class Folder(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.full((2,), float(i)), torch.tensor(i)

        def samples(self):
            return [("a.jpg", 0)]

    assert not made_on_device(Folder()) and not made_on_device(object())
    x, y = batch_for_step(Folder(), 1, 2, device="meta")  # `device` is for device-made data only
    assert x.device.type == "cpu" and y.tolist() == [2, 3]


def test_synthetic_data_keeps_its_shape_and_statistics():
    tok = SyntheticTokens(50, 16, seed=0)
    x, y = batch_for_step(tok, 0, 64)
    assert x.dtype == torch.long and x.shape == (64, 16) and int(x.min()) >= 0 and int(x.max()) < 50
    assert torch.equal(x[:, 1:], y[:, :-1])
    noisy = (y - x) % 50  # progression steps are 1..7; noise breaks them for ~10% of positions
    assert 0.05 < float(((noisy < 1) | (noisy > 7)).float().mean()) < 0.2
    img = SyntheticImages(32, 3, 10, seed=0)
    xi, yi = batch_for_step(img, 0, 256)
    assert xi.dtype == torch.float32 and xi.shape == (256, 3, 32, 32) and yi.dtype == torch.long
    assert len(set(yi.tolist())) == 10 and abs(float(xi.mean())) < 0.1
    same = [xi[yi == c] for c in range(2)]  # one class's images share a prototype: noise std 0.5
    assert abs(float((same[0][0] - same[0][1]).std()) - 0.5 * 2**0.5) < 0.05
    assert float((same[0][0] - same[1][0]).std()) > 1.0


def test_synthetic_images_are_learnable():
    """A linear classifier learns the classes (prototypes stand out of the noise)."""
    torch.manual_seed(0)
    ds = SyntheticImages(8, 3, 4, seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for s in range(40):
        x, y = batch_for_step(ds, s, 32)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert statistics.mean(losses[-5:]) < 0.3 * losses[0]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_integer_hash_arithmetic_is_exact(x, c):
    """The 32-bit multiply never overflows int64 (so it is the same on every device), and the
    in-place hash is the scalar one."""
    assert int(zd._mul32(torch.tensor([x]), c)[0]) == (x * c) % 2**32
    assert int(zd._mix32_(torch.tensor([x]))[0]) == zd._mix32(x)


@pytest.mark.gpu
def test_synthetic_batches_made_on_the_gpu_equal_the_cpu_ones():
    """Counter-based randomness: bitwise the same data on the GPU as on the CPU; the training
    prefetcher hands out batches that live on the GPU and were never copied from the host."""
    from saturn.training import step_io

    dev = torch.device("cuda")
    for ds in (SyntheticTokens(50257, 64, seed=2), SyntheticImages(224, 3, 1000, seed=2)):
        for step in (0, 7, 10**6):
            gx, gy = batch_for_step(ds, step, 8, device=dev)
            cx, cy = batch_for_step(ds, step, 8)
            assert gx.is_cuda and torch.equal(gx.cpu(), cx) and torch.equal(gy.cpu(), cy)
        pf = step_io.BatchPrefetcher(lambda s, ds=ds: batch_for_step(ds, s, 8, device=dev), dev, 4, on_device=True)
        try:
            for s in range(4):
                x, y = pf.get(s)
                assert x.is_cuda and torch.equal(x.cpu(), batch_for_step(ds, s, 8)[0])
        finally:
            pf.close()
