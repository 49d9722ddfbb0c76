"""The host optimizer of model spilling: per-shard optimizer steps off the GPU's critical path.

Why a module of its own: with the optimizer state in host memory, the step is CPU work of the
same order as the whole GPU step (a 2.7B-parameter AdamW step is ~1.3 s with torch's for-loop
implementation on 16 cores, 0.14 s fused). Spilling hides it: each shard is stepped as soon as its
gradients land on the host, on one optimizer thread (shards step in the order they finish), while
the host thread goes on issuing the backward of the next shard; the next copy-in of a shard waits
only for *that* shard's step. The step itself is the fastest CPU Adam available: torch's
`fused=True` AdamW on CPU tensors (DeepSpeed's CPUAdam is used when asked for and importable;
`cpu_adam_speed()` measures both). bf16 jobs land bf16 gradients; the upcast to the fp32 `.grad`
and the downcast of the new masters into the bf16 wire copy also run on that thread.

Also here: the per-shard optimizers' state as one canonical FQN-keyed optimizer state dict (what
a technique-neutral checkpoint holds), and the GPU-optimizer mode's step (state streamed in with
the shard, stepped on the device, written back).
"""

from __future__ import annotations

import time
from typing import Any, Optional

CPU_ADAM_IMPLS = ("torch-fused", "torch", "deepspeed")


def optimizer_class(name: str) -> Any:
    import torch

    table = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if name not in table:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {sorted(table)}")
    return table[name]


def make_optimizer(name: str, kwargs: dict[str, Any], params: list[Any], on_host: bool,
                   impl: str = "torch-fused") -> Any:
    """The job's optimizer over one shard's master parameters. On the host, Adam(W) uses the
    fused CPU kernel (`impl`="torch-fused") or DeepSpeed's CPUAdam (`impl`="deepspeed", same
    update rule, its own C++ kernel); "torch" is the plain loop (bit-identical to an unfused
    reference optimizer). The state keys are torch's in every case (exp_avg, exp_avg_sq, step)."""
    if impl not in CPU_ADAM_IMPLS:
        raise ValueError(f"cpu_adam must be one of {CPU_ADAM_IMPLS}, got {impl!r}")
    cls = optimizer_class(name)
    kw = dict(kwargs)
    if on_host and name in ("adam", "adamw") and "fused" not in kw and "foreach" not in kw:
        if impl == "deepspeed":
            ds = _deepspeed_adam(name, kw, params)
            if ds is not None:
                return ds
        if impl in ("torch-fused", "deepspeed"):
            try:  # fused CPU Adam(W) (torch >= 2.4): several times faster than the loop
                return cls(params, fused=True, **kw)
            except (RuntimeError, TypeError, ValueError):
                pass
    return cls(params, **kw)


def _deepspeed_adam(name: str, kw: dict[str, Any], params: list[Any]) -> Optional[Any]:
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception:  # noqa: BLE001 -- not installed, or its C++ op cannot be built here
        return None
    try:
        return DeepSpeedCPUAdam(params, adamw_mode=(name == "adamw"), **kw)
    except Exception:  # noqa: BLE001 -- its JIT build failed: the caller falls back to torch
        return None


def cpu_adam_speed(numel: int = 20_000_000, steps: int = 5) -> dict[str, Any]:
    """Measured seconds per AdamW step over `numel` fp32 parameters on this host, per impl
    (a string saying why where one is unavailable)."""
    import torch

    out: dict[str, Any] = {}
    for impl in CPU_ADAM_IMPLS:
        p = torch.zeros(numel, requires_grad=True)
        p.grad = torch.randn(numel)
        opt = make_optimizer("adamw", {"lr": 1e-3}, [p], True, impl)
        kind = type(opt).__name__ + ("(fused)" if opt.defaults.get("fused") else "")
        if impl == "deepspeed" and "DeepSpeed" not in kind:
            out[impl] = "unavailable (deepspeed CPUAdam not importable/buildable here)"
            continue
        opt.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        out[impl] = {"s_per_step": (time.perf_counter() - t0) / steps, "class": kind}
    return out


