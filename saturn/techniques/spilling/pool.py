"""Reusable pinned buffers for the shards in flight: lean host memory for model spilling.

Why a module of its own: on the host, spilling's footprint is its product (issue 33: 16.9 bytes
per parameter made a 6.7B model not fit a 128 GiB host). The floor is what the optimizer must
keep for every parameter -- fp32 master weights and Adam's moments, 12 bytes (8 with bf16
moments) -- and nothing else needs to exist at model size. So with the optimizer on the host
(`lean` shards):

* the compute-dtype copy of a shard's weights is made from its fp32 masters when the shard is
  sent, into one of `prefetch + 1` reusable *wire* buffers (reused once the copy that read it
  has completed: its CUDA event), instead of a bf16 copy of the whole model kept up to date;
* a shard's gradients land in one of two reusable *landing* buffers (one being stepped, one
  landing), and the optimizer reads them from there (upcast into one fp32 *scratch* buffer for
  torch's fused AdamW, read directly by the bf16-state kernel): no model-sized gradient buffer.

Every buffer is sized for the largest shard, so the host peak is the floor plus these few
shards' buffers, from the first step on. A buffer is handed out round-robin and waits, before
reuse, for the release its previous user recorded (an event, or nothing when released on the
host). With the optimizer on the GPU the shards keep their own buffers (`shards.build_shards`).
"""

from __future__ import annotations

import threading
from typing import Any, Optional, Sequence

LEAN_SHARD_FRACTION = 1 / 16  # auto-sized shards hold at most this share of the parameters


def lean_shard_cap(ranges: Sequence[tuple[int, int]], layers: Sequence[Any]) -> list[tuple[int, int]]:
    """`ranges` with no auto-sized shard above LEAN_SHARD_FRACTION of the parameters (or the
    largest layer): the reusable host buffers below are sized for the largest shard, so they
    stay a small share of the model whatever the GPU budget lets a shard hold."""
    from saturn.techniques.spilling.shards import cap_shards

    sizes = [sum(p.numel() for p in ly.parameters()) for ly in layers]
    return cap_shards(ranges, sizes, max(max(sizes, default=1), int(sum(sizes) * LEAN_SHARD_FRACTION)))


class Ring:
    """`n` flat buffers of `nbytes` each, handed out in turn; before reuse a buffer waits for the
    event its last user released it with (a CUDA event; None: free now)."""

    def __init__(self, n: int, nbytes: int, pin: bool):
        import torch

        self.bufs = [torch.empty(max(1, nbytes), dtype=torch.uint8, pin_memory=pin) for _ in range(max(1, n))]
        self.events: list[Any] = [None] * len(self.bufs)
        self.busy = [False] * len(self.bufs)
        self.next = 0
        self.cond = threading.Condition()

    def acquire(self, numel: int, dtype: Any) -> tuple[int, Any]:
        """(slot, a `numel`-long view of one buffer as `dtype`), once its last user released it."""
        import torch

        with self.cond:
            i = self.next
            self.next = (i + 1) % len(self.bufs)
            self.cond.wait_for(lambda: not self.busy[i])  # a landing buffer still being stepped
            self.busy[i] = True
            ev, self.events[i] = self.events[i], None
        if ev is not None:
            ev.synchronize()  # the copy that last read / wrote it
        size = torch.empty((), dtype=dtype).element_size()
        return i, self.bufs[i][:numel * size].view(dtype)

    def release(self, i: int, event: Optional[Any] = None) -> None:
        with self.cond:
            self.events[i] = event
            self.busy[i] = False
            self.cond.notify_all()

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self.bufs)


class ShardPool:
    """The wire, landing and scratch buffers every lean shard of one engine shares."""

    def __init__(self, shards: list[Any], prefetch: int, pin: bool, scratch: bool = True):
        import torch

        def size(g: Any, dtype: Any) -> int:
            return g.total * torch.empty((), dtype=dtype).element_size()

        groups = [g for sh in shards for g in sh.groups]
        wire = max((size(g, g.wire) for g in groups if g.cast), default=0)
        land = max((size(g, g.wire) for g in groups), default=0)
        self.wire = Ring(prefetch + 1, wire, pin) if wire else None
        per_shard = max((len(sh.groups) for sh in shards), default=1)
        self.landing = Ring(2 * per_shard, land, pin)  # one shard stepped while the next lands
        cast = max((g.total for g in groups if g.cast), default=0) if scratch else 0
        # torch's AdamW wants fp32 gradients: the optimizer thread (one) upcasts into this
        self.scratch = torch.empty(cast, dtype=torch.float32) if cast else None

    @property
    def nbytes(self) -> int:
        return ((self.wire.nbytes if self.wire else 0) + self.landing.nbytes
                + (self.scratch.numel() * 4 if self.scratch is not None else 0))
