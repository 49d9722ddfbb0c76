"""Shard planning and the host-side shard layout of model spilling.

Why a module of its own: *where the model is cut* (which consecutive layers form one shard) is a
pure function of layer sizes, an activation estimate and a GPU memory budget, and is worth testing
and reasoning about without streams or optimizers. The second half builds the host memory layout
every other part of spilling works on: per shard and per dtype, one flat (pinned) buffer of fp32
master parameters, one flat gradient buffer, and, when the wire dtype differs from the master
dtype (bf16 jobs on CUDA), a compute-dtype copy that is what actually crosses the link plus a
compute-dtype gradient staging buffer the device writes into. One flat buffer per shard and dtype
means one copy per shard per direction instead of one per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, cast


def uniform_shards(n_layers: int, shard_layers: int) -> list[tuple[int, int]]:
    """[start, end) layer ranges of `shard_layers` layers each (the last one may be shorter)."""
    if shard_layers < 1:
        raise ValueError(f"shard_layers must be >= 1, got {shard_layers}")
    return [(s, min(s + shard_layers, n_layers)) for s in range(0, n_layers, shard_layers)]


def packed_shards(layer_bytes: Sequence[int], max_shard_bytes: float) -> list[tuple[int, int]]:
    """Greedy: consecutive layers while the shard stays under `max_shard_bytes` (a layer larger
    than that is a shard of its own)."""
    shards, start, size = [], 0, 0
    for i, b in enumerate(layer_bytes):
        if i > start and size + b > max_shard_bytes:
            shards.append((start, i))
            start, size = i, 0
        size += b
    shards.append((start, len(layer_bytes)))
    return shards


def budget_shards(layer_bytes: Sequence[int], budget_bytes: float, prefetch: int,
                  optimizer_on: str = "cpu", activation_bytes: Optional[Sequence[int]] = None,
                  boundary_bytes: int = 0) -> list[tuple[int, int]]:
    """Shards sized for a GPU memory budget: `prefetch + 1` shards are resident at once, each with
    parameters + gradients (+ 2 state tensors on the GPU for Adam in GPU-optimizer mode), and the
    shard being recomputed also holds its layers' activations (`activation_bytes`, per layer);
    every shard boundary keeps one activation (`boundary_bytes`). Without an activation estimate,
    35% of the budget is left for activations and the allocator (15% with one). `layer_bytes` are
    the bytes of the parameters *on the device* (compute dtype)."""
    per_param = (2 + (2 if optimizer_on == "gpu" else 0)) * (prefetch + 1)
    if activation_bytes is None:
        usable = budget_bytes * 0.65
        cost = [b * per_param for b in layer_bytes]
    else:
        usable = budget_bytes * 0.85 - boundary_bytes * len(layer_bytes)
        cost = [b * per_param + a for b, a in zip(layer_bytes, activation_bytes)]
    return packed_shards(cost, max(usable, 1.0))


def activation_estimate(model: Any, batch_size: int, seq_len: int, precision: str
                        ) -> tuple[Optional[list[int]], int]:
    """Rough activation bytes per layer while it runs forward + backward, and the bytes of one
    boundary activation, for zoo models (None for others). Layer 0 is the embedding, the last
    layer the head, the rest blocks."""
    cfg = getattr(model, "config", None)
    d = getattr(cfg, "n_embd", None)
    if d is None:
        return None, 0
    if hasattr(cfg, "vocab_size"):
        tokens, head_out = batch_size * seq_len, cfg.vocab_size
    else:
        tokens, head_out = batch_size * (getattr(cfg, "n_patches", 0) + 1), cfg.num_classes
    per = 48 if precision == "bf16" else 96  # bytes per token per channel of one block
    n = len(model.layers)
    acts = [tokens * d * per] * n
    acts[0] = tokens * d * 12
    acts[-1] = tokens * d * 12 + tokens * head_out * 16  # logits (bf16 + fp32) and their grads
    return acts, tokens * d * 4


def cap_shards(ranges: Sequence[tuple[int, int]], layer_numels: Sequence[int],
               cap: float) -> list[tuple[int, int]]:
    """Split shards holding more than `cap` parameters (a layer larger than that stays whole):
    lean shards' host buffers are sized for the largest shard (pool.py)."""
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        out.extend((a + s, b + s) for a, b in packed_shards(layer_numels[s:e], cap))
    return out


def check_ranges(ranges: Sequence[tuple[int, int]], n_layers: int) -> list[tuple[int, int]]:
    out = [cast("tuple[int, int]", tuple(r)) for r in ranges]  # lists from JSON/YAML become pairs
    if not out or out[0][0] != 0 or out[-1][1] != n_layers or any(
            a[1] != b[0] or a[0] >= a[1] for a, b in zip(out, out[1:])):
        raise ValueError(f"shards {out} do not tile layers 0..{n_layers}")
    return out