class HostOptimizer:
    """Runs shard steps on one background thread (or inline when `asynchronous` is False)."""

    def __init__(self, shards: list[Any], streams: Any, asynchronous: bool = True):
        self.shards = shards
        self.streams = streams
        self.asynchronous = asynchronous
        self._pool: Any = None
        self._in_flight: dict[int, Any] = {}
        self.timings = {"grad_wait_s": 0.0, "cpu_optimizer_s": 0.0}  # host-side, cumulative

    def submit(self, k: int, grads_landed: Any) -> None:
        """Step shard k once the event `grads_landed` (its D2H copy) has completed."""
        if not self.asynchronous:
            self._step(k, grads_landed)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            import torch

            # OpenMP's thread count is a per-thread setting: the optimizer thread uses the same
            # number of cores as the thread that built the engine (torch.set_num_threads there).
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="spilling-optimizer",
                                            initializer=torch.set_num_threads,
                                            initargs=(torch.get_num_threads(),))
        self._in_flight[k] = self._pool.submit(self._step, k, grads_landed)

    def pending(self, k: int) -> bool:
        """Whether shard k's step is still running (its host copy is not final yet)."""
        fut = self._in_flight.get(k)
        return fut is not None and not fut.done()

    def wait(self, k: Optional[int] = None) -> None:
        """Wait for shard k's (None: every) step in flight; re-raises its errors."""
        keys = list(self._in_flight) if k is None else [k]
        for key in keys:
            fut = self._in_flight.pop(key, None)
            if fut is not None:
                fut.result()

    def _step(self, k: int, grads_landed: Any) -> None:
        t0 = time.perf_counter()
        self.streams.host_wait(grads_landed)
        t1 = time.perf_counter()
        sh = self.shards[k]
        if sh.pool is not None:  # lean: gradients in a reusable landing buffer (pool.py)
            try:
                sh.land_grads()
                sh.optimizer.step()
            finally:
                sh.done_grads()
        elif getattr(sh.optimizer, "fuses_wire", False):  # one pass reads/writes the wire copies
            sh.optimizer.step()
        else:
            sh.land_grads()
            sh.optimizer.step()
            sh.refresh_wire()
        self.timings["grad_wait_s"] += t1 - t0
        self.timings["cpu_optimizer_s"] += time.perf_counter() - t1

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def gpu_step(transfers: Any, k: int, res: Any, param_grads: list[Any]) -> None:
    """GPU-optimizer mode: step shard k on the device (state streamed in with the shard, the
    autograd gradients used as they are), then write parameters and state back to the host."""
    import torch

    sh = transfers.shards[k]
    opt = sh.optimizer
    host_state = [opt.state.get(p) for p in sh.params]
    for i, p in enumerate(sh.params):
        p.grad = None
        p.data = res.views[i]
        g = param_grads[i]
        p.grad = g if g is not None else torch.zeros_like(res.views[i])
        if res.state is not None:
            opt.state[p] = res.state[i]
    opt.step()
    dev_state = [opt.state.get(p, {}) for p in sh.params]
    new_host_state = transfers.write_back(k, res, dev_state, host_state)
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


# --------------------------------------------------------------------------------------------
# the per-shard optimizers as one canonical optimizer state
# --------------------------------------------------------------------------------------------

_IMPL_KEYS = ("fused", "foreach", "capturable", "differentiable")


