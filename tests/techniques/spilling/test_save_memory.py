"""Issue 33: saving a spilled job adds no model-sized host copy.

A spilled job keeps its whole fp32 state (masters + Adam moments) on the host, so a save that
copies it (a staging buffer the host has no room for, DCP cloning every view of the engine's
flat buffers) is what OOM-killed a 6.7B job at its final save. Measured as the peak growth of
this process's resident memory around a save, with a model (~0.5 GB of state) large enough that a
model-sized copy is unmistakable."""

from __future__ import annotations

import threading
import time

import psutil
import pytest
import torch

from saturn.runtime import drain, staging
from saturn.spec.schema import Job
from saturn.techniques.spilling import SpillingEngine, engine_kwargs
from saturn.training import loop as training
from saturn.training.catalog import intact_checkpoints
from saturn.zoo.data import batch_for_step

MODEL = {"name": "gpt2-tiny", "overrides": {"n_layer": 8, "n_embd": 640, "n_head": 5}}


@pytest.fixture(scope="module")
def spilled():
    job = Job(name="save-mem", model=MODEL, data="synthetic-tokens", batch_size=1, seq_len=16,
              steps=1, optimizer={"name": "adamw", "lr": 1e-3})
    torch.manual_seed(0)
    model = training.build_model(job)
    kw = engine_kwargs(job, {"shard_layers": 1, "optimizer_on": "cpu", "optimizer_state": "fp32"})
    eng = SpillingEngine(model, "cpu", **{**kw, "async_optimizer": False})
    eng.train_step(*batch_for_step(training.build_dataset(job, model), 0, 1))
    eng.synchronize()
    state = staging.nbytes_of({"model": eng.model_state_dict(copy=False),
                               "optim": eng.optim_state_dict(copy=False)})
    yield eng, state
    eng.close()


@pytest.fixture
def fresh_staging(tmp_path, monkeypatch):
    monkeypatch.setenv("SATURN_STAGING_LEDGER", str(tmp_path / "ledger.json"))
    monkeypatch.setattr(drain.DRAINS, "area", None)
    yield
    drain.wait_pending()
    if drain.DRAINS.area is not None:
        drain.DRAINS.area.close()


def _peak_growth(fn) -> int:
    """Peak resident bytes above the level before `fn()` ran (sampled every millisecond)."""
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.001)

    th = threading.Thread(target=sample)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    return max(peak, proc.memory_info().rss) - base


def _background_save(eng, path, step):
    with drain.in_background():
        eng.save_checkpoint(str(path), step, {})
    drain.wait_pending()


@pytest.mark.parametrize("short", ["node-budget", "host-memory"])
def test_save_without_room_is_synchronous_and_copies_nothing(spilled, tmp_path, fresh_staging,
                                                             monkeypatch, short):
    eng, state = spilled
    if short == "node-budget":  # over the budget: was DCP's stager, an unbudgeted full copy
        monkeypatch.setenv("SATURN_STAGING_BUDGET_GB", str(state / 2 / 1e9))
    else:  # the host has no room for it now (the budget alone would allow it)
        monkeypatch.setattr(staging, "host_available_bytes", lambda: state // 2)
    grew = _peak_growth(lambda: _background_save(eng, tmp_path, 3))
    assert grew < 0.25 * state, f"save grew RSS by {grew / 1e9:.2f} GB, state {state / 1e9:.2f} GB"
    assert drain.staged_bytes() == 0  # nothing was staged: written from the engine's tensors
    assert [p.rsplit("-", 1)[1] for p in intact_checkpoints(str(tmp_path))] == ["3"]


def test_staged_save_adds_only_the_staging_buffer(spilled, tmp_path, fresh_staging):
    eng, state = spilled
    if psutil.virtual_memory().available < 3 * state + 2**31:
        pytest.skip("this host has no room to stage the test's state")
    grew = _peak_growth(lambda: _background_save(eng, tmp_path, 4))
    assert drain.staged_bytes() >= state  # it was staged
    assert grew < 1.25 * state, f"save grew RSS by {grew / 1e9:.2f} GB, state {state / 1e9:.2f} GB"


def test_staging_falls_back_when_the_host_lacks_memory(tmp_path, monkeypatch):
    area = staging.StagingArea(staging.Ledger(tmp_path / "ledger.json", budget=10**12))
    monkeypatch.setattr(staging, "host_available_bytes", lambda: staging.host_margin_bytes() + 10**6)
    assert area.acquire(2 * 10**6, timeout_s=5.0)[0] is None  # fits the budget, not the host
    assert area.ledger.held() == 0
    buf, _ = area.acquire(10**5, timeout_s=5.0)  # what fits is staged
    assert buf is not None and area.ledger.held() == 10**5
    area.release(buf)
    area.close()
    monkeypatch.setattr(staging, "host_available_bytes", lambda: None)  # unknown: the budget rules
    assert staging.host_fits(10**15)
