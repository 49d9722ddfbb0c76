"""Lean spilling (issue 33): the host bytes per parameter the engine itself allocates.

Counted as tensor storage bytes the engine holds (masters, gradients, wire copies, optimizer
state, the shared shard buffers), each storage once, not RSS: the floor is fp32 master weights +
Adam's moments (12 bytes/parameter with fp32 moments, 8 with bf16) plus the reusable buffers of
the shards in flight, and the first step never holds more than the steady state."""

from __future__ import annotations

import pytest
import torch

from saturn.spec.schema import Job
from saturn.techniques.spilling import SpillingEngine, engine_kwargs
from saturn.training import loop as training
from saturn.zoo.data import batch_for_step

MODEL = {"name": "gpt2-tiny", "overrides": {"n_layer": 32, "n_embd": 64, "n_head": 2}}


def _held_bytes(eng: SpillingEngine) -> int:
    """Bytes of every host tensor storage the engine holds (the "device" copies of resident
    shards excluded: on a GPU they are device memory)."""
    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()

    for sh in eng.shards:
        for t in [*sh.host_flat, *sh.host_grad, *sh.wire_flat, *sh.wire_grad, *(p.grad for p in sh.params)]:
            add(t)
        for s in sh.optimizer.state.values():
            for v in s.values():
                add(v)
        for m in getattr(sh.optimizer, "_moments", []):
            for v in m:
                add(v)
    if eng.pool is not None:
        for ring in (eng.pool.wire, eng.pool.landing):
            for b in ring.bufs if ring else []:
                add(b)
        add(eng.pool.scratch)
    return sum(seen.values())


@pytest.mark.parametrize("state,floor,bound", [("fp32", 12, 12.5), ("bf16", 8, 8.5)])
def test_host_bytes_per_parameter_at_the_floor(state, floor, bound):
    job = Job(name="lean", model=MODEL, data="synthetic-tokens", batch_size=2, seq_len=16, steps=2,
              precision="bf16", numerics="low-memory", optimizer={"name": "adamw", "lr": 1e-3})
    torch.manual_seed(0)
    model = training.build_model(job)
    n = sum(p.numel() for p in model.parameters())
    # bf16 on the wire (what a bf16 job on a GPU sends): the cast path and its buffers run on CPU
    kw = engine_kwargs(job, {"shard_layers": 1, "optimizer_state": state, "wire_dtype": "bf16"})
    eng = SpillingEngine(model, "cpu", **{**kw, "async_optimizer": False})
    ds = training.build_dataset(job, model)
    during: list[int] = []
    step_shard = eng.host_optimizer._step

    def measured(k, ev):  # the engine's bytes right after each shard's optimizer step
        step_shard(k, ev)
        during.append(_held_bytes(eng))

    eng.host_optimizer._step = measured
    losses = []
    for s in range(2):
        losses.append(eng.train_step(*batch_for_step(ds, s, job.batch_size)))
        if s == 0:
            first = max(during)
    steady = _held_bytes(eng)
    largest = max(sum(p.numel() for p in sh.params) for sh in eng.shards)
    buffers = eng.pool.nbytes
    assert steady / n <= bound, f"{steady / n:.2f} bytes/parameter held on the host"
    assert (steady - buffers) / n == pytest.approx(floor, abs=0.01)  # masters + moments, nothing else
    assert buffers <= 12 * largest  # the shards in flight: wire x2 + landing x2 (bf16) + fp32 scratch
    assert first <= steady  # the first step's peak is the steady state (buffers allocated up front)
    assert all(x == x for x in losses) and losses[-1] < losses[0] + 1.0