def optim_state_dict(shards: list[Any], copy: bool = True) -> dict[str, Any]:
    """Optimizer state keyed by parameter FQN: {"state": {fqn: {...}}, "param_groups": [...]}
    (the layout of torch.distributed.checkpoint's get_optimizer_state_dict). `copy=False`
    gives the live state tensors (to save, or to fill in place on load)."""
    import torch

    def canonical(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        if v.is_floating_point() and v.dtype != torch.float32:
            # bf16 moments (optimizer_state bf16): saved as fp32, the technique-neutral form
            return v.detach().to("cpu", torch.float32, copy=True)
        return v.detach().to("cpu", copy=True) if copy else v

    state: dict[str, dict[str, Any]] = {}
    for sh in shards:
        for fqn, p in zip(sh.fqns, sh.params):
            s = sh.optimizer.state.get(p)
            if s:
                state[fqn] = {key: canonical(v) for key, v in s.items()}
    group = {key: v for key, v in shards[0].optimizer.param_groups[0].items() if key != "params"}
    # implementation choices of *this* engine (fused CPU Adam) are not the job's settings
    group.update({k: None for k in ("fused", "foreach") if k in group})
    group["params"] = [f for sh in shards for f in sh.fqns]
    return {"state": state, "param_groups": [group]}


def materialize_optim_state(shards: list[Any]) -> None:
    """Create every shard's optimizer state (as a zero-lr step on zero gradients would), so
    that a checkpoint can be loaded into it in place."""
    import torch

    for sh in shards:
        opt = sh.optimizer
        if all(p in opt.state and opt.state[p] for p in sh.params):
            continue
        lrs = [g["lr"] for g in opt.param_groups]
        for g in opt.param_groups:
            g["lr"] = 0.0
        kept = [hg for hg in sh.host_grad if hg is not None]  # lean shards have none
        saved = [hg.clone() for hg in kept]
        for hg in kept:
            hg.zero_()
        no_grad = [p for p in sh.params if p.grad is None]  # split-optimizer device shards
        for p in no_grad:
            p.grad = torch.zeros_like(p)
        with torch.no_grad():
            opt.step()
        for p in no_grad:
            p.grad = None
        for hg, sv in zip(kept, saved):
            hg.copy_(sv)
        for g, lr in zip(opt.param_groups, lrs):
            g["lr"] = lr


def pin_state(shards: list[Any]) -> None:
    """GPU-optimizer mode streams the state from the host: keep it in pinned memory."""
    import torch

    from saturn.techniques.spilling.transfer import is_state_tensor

    for sh in shards:
        for p in sh.params:
            s = sh.optimizer.state.get(p, {})
            for key, v in list(s.items()):
                if is_state_tensor(key, v) and not v.is_pinned():
                    h = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                    h.copy_(v)
                    s[key] = h


def load_optim_state_dict(shards: list[Any], osd: dict[str, Any], pin: bool) -> None:
    """Load an FQN-keyed optimizer state (ours, or any technique's canonical one)."""
    import torch

    state = osd.get("state", {})
    groups = osd.get("param_groups") or []
    hyper = {key: v for key, v in groups[0].items() if key != "params"} if groups else {}
    for sh in shards:
        opt = sh.optimizer
        for pg in opt.param_groups:
            for key, v in hyper.items():
                if key in pg and key not in _IMPL_KEYS:
                    pg[key] = v
        for fqn, p in zip(sh.fqns, sh.params):
            if fqn not in state:
                continue
            if hasattr(opt, "load_param_state"):  # bf16 state: converted into its own buffers
                opt.load_param_state(p, state[fqn])
                continue
            s = {}
            cur = opt.state.get(p, {})
            for key, v in state[fqn].items():
                if isinstance(v, torch.Tensor):
                    if cur.get(key) is v:  # filled in place (DCP load)
                        pass
                    elif key == "step":
                        v = v.detach().to(torch.float32).cpu().clone()
                    else:  # next to its parameter (a split-optimizer shard's is on the GPU)
                        on_cpu = p.device.type == "cpu"
                        h = torch.empty(v.shape, dtype=v.dtype, device=p.device,
                                        pin_memory=pin and on_cpu)
                        h.copy_(v)
                        v = h
                s[key] = v
            opt.state[p] = s
