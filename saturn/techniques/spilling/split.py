"""The split optimizer of model spilling (the `gpu_state_fraction` knob): some shards stay on the
GPU with their fp32 masters and optimizer state and step there; the rest stream and step on the
host.

Why: with the optimizer state on the host, a spilled step runs at the speed of the host's
memory (every fp32 state byte crosses it each step), while the GPU idles and its spare memory is
unused. Keeping a prefix of shards on the device takes their share of the host optimizer's bytes
(and of the link's) off the step, at the price of GPU memory that could have held larger
streamed shards. This is the idea behind ZeRO-Offload++ "twin-flow". Which share is best depends
on the host's memory bandwidth, the link and the GPU: the knob is profiled like any other and
the planner picks by measured speed (`Spilling.candidates`).

Which shards: the *first* ones. Backward runs from the last shard to the first, so the host
steps of the first shards are the tail of a step (nothing overlaps them, and the next step's
first forward waits for them); moving those to the GPU shortens exactly that tail.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from saturn.techniques.spilling.states import FlatAdamW, FlatSlot, state_nbytes


def resident_bytes_per_param(state_dtype: str) -> int:
    """GPU bytes a device-stepped parameter holds: fp32 master + fp32 gradient (autograd's) +
    state, + the flat fp32 gradient buffer the bf16-state update reads."""
    return 4 + 4 + state_nbytes(state_dtype) + (4 if state_dtype == "bf16" else 0)


def choose_device_shards(shard_numels: Sequence[int], reserve_bytes: float,
                         state_dtype: str = "fp32") -> list[int]:
    """The longest prefix of shards whose resident bytes fit `reserve_bytes`; never every shard
    (then nothing would stream and the technique would be plain training)."""
    per = resident_bytes_per_param(state_dtype)
    out: list[int] = []
    used = 0.0
    for k, n in enumerate(shard_numels[:-1]):
        used += n * per
        if used > reserve_bytes:
            break
        out.append(k)
    return out


def plan_with_device_prefix(layer_numels: Sequence[int], reserve_bytes: float, state_dtype: str,
                            plan: Any) -> list[tuple[int, int]]:
    """Shard ranges for a split optimizer when the engine plans the shards itself: the longest
    prefix of *layers* whose resident bytes fit `reserve_bytes` (never every layer) is cut into
    shards of its own, the rest as usual; `plan(start, end)` plans layers [start, end) for the
    streaming budget (so a device shard's recompute activations fit like any shard's).
    Cutting at layers, not at already planned shards, lets a reserve smaller than a streamed
    shard still hold something."""
    per = resident_bytes_per_param(state_dtype)
    used, j = 0.0, 0
    while j < len(layer_numels) - 1 and used + layer_numels[j] * per <= reserve_bytes:
        used += layer_numels[j] * per
        j += 1
    head = [(a, b) for a, b in plan(0, j)] if j else []
    return head + [(a + j, b + j) for a, b in plan(j, len(layer_numels))]


def make_device_shard(sh: Any, device: Any, optimizer: str, kwargs: dict[str, Any],
                      state_dtype: str, make_optimizer: Any) -> Any:
    """Move shard `sh`'s masters to `device` (its parameters now point there, so the model's
    state dict holds them) and build its device optimizer; returns the Resident the engine
    computes with (never evicted)."""
    import torch

    from saturn.techniques.spilling.transfer import Resident

    flats = [h.to(device, copy=True) for h in sh.host_flat]
    views: list[Any] = [None] * len(sh.params)
    for g, f in zip(sh.groups, flats):
        for i, v in zip(g.index, g.views(f)):
            views[i] = v
    for p, v in zip(sh.params, views):
        p.grad = None
        p.data = v
    if state_dtype == "bf16":
        slots = [FlatSlot(f, torch.zeros_like(f), None, g.index, g.numels, g.shapes)
                 for g, f in zip(sh.groups, flats)]
        sh.optimizer = FlatAdamW(sh.params, slots, optimizer, kwargs, "bf16", compiled=False)
    else:
        cls_kw = dict(kwargs)
        opt: Optional[Any] = None
        if optimizer in ("adam", "adamw") and "fused" not in cls_kw and "foreach" not in cls_kw:
            try:
                opt = make_optimizer(optimizer, {**cls_kw, "fused": True}, sh.params, False)
            except (RuntimeError, TypeError, ValueError):
                opt = None
        sh.optimizer = opt or make_optimizer(optimizer, cls_kw, sh.params, False)
    buffers = [b.to(device) for b in sh.buffers]
    return Resident(flats, views, buffers, ready=None)


def device_step(sh: Any, param_grads: list[Any]) -> None:
    """Step a device shard with the gradients autograd produced (on the compute stream)."""
    import torch

    opt = sh.optimizer
    if isinstance(opt, FlatAdamW):
        for s in opt.slots:
            off = 0
            for i, n in zip(s.index, s.numels):
                gv = s.grad[off:off + n]
                g = param_grads[i]
                if g is None:
                    gv.zero_()
                else:
                    gv.copy_(g.reshape(-1))
                off += n
        opt.step()
        return
    for p, g in zip(sh.params, param_grads):
        p.grad = g if g is not None else torch.zeros_like(p)
    opt.step()
    for p in sh.params:
        p.grad = None