def check_no_cross_shard_ties(layers: Sequence[Any]) -> None:
    owner: dict[int, int] = {}
    for i, layer in enumerate(layers):
        for p in layer.parameters():
            if owner.setdefault(id(p), i) != i:
                raise ValueError(f"layers {owner[id(p)]} and {i} share a parameter; spilling "
                                 "needs untied weights across layers")


# --------------------------------------------------------------------------------------------
# host layout
# --------------------------------------------------------------------------------------------

@dataclass
class FlatGroup:
    """Tensors of one master dtype packed into one flat buffer; `wire` is the dtype the group
    crosses the link in (the compute dtype; equal to `dtype` when no cast is needed)."""

    dtype: Any
    wire: Any
    index: list[int]  # positions in the shard's parameter list
    shapes: list[Any]
    numels: list[int]
    total: int

    @property
    def cast(self) -> bool:
        return self.wire != self.dtype

    def views(self, flat: Any) -> list[Any]:
        out, off = [], 0
        for shape, n in zip(self.shapes, self.numels):
            out.append(flat[off:off + n].view(shape))
            off += n
        return out


def flat_groups(tensors: Sequence[Any], wire_dtype: Any = None) -> list[FlatGroup]:
    import torch

    by_dtype: dict[Any, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    out = []
    for dtype, idx in by_dtype.items():
        numels = [tensors[i].numel() for i in idx]
        wire = wire_dtype if (wire_dtype is not None and dtype == torch.float32) else dtype
        out.append(FlatGroup(dtype, wire, idx, [tensors[i].shape for i in idx], numels,
                             sum(numels)))
    return out


@dataclass
class Shard:
    """One shard's host state. `host_flat`/`host_grad` back the master parameters and their
    `.grad` (views), so the optimizer and `model.state_dict()` see ordinary tensors. `wire_flat`
    and `wire_grad` are the compute-dtype copies (None per group where no cast is needed: the
    master buffer itself is sent)."""

    k: int
    start: int
    end: int
    module: Any  # nn.Sequential over the master model's layers [start, end) (shared modules)
    names: list[str]  # parameter names inside `module`
    fqns: list[str]  # canonical names in the SequentialModel
    params: list[Any]  # the master nn.Parameters (host)
    groups: list[FlatGroup]
    host_flat: list[Any]
    host_grad: list[Any]
    wire_flat: list[Any] = field(default_factory=list)
    wire_grad: list[Any] = field(default_factory=list)
    buffer_names: list[str] = field(default_factory=list)
    buffers: list[Any] = field(default_factory=list)
    optimizer: Any = None
    written: Any = None  # event: last D2H write-back of the master params (GPU-optimizer mode)
    nbytes: int = 0  # master parameter bytes
    wire_bytes: int = 0  # bytes that cross the link per copy of this shard
    pool: Any = None  # lean shards (optimizer on the host): the engine's shared ShardPool (pool.py)
    landing: list[Any] = field(default_factory=list)  # lean: (slot, buffer) per group, grads in flight
    wire_slots: list[int] = field(default_factory=list)  # lean: wire slots of the copy being sent

    def sendable(self) -> list[Any]:
        """Per group, the host buffer a copy-in reads: the master itself when no cast is needed,
        else the compute-dtype copy (lean: made now from the masters into a reusable wire buffer;
        `sent` hands it back)."""
        if self.pool is None:
            return [w if w is not None else h for w, h in zip(self.wire_flat, self.host_flat)]
        out = []
        for g, h in zip(self.groups, self.host_flat):
            if not g.cast:
                out.append(h)
                continue
            i, w = self.pool.wire.acquire(g.total, g.wire)
            w.copy_(h)
            self.wire_slots.append(i)
            out.append(w)
        return out

    def sent(self, event: Any) -> None:
        """The copy that read `sendable()`'s wire buffers is issued (done when `event` is)."""
        for i in self.wire_slots:
            self.pool.wire.release(i, event)
        self.wire_slots = []

    def grad_landing(self) -> list[Any]:
        """Per group, the host buffer the device's gradients are copied into (lean: a reusable
        landing buffer, held until `done_grads`)."""
        if self.pool is None:
            return [w if w is not None else h for w, h in zip(self.wire_grad, self.host_grad)]
        if not self.landing:
            self.landing = [self.pool.landing.acquire(g.total, g.wire) for g in self.groups]
        return [b for _, b in self.landing]

    def refresh_wire(self) -> None:
        """After an optimizer step: cast the new fp32 masters into the compute-dtype copy (lean
        shards have none: `sendable` casts when sending)."""
        for w, h in zip(self.wire_flat, self.host_flat):
            if w is not None:
                w.copy_(h)

    def land_grads(self) -> None:
        """Before an optimizer step: the landed gradients become the optimizer's. Lean: the
        parameters' `.grad` (or the flat kernel's gradient source) point into the landing
        buffers, upcast into the pool's fp32 scratch first where torch's AdamW needs fp32."""
        if self.pool is None:
            for w, h in zip(self.wire_grad, self.host_grad):
                if w is not None:
                    h.copy_(w)
            return
        flat_kernel = getattr(self.optimizer, "fuses_wire", False)
        for gi, (g, (_, land)) in enumerate(zip(self.groups, self.landing)):
            if flat_kernel:  # reads any gradient dtype in its one pass
                self.optimizer.slots[gi].grad = land
                continue
            src = land
            if g.cast:
                src = self.pool.scratch[:g.total]
                src.copy_(land)
            for i, view in zip(g.index, g.views(src)):
                self.params[i].grad = view

    def done_grads(self) -> None:
        """After a lean shard's optimizer step: its landing buffers go back to the pool."""
        for p in self.params:
            p.grad = None
        for s in getattr(self.optimizer, "slots", None) or []:
            s.grad = None
        for i, _ in self.landing:
            self.pool.landing.release(i)
        self.landing = []


def build_shards(layers: Sequence[Any], ranges: Sequence[tuple[int, int]], pin: bool,
                 wire_dtype: Any = None, lean: bool = False) -> list[Shard]:
    """Re-point the layers' parameters into per-shard flat host buffers (the caller's module
    becomes the master copy) and allocate gradient and compute-dtype buffers -- unless `lean`
    (the optimizer on the host): then only the masters exist at model size, and the shards in
    flight share reusable buffers (`pool.ShardPool`, set by the engine)."""
    import torch
    from torch import nn

    out = []
    for k, (s, e) in enumerate(ranges):
        module = nn.Sequential(*layers[s:e])
        named = list(module.named_parameters())
        names = [n for n, _ in named]
        params = [p for _, p in named]
        fqns = [f"layers.{s + int(n.split('.', 1)[0])}.{n.split('.', 1)[1]}" for n in names]
        groups = flat_groups(params, wire_dtype)
        host_flat: list[Any] = []
        host_grad: list[Any] = []
        wire_flat: list[Any] = []
        wire_grad: list[Any] = []
        for g in groups:
            flat = torch.empty(g.total, dtype=g.dtype, pin_memory=pin)
            grad = None if lean else torch.zeros(g.total, dtype=g.dtype, pin_memory=pin)
            for i, view in zip(g.index, g.views(flat)):
                view.copy_(params[i].detach())
                params[i].data = view
                params[i].grad = None
            if grad is not None:
                for i, gview in zip(g.index, g.views(grad)):
                    params[i].grad = gview
            host_flat.append(flat)
            host_grad.append(grad)
            if lean:
                wire_flat.append(None)
                wire_grad.append(None)
            elif g.cast:
                wire_flat.append(flat.to(g.wire).pin_memory() if pin else flat.to(g.wire))
                wire_grad.append(torch.zeros(g.total, dtype=g.wire, pin_memory=pin))
            else:
                wire_flat.append(None)
                wire_grad.append(None)
        bnamed = list(module.named_buffers())
        nbytes = sum(p.numel() * p.element_size() for p in params)
        wire_bytes = sum(g.total * torch.empty((), dtype=g.wire).element_size() for g in groups)
        out.append(Shard(k, s, e, module, names, fqns, params, groups, host_flat, host_grad,
                         wire_flat, wire_grad, [n for n, _ in bnamed], [b for _, b in bnamed],
                         nbytes=nbytes, wire_bytes=wire_bytes))
    return out


def wire_dtype_for(name: Optional[str], autocast_dtype: Any, optimizer_on: str) -> Any:
    import torch

    table = {"fp32": None, "bf16": torch.bfloat16}
    if name is not None:
        if name not in table:
            raise ValueError(f"wire_dtype must be one of {sorted(table)}, got {name!r}")
        if name == "bf16" and optimizer_on == "gpu":
            raise ValueError("wire_dtype bf16 needs optimizer_on cpu (the GPU step needs the "
                             "fp32 masters on the device)")
        return table[name]
    return autocast_dtype if optimizer_on == "cpu" else None


def default_budget(device: Any) -> float:
    """Bytes the engine may plan for: 90% of the device memory left (a nominal 4 GiB on CPU)."""
    import torch

    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        from saturn.env import gpu_memory_fraction

        return 0.9 * min(free, total * gpu_memory_fraction())
    return 4.0 * 2**30
