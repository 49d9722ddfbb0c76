"""Model spilling (in the spirit of Hydra): train a model bigger than GPU memory on one GPU.

The model's layer sequence is cut into *shards* (runs of consecutive layers). Master parameters
live in host memory (pinned on CUDA), packed per shard into one flat buffer per dtype so that a
shard crosses the host<->GPU link as one copy. Only the shards being computed (plus the ones being
prefetched) live on the GPU.

One training step (`SpillingEngine.train_step`), with S shards:

* forward, shards 0..S-2, under `no_grad`: only the *boundary activations* (the input of every
  shard) are kept, on the GPU by default or in pinned host memory (`offload_activations`);
* shard S-1 (the head) runs forward + loss + backward at once (no recomputation);
* backward, shards S-2..0: the shard is brought in again, its forward is recomputed from its saved
  boundary input with autograd on (activation checkpointing at shard granularity, with the RNG
  state of the first forward replayed so dropout matches), and `autograd.grad` gives the gradient
  w.r.t. its input (handed to the shard before it) and w.r.t. its parameters (packed into one flat
  gradient buffer and copied out to pinned host memory);
* the optimizer steps **per shard**: with `optimizer_on="cpu"` (default) the state lives on the
  host and shard k+1 is stepped on the CPU while the GPU runs the backward of shard k; with
  `optimizer_on="gpu"` the state also lives on the host but is streamed in with the shard for its
  backward, the step runs on the GPU and parameters + state are copied back out. Either way no step
  ever needs the whole model (or its optimizer state) on the GPU.

Double buffering: the schedule of shard uses is known in advance (0, 1, ..., S-1, S-2, ..., 0), so
while use i computes, the shards of uses i+1..i+prefetch are copied in on a separate H2D CUDA
stream; gradients/parameters go out on a D2H stream (PCIe is full duplex). Ordering is enforced
with CUDA events (compute waits for "shard k arrived", D2H waits for "grads of k computed", the
next step's H2D of shard k waits for "k written back" in GPU-optimizer mode), and tensors used on a
stream other than the one that allocated them are `record_stream`ed so the caching allocator never
hands their memory out early. On the CPU there are no streams: the same code runs synchronously
(device == host, a "copy in" is a plain clone), which is what CI tests.

Checkpoints are technique-neutral (see `saturn.techniques.checkpoint`): the master module *is* the
plain `SequentialModel` (its parameters are views into the flat host buffers), so its state dict has
the canonical `layers.N....` names, and the per-shard optimizer states are merged into one state
keyed by parameter FQN.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

from saturn.techniques.base import Feasibility
from saturn.techniques.common import LaunchedTechnique
from saturn.techniques.knobs import knob, knob_dataclass
from saturn.techniques.registry import register

OPTIMIZERS = ("adamw", "adam", "sgd")
DEFAULT_KNOBS: dict[str, Any] = {"shard_layers": 0, "gpu_budget_gb": 0.0, "prefetch": 1,
                                 "optimizer_on": "cpu", "offload_activations": False}


# --------------------------------------------------------------------------------------------
# sharding
# --------------------------------------------------------------------------------------------

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
    35% of the budget is left for activations and the allocator (15% with one)."""
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
        tokens, head_out = batch_size * seq_len, getattr(cfg, "vocab_size")
    else:
        tokens, head_out = batch_size * (getattr(cfg, "n_patches", 0) + 1), cfg.num_classes
    per = 48 if precision == "bf16" else 96  # bytes per token per channel of one block
    n = len(model.layers)
    acts = [tokens * d * per] * n
    acts[0] = tokens * d * 12
    acts[-1] = tokens * d * 12 + tokens * head_out * 16  # logits (bf16 + fp32) and their grads
    return acts, tokens * d * 4


# --------------------------------------------------------------------------------------------
# streams: real CUDA streams/events, or synchronous stand-ins on the CPU
# --------------------------------------------------------------------------------------------

class _Streams:
    def __init__(self, device: Any):
        import torch

        self.cuda = device.type == "cuda"
        if self.cuda:
            self.compute = torch.cuda.current_stream(device)
            self.h2d = torch.cuda.Stream(device)
            self.d2h = torch.cuda.Stream(device)
        else:
            self.compute = self.h2d = self.d2h = None

    def on(self, stream: Any) -> Any:
        import torch

        return torch.cuda.stream(stream) if self.cuda else contextlib.nullcontext()

    def event(self, stream: Any) -> Any:
        """An event recorded now on `stream` (None on the CPU: everything already happened)."""
        import torch

        if not self.cuda:
            return None
        ev = torch.cuda.Event()
        ev.record(stream)
        return ev

    def wait(self, stream: Any, event: Any) -> None:
        if self.cuda and event is not None:
            stream.wait_event(event)

    @staticmethod
    def host_wait(event: Any) -> None:
        if event is not None:
            event.synchronize()

    def use_on(self, tensors: Sequence[Any], stream: Any) -> None:
        """`tensors` (allocated on another stream) are used on `stream`: tell the allocator."""
        if self.cuda:
            for t in tensors:
                t.record_stream(stream)


