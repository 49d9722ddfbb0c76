"""The spilling engine: one model's training step as a sequence of shard tasks.

Why a module of its own: this is the schedule of one step and nothing else (shard planning,
copies and optimizer steps live in `shards`, `transfer` and `host_optimizer`). A step with S
shards is the task list

    fwd 0, fwd 1, ..., fwd S-2, head S-1, bwd S-2, ..., bwd 0

* `fwd k` runs shard k under `no_grad`, keeping only its output (the next shard's *boundary
  activation*, on the device or offloaded to pinned host memory) and the RNG state it started
  from;
* `head` runs the last shard forward + loss + backward at once (no recomputation);
* `bwd k` recomputes shard k's forward from its saved boundary input with autograd on (dropout
  replayed from the saved RNG state: activation checkpointing at shard granularity), and
  `autograd.grad` gives the gradient for the shard before it and the parameter gradients, which
  go to the host and are stepped there per shard (`host_optimizer`).

Tasks are explicit (`begin_step` / `run_task` / `finish_step`) so that SHARP (`saturn.sharp`)
can interleave the tasks of many models on a pool of workers; `train_step` runs them in order.
A task changes the step's state only when it *commits* (its last statement), so a task that dies
half-way can be run again, on any worker, with the same result.

Double buffering: the task list is known in advance, so while task i computes, the shards of
tasks i+1..i+prefetch are already being copied in; a shard is kept (not evicted and copied
again) when it is among the next prefetch+1 tasks, which e.g. keeps shard S-2 across the head
instead of copying it twice. With the CUDA caching allocator, evicting = dropping references.

Checkpoints are technique-neutral (see `saturn.training.checkpoint`): the master module *is*
the plain `SequentialModel` (its parameters are views into the flat host buffers), so its state
dict has the canonical `layers.N....` names, and the per-shard optimizer states are merged into
one state keyed by parameter FQN.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, Sequence

from saturn.techniques.spilling import host_optimizer as hopt
from saturn.techniques.spilling import shards as shp
from saturn.techniques.spilling import split as spl
from saturn.techniques.spilling.pool import ShardPool, lean_shard_cap
from saturn.techniques.spilling.states import FlatAdamW, FlatSlot, warm_compiled_kernel
from saturn.techniques.spilling.step_state import StepState
from saturn.techniques.spilling.transfer import Resident, Transfers


class SpillingEngine:
    """Trains a `SequentialModel` whose master copy stays in host memory (see the package doc).

    `model` must be on the CPU; its parameters are re-pointed into flat host buffers (so the
    caller's module *is* the master copy, and `model.state_dict()` is the canonical state).
    Shards: `shards` ([start, end) layer ranges), else `shard_layers` per shard, else packed for
    `gpu_budget_gb` (default: 90% of the free device memory) using an activation estimate for
    `batch_hint` = (batch_size, seq_len) when given. `wire_dtype`: the dtype parameters and
    gradients cross the link in ("fp32"/"bf16"; default: bf16 for bf16 jobs on CUDA with the
    optimizer on the host, else the master dtype). `cpu_adam`: see `host_optimizer`.
    `optimizer_state` "bf16": Adam(W) moments in bf16 with fp32 masters, one fused pass per
    flat buffer (`states`). `gpu_state_fraction` > 0: that share of the GPU budget holds the
    first shards with their masters and state, stepped on the GPU (`split`).
    `compile_state_kernel` (bf16 state on the host): torch.compile the update (default: on CUDA
    engines, or env SATURN_SPILLING_COMPILE=0/1).
    """

    def __init__(self, model: Any, device: Any = "cpu", *, shard_layers: int = 0,
                 gpu_budget_gb: float = 0.0, shards: Optional[Sequence[tuple[int, int]]] = None,
                 optimizer: str = "adamw", optimizer_kwargs: Optional[dict[str, Any]] = None,
                 optimizer_on: str = "cpu", prefetch: int = 1, precision: str = "fp32",
                 offload_activations: bool = False, pin_memory: Optional[bool] = None,
                 cpu_fused_optimizer: bool = True, async_optimizer: bool = True,
                 batch_hint: Optional[tuple[int, int]] = None, wire_dtype: Optional[str] = None,
                 cpu_adam: str = "torch-fused", optimizer_state: str = "fp32",
                 gpu_state_fraction: float = 0.0, compile_state_kernel: Optional[bool] = None):
        import torch

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
        if optimizer_state not in ("fp32", "bf16"):
            raise ValueError(f"optimizer_state must be 'fp32' or 'bf16', got {optimizer_state!r}")
        if optimizer_state == "bf16" and optimizer_on != "cpu":
            raise ValueError("optimizer_state bf16 needs optimizer_on cpu (with optimizer_on gpu "
                             "the state streams in fp32)")
        if optimizer_state == "bf16" and optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer_state bf16 applies to adam and adamw, not {optimizer!r}")
        if not 0.0 <= gpu_state_fraction < 1.0:
            raise ValueError(f"gpu_state_fraction must be in [0, 1), got {gpu_state_fraction!r}")
        if gpu_state_fraction and optimizer_on != "cpu":
            raise ValueError("gpu_state_fraction splits the host optimizer: it needs optimizer_on "
                             "cpu (with optimizer_on gpu every shard already steps on the GPU)")
        self.model = model
        self.optimizer_on = optimizer_on
        self.optimizer_state = optimizer_state
        self.prefetch = prefetch
        self.precision = precision
        self.offload_activations = offload_activations
        self.cuda = self.device.type == "cuda"
        self.pin = self.cuda if pin_memory is None else pin_memory
        self.autocast_dtype = ({"bf16": torch.bfloat16}.get(precision) if self.cuda else None)
        self.wire_dtype = shp.wire_dtype_for(wire_dtype, self.autocast_dtype, optimizer_on)
        if self.wire_dtype is not None and self.autocast_dtype is None:
            self.autocast_dtype = self.wire_dtype  # bf16 asked for explicitly (e.g. on the CPU)
        self.uses_rng = uses_rng(model)

        layers = list(model.layers)
        budget = gpu_budget_gb * 2**30 if gpu_budget_gb else shp.default_budget(self.device)
        stream_budget = budget * (1.0 - gpu_state_fraction)  # the rest holds device shards
        if shards is None:
            if shard_layers and shard_layers > 0:
                shards = shp.uniform_shards(len(layers), int(shard_layers))
            else:
                wire = torch.empty((), dtype=self.wire_dtype or torch.float32).element_size()
                sizes = [sum(p.numel() * (wire if p.dtype == torch.float32 else p.element_size())
                             for p in layer.parameters()) for layer in layers]
                acts, boundary = (shp.activation_estimate(model, *batch_hint, precision)
                                  if batch_hint else (None, 0))

                def plan(a: int, b: int) -> list[tuple[int, int]]:
                    return shp.budget_shards(sizes[a:b], stream_budget, prefetch, optimizer_on,
                                             acts[a:b] if acts else None, boundary)

                # the streamed part must still hold its largest layer (the head's logits can
                # be GBs): the device prefix gets at most what is left over (GPU run 2026-12-04:
                # 40% of a 7 GB cap for the prefix left too little for the head, OOM)
                per = (2 + (2 if optimizer_on == "gpu" else 0)) * (prefetch + 1)
                need = max((b * per + (acts[i] if acts else 0)) for i, b in enumerate(sizes))
                need = 1.1 * (need + boundary * len(sizes)) / (0.85 if acts else 0.65)
                reserve = max(0.0, min(budget * gpu_state_fraction, budget - need))
                stream_budget = budget - reserve
                shards = (spl.plan_with_device_prefix(
                    [sum(p.numel() for p in layer.parameters()) for layer in layers],
                    reserve, optimizer_state, plan)
                    if gpu_state_fraction else plan(0, len(layers)))
                if optimizer_on == "cpu":  # lean host buffers are sized for the largest shard
                    shards = lean_shard_cap(shards, layers)
        self.ranges = shp.check_ranges(shards, len(layers))
        shp.check_no_cross_shard_ties(layers)
        lean = optimizer_on == "cpu"  # only masters + optimizer state at model size (pool.py)
        self.shards = shp.build_shards(layers, self.ranges, self.pin, self.wire_dtype, lean)
        kw = dict(optimizer_kwargs or {})
        self.device_shards: list[int] = (spl.choose_device_shards(
            [sum(p.numel() for p in sh.params) for sh in self.shards],
            budget - stream_budget, optimizer_state) if gpu_state_fraction else [])
        if compile_state_kernel is None:
            from saturn.env import spilling_compile

            chosen = spilling_compile()
            compile_state_kernel = self.cuda if chosen is None else chosen
        if optimizer_state == "bf16" and compile_state_kernel:
            compile_state_kernel = warm_compiled_kernel()  # at start-up, not in the first step
        impl = cpu_adam if cpu_fused_optimizer else "torch"
        for k, sh in enumerate(self.shards):
            if k in self.device_shards:
                continue  # its optimizer is built on the device below
            if optimizer_state == "bf16":  # lean: gradient source set per step (land_grads)
                slots = [FlatSlot(h, wg if wg is not None else hg, wf, g.index, g.numels, g.shapes)
                         for g, h, hg, wf, wg in zip(sh.groups, sh.host_flat, sh.host_grad,
                                                     sh.wire_flat, sh.wire_grad)]
                sh.optimizer = FlatAdamW(sh.params, slots, optimizer, kw, "bf16",
                                         compiled=bool(compile_state_kernel), pin=self.pin)
            else:
                sh.optimizer = hopt.make_optimizer(optimizer, kw, sh.params,
                                                   optimizer_on == "cpu", impl)
        self._on_device: dict[int, Resident] = {
            k: spl.make_device_shard(self.shards[k], self.device, optimizer, kw, optimizer_state,
                                     hopt.make_optimizer) for k in self.device_shards}
        streamed = [sh for k, sh in enumerate(self.shards) if k not in self.device_shards]
        self.pool = (ShardPool(streamed, prefetch, self.pin, scratch=optimizer_state != "bf16")
                     if lean and streamed else None)  # the bf16-state kernel reads bf16 gradients
        for sh in streamed:
            sh.pool = self.pool
        self.transfers = Transfers(self.shards, self.device, self.pin)
        self.streams = self.transfers.streams
        self.host_optimizer = hopt.HostOptimizer(self.shards, self.streams, async_optimizer)
        self.timings = self.host_optimizer.timings
        self._resident: dict[int, Resident] = {}
        self._kept: dict[int, Resident] = {}  # compute_only: every shard stays on the device
        self.step_count = 0

    # ---------------------------------------------------------------- residency
    def _acquire(self, k: int, need_state: bool, store: Optional[dict] = None) -> Resident:
        if k in self._on_device:
            return self._on_device[k]  # a split-optimizer shard: always on the device
        store = self._resident if store is None else store
        res = store.get(k)
        if res is None:
            self.host_optimizer.wait(k)  # the host copy is being updated by the optimizer thread
            res = store[k] = self.transfers.fetch(k)
        if store is self._kept:
            return res
        if need_state and self.optimizer_on == "gpu" and not res.state_fetched:
            self.transfers.fetch_state(k, res)
            res.state_fetched = True
        return res

    def prefetch_task(self, state: Optional[StepState]) -> None:
        """Start copying in the shard of `state`'s next task (the first task of a new step when
        `state` is None): SHARP calls this for the model a worker is predicted to serve next."""
        k, kind = (state.tasks[state.next] if state is not None and not state.done
                   else (0, "fwd"))
        if self.host_optimizer.pending(k):
            return  # never block the caller on a host step: the task's own fetch will wait
        self._acquire(k, need_state=kind != "fwd",
                      store=self._kept if state is not None and state.compute_only else None)

    def release(self) -> None:
        """Drop every shard resident on the device (a model leaving a SHARP worker)."""
        self._resident.clear()

    def release_kept(self) -> None:
        """Drop the shards `compute_only` steps kept on the device."""
        self._kept.clear()

    # ---------------------------------------------------------------- compute helpers
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

    def rng_state(self) -> tuple[Any, Any]:
        import torch

        cpu = torch.get_rng_state()
        gpu = torch.cuda.get_rng_state(self.device) if self.cuda else None
        return cpu, gpu

    def set_rng_state(self, state: tuple[Any, Any]) -> None:
        import torch

        torch.set_rng_state(state[0])
        if self.cuda and state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    @contextlib.contextmanager
    def _replay_rng(self, state: tuple[Any, Any]) -> Any:
        saved = self.rng_state()
        self.set_rng_state(state)
        try:
            yield
        finally:
            self.set_rng_state(saved)

    def tasks(self) -> list[tuple[int, str]]:
        S = len(self.shards)
        return ([(k, "fwd") for k in range(S - 1)] + [(S - 1, "head")]
                + [(k, "bwd") for k in range(S - 2, -1, -1)])

    # ---------------------------------------------------------------- one step as tasks
    def begin_step(self, inputs: Any, targets: Any, compute_only: bool = False) -> StepState:
        S = len(self.shards)
        state = StepState(targets=targets, boundary=[None] * S, on_host=[None] * S,
                          rng=[None] * S, compute_only=compute_only, tasks=self.tasks())
        state.boundary[0] = inputs
        return state

    def run_task(self, state: StepState, before_commit: Optional[Callable[[], None]] = None
                 ) -> bool:
        """Run `state`'s next task; returns True when the step is complete. `before_commit`
        (fault injection in tests) runs after the compute, before the task's effects land."""
        import torch

        self.model.train()
        i, sched, S = state.next, state.tasks, len(self.shards)
        k, kind = sched[i]
        store = self._kept if state.compute_only else self._resident
        for j in range(i, min(len(sched), i + self.prefetch + 1)):  # double buffering
            kj, kindj = sched[j]
            self._acquire(kj, need_state=kindj != "fwd", store=store)
            if (kindj == "bwd" and self.offload_activations and state.boundary[kj] is None
                    and state.on_host[kj] is not None):
                state.boundary[kj] = self.transfers.bring_back(state.on_host[kj])
        res = self._on_device.get(k) or store[k]
        self.transfers.use(res)
        x = state.boundary[k]
        if isinstance(x, tuple):  # (tensor, event) brought back from the host
            self.streams.wait(self.streams.compute, x[1])
            self.streams.use_on([x[0]], self.streams.compute)
            x = x[0]
        if x.device != self.device:
            x = x.to(self.device, non_blocking=True)

        if kind == "fwd":
            rng = self.rng_state() if self.uses_rng else None
            with torch.no_grad():
                out = self._run(k, res.views, res.buffers, x)
            offloaded = (self.transfers.offload(out)
                         if self.offload_activations and k + 1 < S - 1 else None)
            if before_commit:
                before_commit()
            state.rng[k] = rng
            state.boundary[k + 1] = out
            if state.on_host[k] is not None:
                state.boundary[k] = None  # offloaded: the device copy is done with until bwd
            state.on_host[k + 1] = offloaded
        else:
            needs_input_grad = k > 0 and x.is_floating_point()
            x_leaf = x.detach().requires_grad_(needs_input_grad)
            leaves = [v.detach().requires_grad_(p.requires_grad)
                      for v, p in zip(res.views, self.shards[k].params)]
            replay = (self._replay_rng(state.rng[k]) if kind == "bwd" and self.uses_rng
                      else contextlib.nullcontext())
            with torch.enable_grad(), replay:
                out = self._run(k, leaves, res.buffers, x_leaf)
                if kind == "head":
                    loss = self.model.loss(out, state.targets.to(self.device, non_blocking=True))
                    root, root_grad = loss, None
                else:
                    root, root_grad = out, state.grad_out
            wrt = ([x_leaf] if needs_input_grad else []) + [v for v in leaves if v.requires_grad]
            grads = list(torch.autograd.grad(root, wrt, root_grad, allow_unused=True))
            grad_in = grads.pop(0) if needs_input_grad else None
            pgrads = iter(grads)
            param_grads = [next(pgrads) if v.requires_grad else None for v in leaves]
            del out, x_leaf, leaves, grads
            if before_commit:
                before_commit()
            if kind == "head":
                state.loss = loss.detach()
            del root
            if not state.compute_only:
                if k in self._on_device:
                    spl.device_step(self.shards[k], param_grads)
                elif self.optimizer_on == "gpu":
                    hopt.gpu_step(self.transfers, k, res, param_grads)
                else:
                    self.host_optimizer.submit(k, self.transfers.grads_out(k, param_grads))
            state.grad_out = grad_in
            state.boundary[k] = None
            state.on_host[k] = None
        # evict unless one of the next prefetch+1 tasks uses it (those will be resident anyway)
        soon = {sched[j][0] for j in range(i + 1, min(len(sched), i + self.prefetch + 2))}
        if k not in soon and not state.compute_only:
            self._resident.pop(k, None)
        state.next = i + 1
        return state.done

    def finish_step(self, state: StepState) -> float:
        if not state.compute_only:
            self.step_count += 1
        return float(state.loss)

    def train_step(self, inputs: Any, targets: Any, compute_only: bool = False) -> float:
        """One optimizer step on one batch; returns the loss.

        `compute_only` (benchmarks): the same shards and tasks with every shard kept resident
        after its first copy in, and no gradient copy-out or optimizer step: the compute part of
        a spilling step. The parameters do not change."""
        state = self.begin_step(inputs.to(self.device, non_blocking=True), targets,
                                compute_only)
        while not self.run_task(state):
            pass
        return self.finish_step(state)

    # ---------------------------------------------------------------- state & checkpoints
    def synchronize(self) -> None:
        import torch

        self.host_optimizer.wait()
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def model_state_dict(self, copy: bool = True) -> dict[str, Any]:
        """Canonical model state (FQN -> tensor) of the plain SequentialModel. `copy=False` gives
        the master tensors themselves (views into the flat host buffers: what a checkpoint
        save/load reads/fills in place, without doubling host memory)."""
        self.synchronize()
        sd = self.model.state_dict()
        return {k: v.detach().clone() for k, v in sd.items()} if copy else sd

    def optim_state_dict(self, copy: bool = True) -> dict[str, Any]:
        self.synchronize()
        return hopt.optim_state_dict(self.shards, copy)

    def materialize_optim_state(self) -> None:
        self.synchronize()
        hopt.materialize_optim_state(self.shards)
        self._pin_state()

    def _pin_state(self) -> None:
        if self.pin and self.optimizer_on == "gpu":
            hopt.pin_state(self.shards)

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
            for sh in self.shards:
                sh.refresh_wire()

    def load_optim_state_dict(self, osd: dict[str, Any]) -> None:
        self.synchronize()
        hopt.load_optim_state_dict(self.shards, osd, self.pin)
        self._pin_state()

    def save_checkpoint(self, ckpt_dir: str, step: int, meta: dict[str, Any]) -> str:
        """Technique-neutral checkpoint (see saturn.training.checkpoint) of model + optimizer."""
        from saturn.training import checkpoint as ckpt

        return ckpt.save_state(ckpt_dir, step, self.model_state_dict(copy=False),
                               self.optim_state_dict(copy=False), meta)

    def load_checkpoint(self, path: str) -> dict[str, Any]:
        """Load any technique's canonical checkpoint in place; returns its meta (`step`...)."""
        from saturn.training import checkpoint as ckpt

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
        self.host_optimizer.close()

    def memory_stats(self) -> dict[str, float]:
        import torch

        out = {"host_param_gb": sum(sh.nbytes for sh in self.shards) / 2**30,
               "shards": len(self.shards),
               "max_shard_gb": max(sh.nbytes for sh in self.shards) / 2**30,
               "wire_gb_per_copy": sum(sh.wire_bytes for sh in self.shards) / 2**30,
               "gb_in": self.transfers.bytes_in / 2**30, "gb_out": self.transfers.bytes_out / 2**30,
               "shard_copies_in": self.transfers.copies_in}
        if self.cuda:
            out["peak_gpu_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out


def uses_rng(model: Any) -> bool:
    """Whether training draws random numbers (dropout): only then are RNG states saved and
    replayed, which also keeps models without randomness off the process-global generator."""
    from torch import nn

    cfg = getattr(model, "config", None)
    return bool(getattr(cfg, "dropout", 0.0)) or any(
        isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