# --------------------------------------------------------------------------------------------
# flat buffers
# --------------------------------------------------------------------------------------------

@dataclass
class _Group:
    """Tensors of one dtype packed into one flat buffer."""

    dtype: Any
    index: list[int]  # positions in the shard's parameter list
    shapes: list[Any]
    numels: list[int]
    total: int

    def views(self, flat: Any) -> list[Any]:
        out, off = [], 0
        for shape, n in zip(self.shapes, self.numels):
            out.append(flat[off:off + n].view(shape))
            off += n
        return out


def _groups(tensors: Sequence[Any]) -> list[_Group]:
    by_dtype: dict[Any, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    out = []
    for dtype, idx in by_dtype.items():
        numels = [tensors[i].numel() for i in idx]
        out.append(_Group(dtype, idx, [tensors[i].shape for i in idx], numels, sum(numels)))
    return out


@dataclass
class _Shard:
    k: int
    start: int
    end: int
    module: Any  # nn.Sequential over the master model's layers [start, end) (shared modules)
    names: list[str]  # parameter names inside `module`
    fqns: list[str]  # canonical names in the SequentialModel
    params: list[Any]  # the master nn.Parameters (host)
    groups: list[_Group]
    host_flat: list[Any]  # per group: pinned host buffer backing the master parameters
    host_grad: list[Any]  # per group: pinned host gradient buffer
    buffer_names: list[str]
    buffers: list[Any]
    optimizer: Any = None
    written: Any = None  # event: last D2H write-back of the master params (GPU-optimizer mode)
    nbytes: int = 0


@dataclass
class _Resident:
    """A shard on the device: its flat parameter buffers and the views into them."""

    flats: list[Any]
    views: list[Any]  # per parameter, in shard order
    buffers: list[Any]
    ready: Any  # event on the H2D stream
    state: Optional[list[dict[str, Any]]] = None  # GPU-optimizer mode: per parameter
    state_ready: Any = None
    state_fetched: bool = False


# --------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------

def optimizer_class(name: str) -> Any:
    import torch

    table = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if name not in table:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {sorted(table)}")
    return table[name]


class SpillingEngine:
    """Trains a `SequentialModel` whose master copy stays in host memory (see module docstring).

    `model` must be on the CPU; its parameters are re-pointed into pinned flat buffers (so the
    caller's module *is* the master copy, and `model.state_dict()` is the canonical state).
    Shards: `shards` ([start, end) layer ranges), else `shard_layers` per shard, else packed for
    `gpu_budget_gb` (default: 90% of the free device memory) using an activation estimate for
    `batch_hint` = (batch_size, seq_len) when given.
    """

    def __init__(self, model: Any, device: Any = "cpu", *, shard_layers: int = 0,
                 gpu_budget_gb: float = 0.0, shards: Optional[Sequence[tuple[int, int]]] = None,
                 optimizer: str = "adamw", optimizer_kwargs: Optional[dict[str, Any]] = None,
                 optimizer_on: str = "cpu", prefetch: int = 1, precision: str = "fp32",
                 offload_activations: bool = False, pin_memory: Optional[bool] = None,
                 cpu_fused_optimizer: bool = True, async_optimizer: bool = True,
                 batch_hint: Optional[tuple[int, int]] = None):
        import torch
        from torch import nn

        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if optimizer_on not in ("cpu", "gpu"):
            raise ValueError(f"optimizer_on must be 'cpu' or 'gpu', got {optimizer_on!r}")
        if prefetch not in (0, 1, 2):
            raise ValueError(f"prefetch must be 0, 1 or 2, got {prefetch!r}")
        if precision == "fp16":
            raise ValueError("spilling steps the optimizer per shard, so it cannot skip a step "
                             "whose fp16 gradients overflow: use precision bf16 or fp32")
        self.model = model
        self.optimizer_on = optimizer_on
        self.prefetch = prefetch
        self.precision = precision
        self.offload_activations = offload_activations
        self.cuda = self.device.type == "cuda"
        self.pin = self.cuda if pin_memory is None else pin_memory
        self.streams = _Streams(self.device)
        self.optimizer_name = optimizer
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.cpu_fused_optimizer = cpu_fused_optimizer
        self.async_optimizer = async_optimizer
        self._opt_pool: Any = None
        self._steps_in_flight: dict[int, Any] = {}
        self.autocast_dtype = ({"bf16": torch.bfloat16}.get(precision) if self.cuda else None)

        layers = list(model.layers)
        sizes = [sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers]
        if shards is None:
            if shard_layers and shard_layers > 0:
                shards = uniform_shards(len(layers), int(shard_layers))
            else:
                budget = gpu_budget_gb * 2**30 if gpu_budget_gb else _default_budget(self.device)
                acts, boundary = (activation_estimate(model, *batch_hint, precision)
                                  if batch_hint else (None, 0))
                shards = budget_shards(sizes, budget, prefetch, optimizer_on, acts, boundary)
        self.ranges = [tuple(r) for r in shards]
        if self.ranges[0][0] != 0 or self.ranges[-1][1] != len(layers) or any(
                a[1] != b[0] or a[0] >= a[1] for a, b in zip(self.ranges, self.ranges[1:])):
            raise ValueError(f"shards {self.ranges} do not tile layers 0..{len(layers)}")
        self._check_no_cross_shard_ties(layers)

        self.shards: list[_Shard] = []
        for k, (s, e) in enumerate(self.ranges):
            module = nn.Sequential(*layers[s:e])
            named = list(module.named_parameters())
            names = [n for n, _ in named]
            params = [p for _, p in named]
            fqns = [f"layers.{s + int(n.split('.', 1)[0])}.{n.split('.', 1)[1]}" for n in names]
            groups = _groups(params)
            host_flat, host_grad = [], []
            for g in groups:
                flat = torch.empty(g.total, dtype=g.dtype, pin_memory=self.pin)
                grad = torch.zeros(g.total, dtype=g.dtype, pin_memory=self.pin)
                for i, view, gview in zip(g.index, g.views(flat), g.views(grad)):
                    view.copy_(params[i].detach())
                    params[i].data = view
                    params[i].grad = gview
                host_flat.append(flat)
                host_grad.append(grad)
            bnamed = list(module.named_buffers())
            shard = _Shard(k, s, e, module, names, fqns, params, groups, host_flat, host_grad,
                           [n for n, _ in bnamed], [b for _, b in bnamed],
                           nbytes=sum(sizes[s:e]))
            shard.optimizer = self._make_optimizer(params)
            self.shards.append(shard)
        self._resident: dict[int, _Resident] = {}
        self._kept: dict[int, _Resident] = {}  # compute_only: every shard stays on the device
        self._param_to_shard = {id(p): sh for sh in self.shards for p in sh.params}
        self.step_count = 0
        self.timings = {"grad_wait_s": 0.0, "cpu_optimizer_s": 0.0}  # host-side, cumulative

    # ---------------------------------------------------------------- construction helpers
    def _make_optimizer(self, params: list[Any]) -> Any:
        cls = optimizer_class(self.optimizer_name)
        kw = dict(self.optimizer_kwargs)
        if (self.cpu_fused_optimizer and self.optimizer_on == "cpu"
                and self.optimizer_name in ("adam", "adamw")
                and "fused" not in kw and "foreach" not in kw):
            try:  # fused CPU Adam(W) (torch >= 2.4) is several times faster than the loop
                return cls(params, fused=True, **kw)
            except (RuntimeError, TypeError, ValueError):
                pass
        return cls(params, **kw)

    @staticmethod
    def _check_no_cross_shard_ties(layers: list[Any]) -> None:
        owner: dict[int, int] = {}
        for i, layer in enumerate(layers):
            for p in layer.parameters():
                if owner.setdefault(id(p), i) != i:
                    raise ValueError(f"layers {owner[id(p)]} and {i} share a parameter; spilling "
                                     "needs untied weights across layers")

    # ---------------------------------------------------------------- transfers
    def _fetch(self, k: int) -> _Resident:
        """Copy shard k's parameters in (on the H2D stream); returns at once on CUDA."""
        import torch

        sh = self.shards[k]
        st = self.streams
        self._wait_cpu_step(k)  # the host copy is being updated by the optimizer thread
        with st.on(st.h2d):
            st.wait(st.h2d, sh.written)
            flats = []
            for hf in sh.host_flat:
                if st.cuda:
                    d = torch.empty(hf.shape, dtype=hf.dtype, device=self.device)
                    d.copy_(hf, non_blocking=True)
                else:
                    d = hf.clone()
                flats.append(d)
            bufs = [b.to(self.device, non_blocking=True) if st.cuda else b.clone()
                    for b in sh.buffers]
            ready = st.event(st.h2d)
        views: list[Any] = [None] * len(sh.params)
        for g, flat in zip(sh.groups, flats):
            for i, v in zip(g.index, g.views(flat)):
                views[i] = v
        return _Resident(flats, views, bufs, ready)

    def _fetch_state(self, k: int, res: _Resident) -> None:
        """GPU-optimizer mode: bring shard k's optimizer state in (H2D stream)."""
        sh = self.shards[k]
        st = self.streams
        opt_state = sh.optimizer.state
        if not any(p in opt_state for p in sh.params):
            res.state = None  # first step: the optimizer creates its state on the GPU
            return
        with st.on(st.h2d):
            st.wait(st.h2d, sh.written)
            res.state = []
            for p in sh.params:
                s = opt_state.get(p, {})
                res.state.append({key: (v.to(self.device, non_blocking=True)
                                        if _is_state_tensor(key, v) else v)
                                  for key, v in s.items()})
            res.state_ready = st.event(st.h2d)

    def _acquire(self, k: int, need_state: bool, store: Optional[dict] = None) -> _Resident:
        store = self._resident if store is None else store
        res = store.get(k)
        if res is None:
            res = store[k] = self._fetch(k)
        if store is self._kept:
            return res
        if need_state and self.optimizer_on == "gpu" and not res.state_fetched:
            self._fetch_state(k, res)
            res.state_fetched = True
        return res

    def _use(self, res: _Resident) -> None:
        """Make the compute stream wait for `res` to arrive."""
        st = self.streams
        st.wait(st.compute, res.ready)
        st.use_on(res.flats + res.buffers, st.compute)
        if res.state is not None:
            st.wait(st.compute, res.state_ready)
            st.use_on([v for s in res.state for key, v in s.items() if _is_state_tensor(key, v)],
                      st.compute)

    # ---------------------------------------------------------------- compute
    def _autocast(self) -> Any:
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _run(self, k: int, params: list[Any], buffers: list[Any], x: Any) -> Any:
        from torch.func import functional_call

        sh = self.shards[k]
        tensors = dict(zip(sh.names, params))
        tensors.update(zip(sh.buffer_names, buffers))
        with self._autocast():
            return functional_call(sh.module, tensors, (x,))

    def _rng_state(self) -> tuple[Any, Any]:
        import torch

        cpu = torch.get_rng_state()
        gpu = torch.cuda.get_rng_state(self.device) if self.cuda else None
        return cpu, gpu

    @contextlib.contextmanager
    def _replay_rng(self, state: tuple[Any, Any]) -> Any:
        import torch

        saved = self._rng_state()
        torch.set_rng_state(state[0])
        if self.cuda:
            torch.cuda.set_rng_state(state[1], self.device)
        try:
            yield
        finally:
            torch.set_rng_state(saved[0])
            if self.cuda:
                torch.cuda.set_rng_state(saved[1], self.device)

    def _schedule(self) -> list[tuple[int, str]]:
        S = len(self.shards)
        return ([(k, "fwd") for k in range(S - 1)] + [(S - 1, "head")]
                + [(k, "bwd") for k in range(S - 2, -1, -1)])

    def train_step(self, inputs: Any, targets: Any, compute_only: bool = False) -> float:
        """One optimizer step on one batch; returns the loss.

        `compute_only` (benchmarks): the same shards and schedule with every shard kept resident
        after its first copy in, and no gradient copy-out or optimizer step: the compute part of
        a spilling step. The parameters do not change."""
        import torch

        st = self.streams
        self.model.train()
        sched = self._schedule()
        S = len(self.shards)
        x0 = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        boundary: list[Any] = [None] * S
        boundary[0] = x0
        on_host: list[Any] = [None] * S  # (host tensor, event) of offloaded boundaries
        rng: list[Any] = [None] * S
        grad_out = None
        loss_value = None

        for i, (k, kind) in enumerate(sched):
            # double buffering: make sure uses i..i+prefetch are in flight
            for j in range(i, min(len(sched), i + self.prefetch + 1)):
                kj, kindj = sched[j]
                self._acquire(kj, need_state=kindj != "fwd",
                              store=self._kept if compute_only else None)
                if (kindj == "bwd" and self.offload_activations and boundary[kj] is None
                        and on_host[kj] is not None):
                    boundary[kj] = self._bring_back(on_host[kj])
            res = (self._kept if compute_only else self._resident)[k]
            self._use(res)

            if kind == "fwd":
                rng[k] = self._rng_state()
                x = boundary[k]
                with torch.no_grad():
                    out = self._run(k, res.views, res.buffers, x)
                if on_host[k] is not None:
                    boundary[k] = None  # offloaded: the device copy is done with until backward
                del x
                if self.offload_activations and k + 1 < S - 1:
                    on_host[k + 1] = self._offload(out)
                boundary[k + 1] = out
            else:
                x = boundary[k]
                if isinstance(x, tuple):  # (tensor, event) brought back from the host
                    st.wait(st.compute, x[1])
                    st.use_on([x[0]], st.compute)
                    x = x[0]
                needs_input_grad = k > 0 and x.is_floating_point()
                x_leaf = x.detach().requires_grad_(needs_input_grad)
                leaves = [v.detach().requires_grad_(p.requires_grad)
                          for v, p in zip(res.views, self.shards[k].params)]
                ctx = self._replay_rng(rng[k]) if kind == "bwd" else contextlib.nullcontext()
                with torch.enable_grad(), ctx:
                    out = self._run(k, leaves, res.buffers, x_leaf)
                    if kind == "head":
                        loss = self.model.loss(out, targets)
                        root, root_grad = loss, None
                        loss_value = loss.detach()
                    else:
                        root, root_grad = out, grad_out
                wrt = ([x_leaf] if needs_input_grad else []) + [v for v in leaves if v.requires_grad]
                grads = list(torch.autograd.grad(root, wrt, root_grad, allow_unused=True))
                grad_out = grads.pop(0) if needs_input_grad else None
                pgrads = iter(grads)
                param_grads = [next(pgrads) if v.requires_grad else None for v in leaves]
                del out, root, x_leaf, leaves, grads
                boundary[k] = None
                on_host[k] = None
                if compute_only:
                    self._pack_grads(k, param_grads)
                    continue
                self._after_backward(k, res, param_grads)
                if self.optimizer_on == "cpu":
                    self._submit_cpu_step(k, self._grads_out(k, res, param_grads))
            # evict unless needed again within the prefetch window
            soon = {sched[j][0] for j in range(i + 1, min(len(sched), i + self.prefetch + 1))}
            if k not in soon and not compute_only:
                del self._resident[k]
        if compute_only:
            return float(loss_value)
        self.step_count += 1
        return float(loss_value)

    # ---------------------------------------------------------------- activations offload
    def _offload(self, t: Any) -> Any:
        import torch

        st = self.streams
        ev = st.event(st.compute)
        with st.on(st.d2h):
            st.wait(st.d2h, ev)
            h = torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pin)
            h.copy_(t, non_blocking=st.cuda)
            st.use_on([t], st.d2h)
            done = st.event(st.d2h)
        return (h, done)

    def _bring_back(self, item: Any) -> Any:
        import torch

        h, done = item
        st = self.streams
        st.host_wait(done)
        with st.on(st.h2d):
            d = torch.empty(h.shape, dtype=h.dtype, device=self.device)
            d.copy_(h, non_blocking=st.cuda)
            ev = st.event(st.h2d)
        return (d, ev)

    # ---------------------------------------------------------------- gradients & steps
    def _pack_grads(self, k: int, param_grads: list[Any]) -> list[Any]:
        import torch

        sh = self.shards[k]
        flats = []
        for g in sh.groups:
            parts = []
            for i, n in zip(g.index, g.numels):
                gr = param_grads[i]
                parts.append(gr.reshape(-1).to(g.dtype) if gr is not None
                             else torch.zeros(n, dtype=g.dtype, device=self.device))
            flats.append(torch.cat(parts) if len(parts) > 1 else parts[0])
        return flats

    def _grads_out(self, k: int, res: _Resident, param_grads: list[Any]) -> Any:
        """CPU-optimizer mode: copy shard k's gradients to its pinned host buffer (D2H stream);
        returns the event the host waits on before stepping."""
        st = self.streams
        sh = self.shards[k]
        flats = self._pack_grads(k, param_grads)
        ev = st.event(st.compute)
        with st.on(st.d2h):
            st.wait(st.d2h, ev)
            for hg, dg in zip(sh.host_grad, flats):
                hg.copy_(dg, non_blocking=st.cuda)
            st.use_on(flats, st.d2h)
            return st.event(st.d2h)

    def _submit_cpu_step(self, k: int, event: Any) -> None:
        """CPU-optimizer mode: step shard k once its gradients are on the host. On the optimizer
        thread (one, so shards step in submission order) the host thread keeps issuing GPU work
        meanwhile; the next copy-in of shard k waits for its step (`_wait_cpu_step`)."""
        if not self.async_optimizer:
            self._cpu_step(k, event)
            return
        if self._opt_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._opt_pool = ThreadPoolExecutor(1, thread_name_prefix="spilling-optimizer")
        self._steps_in_flight[k] = self._opt_pool.submit(self._cpu_step, k, event)

    def _wait_cpu_step(self, k: Optional[int] = None) -> None:
        """Wait for shard k's (None: every) optimizer step in flight; re-raises its errors."""
        keys = list(self._steps_in_flight) if k is None else [k]
        for key in keys:
            fut = self._steps_in_flight.pop(key, None)
            if fut is not None:
                fut.result()

    def _cpu_step(self, k: int, event: Any) -> None:
        t0 = time.perf_counter()
        self.streams.host_wait(event)
        t1 = time.perf_counter()
        self.shards[k].optimizer.step()
        self.timings["grad_wait_s"] += t1 - t0
        self.timings["cpu_optimizer_s"] += time.perf_counter() - t1

    def _after_backward(self, k: int, res: _Resident, param_grads: list[Any]) -> None:
        if self.optimizer_on == "gpu":
            self._gpu_step(k, res, param_grads)

    def _gpu_step(self, k: int, res: _Resident, param_grads: list[Any]) -> None:
        """Step shard k on the device (state streamed in with the shard), then write parameters
        and state back to the host (D2H stream)."""
        import torch

        st = self.streams
        sh = self.shards[k]
        opt = sh.optimizer
        flats = self._pack_grads(k, param_grads)
        gviews: list[Any] = [None] * len(sh.params)
        for g, flat in zip(sh.groups, flats):
            for i, v in zip(g.index, g.views(flat)):
                gviews[i] = v
        host_state = [opt.state.get(p) for p in sh.params]
        for i, p in enumerate(sh.params):
            p.grad = None
            p.data = res.views[i]
            p.grad = gviews[i]
            if res.state is not None:
                opt.state[p] = res.state[i]
        opt.step()
        dev_state = [opt.state.get(p, {}) for p in sh.params]
        ev = st.event(st.compute)
        with st.on(st.d2h):
            st.wait(st.d2h, ev)
            for hf, df in zip(sh.host_flat, res.flats):
                hf.copy_(df, non_blocking=st.cuda)
            st.use_on(res.flats, st.d2h)
            new_host_state = []
            for i, s in enumerate(dev_state):
                hs = dict(host_state[i]) if host_state[i] is not None else {}
                for key, v in s.items():
                    if _is_state_tensor(key, v):
                        h = hs.get(key)
                        if h is None or h.shape != v.shape or h.device.type != "cpu":
                            h = torch.empty(v.shape, dtype=v.dtype, pin_memory=self.pin)
                        h.copy_(v, non_blocking=st.cuda)
                        st.use_on([v], st.d2h)
                        hs[key] = h
                    else:
                        hs[key] = v
                new_host_state.append(hs)
            sh.written = st.event(st.d2h)
        hviews: list[Any] = [None] * len(sh.params)
        gh: list[Any] = [None] * len(sh.params)
        for g, hf, hg in zip(sh.groups, sh.host_flat, sh.host_grad):
            for i, v, gv in zip(g.index, g.views(hf), g.views(hg)):
                hviews[i], gh[i] = v, gv
        for i, p in enumerate(sh.params):
            p.grad = None
            p.data = hviews[i]
            p.grad = gh[i]
            opt.state[p] = new_host_state[i]
        res.state = None
        res.state_ready = None
        res.state_fetched = False

    # ---------------------------------------------------------------- state
    def synchronize(self) -> None:
        import torch

        self._wait_cpu_step()
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def model_state_dict(self, copy: bool = True) -> dict[str, Any]:
        """Canonical model state (FQN -> tensor) of the plain SequentialModel. `copy=False` gives
        the master tensors themselves (views into the pinned flat buffers: what a checkpoint
        save/load reads/fills in place, without doubling host memory)."""
        self.synchronize()
        sd = self.model.state_dict()
        return {k: v.detach().clone() for k, v in sd.items()} if copy else sd

    def optim_state_dict(self, copy: bool = True) -> dict[str, Any]:
        """Optimizer state keyed by parameter FQN: {"state": {fqn: {...}}, "param_groups": [...]}
        (the layout of torch.distributed.checkpoint's get_optimizer_state_dict). `copy=False`
        gives the live state tensors (to save, or to fill in place on load)."""
        import torch

        self.synchronize()
        state: dict[str, dict[str, Any]] = {}
        for sh in self.shards:
            for fqn, p in zip(sh.fqns, sh.params):
                s = sh.optimizer.state.get(p)
                if s:
                    state[fqn] = {key: (v.detach().to("cpu", copy=True)
                                        if copy and isinstance(v, torch.Tensor) else v)
                                  for key, v in s.items()}
        group = {key: v for key, v in self.shards[0].optimizer.param_groups[0].items()
                 if key != "params"}
        # implementation choices of *this* engine (fused CPU Adam) are not the job's settings
        group.update({k: None for k in ("fused", "foreach") if k in group})
        group["params"] = [f for sh in self.shards for f in sh.fqns]
        return {"state": state, "param_groups": [group]}

    def materialize_optim_state(self) -> None:
        """Create every shard's optimizer state (as a zero-lr step on zero gradients would), so
        that a checkpoint can be loaded into it in place."""
        import torch

        self.synchronize()
        for sh in self.shards:
            opt = sh.optimizer
            if all(p in opt.state and opt.state[p] for p in sh.params):
                continue
            lrs = [g["lr"] for g in opt.param_groups]
            for g in opt.param_groups:
                g["lr"] = 0.0
            saved = [hg.clone() for hg in sh.host_grad]
            for hg in sh.host_grad:
                hg.zero_()
            with torch.no_grad():
                opt.step()
            for hg, sv in zip(sh.host_grad, saved):
                hg.copy_(sv)
            for g, lr in zip(opt.param_groups, lrs):
                g["lr"] = lr
        self._pin_state()

    def _pin_state(self) -> None:
        """GPU-optimizer mode streams the state from the host: keep it in pinned memory."""
        import torch

        if not self.pin or self.optimizer_on != "gpu":
            return
        for sh in self.shards:
            for p in sh.params:
                s = sh.optimizer.state.get(p, {})
                for key, v in list(s.items()):
                    if _is_state_tensor(key, v) and not v.is_pinned():
                        h = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                        h.copy_(v)
                        s[key] = h

    def load_model_state_dict(self, sd: dict[str, Any]) -> None:
        import torch

        self.synchronize()
        with torch.no_grad():
            own = self.model.state_dict()
            missing = sorted(set(own) - set(sd))
            unexpected = sorted(set(sd) - set(own))
            if missing or unexpected:
                raise KeyError(f"model state mismatch: missing {missing[:5]}, unexpected "
                               f"{unexpected[:5]}")
            for key, t in own.items():
                if sd[key] is not t:
                    t.copy_(sd[key])

    def load_optim_state_dict(self, osd: dict[str, Any]) -> None:
        """Load an FQN-keyed optimizer state (ours, or any technique's canonical one)."""
        import torch

        self.synchronize()
        state = osd.get("state", {})
        groups = osd.get("param_groups") or []
        hyper = {key: v for key, v in groups[0].items() if key != "params"} if groups else {}
        for sh in self.shards:
            opt = sh.optimizer
            for pg in opt.param_groups:
                for key, v in hyper.items():
                    if key in pg and key not in ("fused", "foreach", "capturable",
                                                 "differentiable"):
                        pg[key] = v
            for fqn, p in zip(sh.fqns, sh.params):
                if fqn not in state:
                    continue
                s = {}
                cur = opt.state.get(p, {})
                for key, v in state[fqn].items():
                    if isinstance(v, torch.Tensor):
                        if cur.get(key) is v:  # filled in place (DCP load)
                            pass
                        elif key == "step":
                            v = v.detach().to(torch.float32).cpu().clone()
                        else:
                            h = torch.empty(v.shape, dtype=v.dtype, pin_memory=self.pin)
                            h.copy_(v)
                            v = h
                    s[key] = v
                opt.state[p] = s
        self._pin_state()

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, ckpt_dir: str, step: int, meta: dict[str, Any]) -> str:
        """Technique-neutral checkpoint (see saturn.techniques.checkpoint) of model + optimizer."""
        from saturn.techniques import checkpoint as ckpt

        return ckpt.save_state(ckpt_dir, step, self.model_state_dict(copy=False),
                               self.optim_state_dict(copy=False), meta)

    def load_checkpoint(self, path: str) -> dict[str, Any]:
        """Load any technique's canonical checkpoint in place; returns its meta (`step`...)."""
        from saturn.techniques import checkpoint as ckpt

        self.materialize_optim_state()
        model_sd = self.model_state_dict(copy=False)
        optim_sd = self.optim_state_dict(copy=False)
        meta = ckpt.load_state(path, model_sd, optim_sd)
        self.load_model_state_dict(model_sd)
        self.load_optim_state_dict(optim_sd)
        return meta

    def close(self) -> None:
        """Finish pending optimizer steps and stop the optimizer thread."""
        self.synchronize()
        if self._opt_pool is not None:
            self._opt_pool.shutdown(wait=True)
            self._opt_pool = None

    def release_kept(self) -> None:
        """Drop the shards `compute_only` steps kept on the device."""
        self._kept.clear()

    def memory_stats(self) -> dict[str, float]:
        import torch

        out = {"host_param_gb": sum(sh.nbytes for sh in self.shards) / 2**30,
               "shards": len(self.shards),
               "max_shard_gb": max(sh.nbytes for sh in self.shards) / 2**30}
        if self.cuda:
            out["peak_gpu_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out


def _is_state_tensor(key: str, v: Any) -> bool:
    import torch

    return isinstance(v, torch.Tensor) and key != "step" and v.dim() > 0


def _default_budget(device: Any) -> float:
    """Bytes the engine may plan for: 90% of the device memory left (a nominal 4 GiB on CPU)."""
    import torch

    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        frac = float(os.environ.get("SATURN_GPU_MEMORY_FRACTION", "1") or 1)
        return 0.9 * min(free, total * frac)
    return 4.0 * 2**30


# --------------------------------------------------------------------------------------------
# the technique
# --------------------------------------------------------------------------------------------

def engine_kwargs(job: Any, knobs: dict[str, Any]) -> dict[str, Any]:
    """SpillingEngine keyword arguments for a job and a knob setting (defaults filled in)."""
    k = {**DEFAULT_KNOBS, **(knobs or {})}
    return {"shard_layers": int(k["shard_layers"] or 0),
            "gpu_budget_gb": float(k["gpu_budget_gb"] or 0.0),
            "prefetch": int(k["prefetch"]), "optimizer_on": str(k["optimizer_on"]),
            "offload_activations": bool(k["offload_activations"]),
            "optimizer": job.optimizer.name, "optimizer_kwargs": job.optimizer.kwargs(),
            "precision": job.precision, "batch_hint": (job.batch_size, job.seq_len)}


def build(job: Any, knobs: dict[str, Any], ctx: Any) -> Any:
    """Worker side (training.worker_entry): the seeded model as a SpillingEngine on ctx.device."""
    import torch

    from saturn.techniques import training

    model = training.build_model(job)
    dataset = training.build_dataset(job, model)
    engine = SpillingEngine(model, ctx.device, **engine_kwargs(job, knobs))

    def step(x: Any, y: Any) -> Any:
        return torch.tensor(engine.train_step(x, y))

    return training.Trainable(step_fn=step, save=engine.save_checkpoint,
                              load=engine.load_checkpoint, device=ctx.device, dataset=dataset)


def _host_memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _n_layers(job: Any) -> Optional[int]:
    if not job.model.name:
        return None
    from saturn.zoo import model_config

    return int(model_config(job.model.name, job.model.overrides).n_layer) + 2  # + embedding, head


@knob_dataclass
class SpillingKnobs:
    """Typed knobs (defaults = DEFAULT_KNOBS; help: `Spilling.knobs`)."""

    shard_layers: int = knob(0, "layers per shard; 0 = sized from gpu_budget_gb", ge=0)
    gpu_budget_gb: float = knob(0.0, "GPU memory for shards when shard_layers is 0; 0 = 90% of free", ge=0)
    prefetch: int = knob(1, "shards copied in ahead on a side stream (0 = on demand)", ge=0, le=2)
    optimizer_on: Literal["cpu", "gpu"] = knob("cpu", "where the optimizer state lives and steps")
    offload_activations: bool = knob(False, "shard-boundary activations in pinned host memory")


@register
class Spilling(LaunchedTechnique):
    """Model spilling on one device: shards of layers stream through the GPU (module docstring)."""

    name = "spilling"
    builder = "saturn.techniques.spilling:build"
    knob_type = SpillingKnobs
    requires = ("torch; exactly 1 GPU (or CPU slot); host RAM for parameters, gradients and "
                "optimizer state (pinned)")
    knobs = {
        "shard_layers": "layers per shard; 0 = pack consecutive layers into shards sized from "
                        "gpu_budget_gb (prefetch+1 shards resident)",
        "gpu_budget_gb": "GPU memory the shards may plan for when shard_layers is 0; 0 = 90% of "
                         "the device memory free at start",
        "prefetch": "0 | 1 | 2: shards copied in ahead on a separate CUDA stream while the "
                    "current one computes (double buffering; 0 = copy on demand)",
        "optimizer_on": "cpu: optimizer state and step on the host, overlapped with the GPU "
                        "backward of the next shard | gpu: state streamed in with the shard, "
                        "step on the GPU, parameters and state copied back",
        "offload_activations": "keep shard-boundary activations in pinned host memory instead of "
                               "on the GPU (for long sequences / large batches)",
    }

    def feasible(self, job: Any, gpus: int) -> Feasibility:
        if gpus != 1:
            return Feasibility(False, f"spilling runs on exactly 1 device, not {gpus}")
        if job.precision == "fp16":
            return Feasibility(False, "fp16 needs loss scaling with a global overflow check, which "
                                      "per-shard optimizer steps cannot do; use bf16 or fp32")
        from saturn.zoo import param_count

        n = param_count(job.model)
        host = _host_memory_bytes()
        if n is not None and host is not None:
            state = {"sgd": 1, "adam": 2, "adamw": 2}.get(job.optimizer.name, 2)
            need = n * 4 * (2 + state)  # fp32 params + grads + optimizer state, all on the host
            if need > 0.8 * host:
                return Feasibility(False, f"needs ~{need / 2**30:.0f} GiB of host memory for "
                                          f"parameters, gradients and optimizer state; this host "
                                          f"has {host / 2**30:.0f} GiB")
        if _n_layers(job) == 1:
            return Feasibility(False, "a single-layer model cannot be spilled")
        return Feasibility(True)

    def candidates(self, job: Any, gpus: int) -> list[dict[str, Any]]:
        if gpus != 1:
            return []
        base = dict(DEFAULT_KNOBS)
        out = [base, {**base, "prefetch": 2}, {**base, "optimizer_on": "gpu"}]
        L = _n_layers(job)
        if L is not None and L > 4:
            out.append({**base, "shard_layers": max(1, L // 4)})
        out.append({**base, "shard_layers": 1, "offload_activations": True})  # least GPU memory
        return out
