"""Adam(W) with bf16 optimizer state over one shard's flat buffers (the `optimizer_state` knob).

Why a module of its own: on the host, spilling runs at the speed of its optimizer, and that step
is bound by host memory bandwidth, not by arithmetic (BENCHMARKS.md, spilling). torch's fused CPU
AdamW keeps exp_avg / exp_avg_sq in the parameter dtype (fp32; it rejects bf16 state next to fp32
parameters), and the engine adds two more passes around it (bf16 gradients up to fp32 before,
fp32 masters down to the bf16 wire copy after): about 40 bytes of host memory traffic per
parameter and step. `FlatAdamW` does the whole update in one pass over each flat buffer, reading
the bf16 gradient landing buffer directly, keeping both moments in bf16 and writing the bf16 wire
copy as it goes: about 20 bytes per parameter (fp32 master read + write, bf16 gradient, two bf16
moments read + write, bf16 wire write). The masters stay fp32.

Rounding: exp_avg_sq moves by (1 - beta2) = 0.1% of itself per step, below bf16's 0.4%
resolution, so plain round-to-nearest would only ever let it grow (a decay is rounded away). It
is rounded with a relative dither of one bf16 step before the cast (unbiased on average); the
dither's numbers are the low digits of the new master and momentum (deterministic, no RNG state,
no extra memory, float ops only so the loop stays vectorized). exp_avg moves by 10% per step and
is rounded to nearest.

The kernel is plain torch ops over chunks of the flat buffers; with `compiled=True` the chunk
function goes through `torch.compile` (inductor fuses it into one vectorized, OpenMP-parallel
loop: the one-pass traffic above); if compiling fails (no C++ compiler on the node) it falls back
to the eager ops, which are correct but make several passes per chunk.

Checkpoints stay technique-neutral: `state` holds per-parameter bf16 views, and the engine's
canonical optimizer state converts them to fp32 on save and back on load
(`host_optimizer.optim_state_dict` / `load_optim_state_dict`), so a job resumes under any technique.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

STATE_DTYPES = ("fp32", "bf16")
_COMPILED: dict[str, Any] = {}
_COMPILE_LOCK = threading.Lock()


@dataclass
class FlatSlot:
    """One flat fp32 master buffer with its gradient source and optional wire output.
    `index` are the positions of its parameters in the shard's parameter list, `numels` their
    sizes (the flat buffer is their concatenation)."""

    master: Any
    grad: Any
    wire: Optional[Any]
    index: list[int]
    numels: list[int]
    shapes: list[Any]


def adam_chunk(p: Any, g: Any, m: Any, v: Any, wire: Optional[Any], lr: Any, beta1: Any,
               beta2: Any, eps: Any, wd: Any, bc1: Any, bc2_sqrt: Any, decoupled: bool,
               dither: bool = True) -> None:
    """One Adam(W) update of a chunk, in place: `p` fp32 masters, `g` gradients (any float
    dtype), `m`/`v` moments (bf16: `dither` on), `wire` (optional) the bf16 copy of `p` to
    refresh. Same rule as torch.optim.AdamW / Adam (non-amsgrad, non-maximize). Float ops only,
    so inductor vectorizes the whole chunk into one loop."""
    gf = g.float()
    if not decoupled:
        gf = gf + wd * p
    mf = m.float() * beta1 + gf * (1 - beta1)
    vf = v.float() * beta2 + gf * gf * (1 - beta2)
    pn = p * (1 - lr * wd) if decoupled else p
    pn = pn - (lr / bc1) * mf / (vf.sqrt() / bc2_sqrt + eps)
    # dithered rounding of v: a relative dither of one bf16 step (2^-7) before the
    # round-to-nearest cast makes the rounding unbiased on average; its "random" numbers are
    # the low digits of the new master and momentum (deterministic, vectorized, no RNG state)
    if dither:
        x = pn.abs() * 1048576.0 + mf.abs() * 1073741824.0
        vf = vf * (1 + (x - x.floor() - 0.5) * 0.0078125)
    m.copy_(mf)
    v.copy_(vf)
    p.copy_(pn)
    if wire is not None:
        wire.copy_(pn)


_EAGER: Callable[..., Any] = adam_chunk


def _kernel(compiled: bool) -> Callable[..., Any]:
    if not compiled:
        return adam_chunk
    with _COMPILE_LOCK:
        fn = _COMPILED.get("adam")
        if fn is None:
            import torch

            fn = _COMPILED["adam"] = torch.compile(adam_chunk, dynamic=True)
    return fn  # type: ignore[no-any-return]


def warm_compiled_kernel() -> bool:
    """Compile the update now (once per process, on the calling thread) instead of inside the
    first training step on the optimizer thread; False when it cannot be compiled here (the
    optimizers then run the eager ops)."""
    import torch

    if _COMPILED.get("warm") is not None:
        return bool(_COMPILED["warm"])
    try:
        fn = _kernel(True)
        n = 4099
        p, g = torch.randn(n), torch.randn(n).bfloat16()
        m, v, w = (torch.zeros(n, dtype=torch.bfloat16) for _ in range(3))
        scal = [torch.tensor(x) for x in (1e-3, 0.9, 0.999, 1e-8, 0.01, 0.1, 0.03)]
        fn(p, g, m, v, w, *scal, True, True)
        fn(p[:n - 2], g[:n - 2].float(), m[:n - 2], v[:n - 2], None, *scal, True, True)
        ok = True
    except Exception:  # noqa: BLE001 -- no C++ compiler / inductor unavailable: eager ops
        ok = False
    _COMPILED["warm"] = ok
    return ok


class FlatAdamW:
    """Adam(W) over flat fp32 master buffers with moments in `state_dtype` (bf16).

    Looks like a torch optimizer where the engine needs it to (`param_groups` with the job's
    hyperparameters, `state[param]` = {"step", "exp_avg", "exp_avg_sq"} as views, `step()`);
    `fuses_wire` tells the host optimizer thread not to land/refresh around `step()` (done
    inside). `chunk` bounds the fp32 temporaries of one kernel call."""

    fuses_wire = True

    def __init__(self, params: list[Any], slots: list[FlatSlot], name: str,
                 kwargs: dict[str, Any], state_dtype: str = "bf16", compiled: bool = False,
                 chunk: int = 1 << 22, pin: bool = False):
        import torch

        if name not in ("adam", "adamw"):
            raise ValueError(f"optimizer_state {state_dtype} applies to adam and adamw, not {name!r}")
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"optimizer_state must be one of {STATE_DTYPES}, got {state_dtype!r}")
        kw = dict(kwargs)
        for flag in ("amsgrad", "maximize"):
            if kw.pop(flag, False):
                raise ValueError(f"optimizer_state {state_dtype} does not implement {flag}")
        for impl in ("fused", "foreach", "capturable", "differentiable"):
            kw.pop(impl, None)
        unknown = set(kw) - {"lr", "betas", "eps", "weight_decay"}
        if unknown:
            raise ValueError(f"optimizer_state {state_dtype}: unsupported optimizer settings "
                             f"{sorted(unknown)}")
        self.decoupled = name == "adamw"
        group: dict[str, Any] = {"lr": float(kw.get("lr", 1e-3)), "betas": tuple(kw.get("betas", (0.9, 0.999))),
                 "eps": float(kw.get("eps", 1e-8)),
                 "weight_decay": float(kw.get("weight_decay", 1e-2 if self.decoupled else 0.0)),
                 "amsgrad": False, "maximize": False, "foreach": None, "fused": None,
                 "capturable": False, "differentiable": False}
        self.defaults: dict[str, Any] = dict(group)
        self.param_groups: list[dict[str, Any]] = [{**group, "params": list(params)}]
        self.slots = slots
        self.compiled = compiled
        self.chunk = int(chunk)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[state_dtype]
        self.dither = dtype == torch.bfloat16
        self.state: dict[Any, dict[str, Any]] = {}
        self._moments = []
        self.step_count = 0
        for s in slots:
            if s.master.dtype != torch.float32:
                raise ValueError("bf16 optimizer state needs fp32 master parameters, got "
                                 f"{s.master.dtype}")
            pin_here = pin and s.master.device.type == "cpu"
            m = torch.zeros(s.master.numel(), dtype=dtype, device=s.master.device,
                            pin_memory=pin_here)
            v = torch.zeros_like(m)
            if pin_here:
                v = v.pin_memory()
            self._moments.append((m, v))
            off = 0
            for i, n, shape in zip(s.index, s.numels, s.shapes):
                p = params[i]
                self.state[p] = {"step": torch.zeros((), dtype=torch.float32),
                                 "exp_avg": m[off:off + n].view(shape),
                                 "exp_avg_sq": v[off:off + n].view(shape)}
                off += n

    def zero_grad(self, set_to_none: bool = True) -> None:
        for s in self.slots:
            s.grad.zero_()

    @property
    def step_tensors(self) -> list[Any]:
        return [st["step"] for st in self.state.values()]

    def step(self) -> None:
        """One update of every slot (gradients already in the slots' `grad` buffers)."""
        import torch

        g = self.param_groups[0]
        self.step_count += 1
        t = self.step_count
        b1, b2 = (float(x) for x in g["betas"])
        lr, eps, wd = float(g["lr"]), float(g["eps"]), float(g["weight_decay"])
        bc1, bc2_sqrt = 1 - b1 ** t, math.sqrt(1 - b2 ** t)
        fn: Callable[..., Any] = self._kernel()
        scal: list[Any]
        if fn is adam_chunk:
            scal = [lr, b1, b2, eps, wd, bc1, bc2_sqrt]
        else:  # 0-d tensors: one compiled graph for every step and learning rate
            scal = [torch.tensor(float(x), dtype=torch.float32)
                    for x in (lr, b1, b2, eps, wd, bc1, bc2_sqrt)]
        with torch.no_grad():
            for s, (m, v) in zip(self.slots, self._moments):
                n = s.master.numel()
                for a in range(0, n, self.chunk):
                    b = min(n, a + self.chunk)
                    w = s.wire[a:b] if s.wire is not None else None
                    if b - a < 64:  # a short tail: eager (no recompile for tiny sizes)
                        _EAGER(s.master[a:b], s.grad[a:b], m[a:b], v[a:b], w, *scal,
                               self.decoupled, self.dither)
                        continue
                    try:
                        fn(s.master[a:b], s.grad[a:b], m[a:b], v[a:b], w, *scal, self.decoupled,
                           self.dither)
                    except Exception:  # noqa: BLE001 -- compile failed (no compiler): eager
                        if fn is adam_chunk:
                            raise
                        self.compiled = False
                        fn = _EAGER
                        scal = [float(x) for x in scal]
                        fn(s.master[a:b], s.grad[a:b], m[a:b], v[a:b], w, *scal, self.decoupled,
                           self.dither)
            for st in self.state.values():
                st["step"].fill_(float(t))

    def _kernel(self) -> Callable[..., Any]:
        if not self.compiled:
            return adam_chunk
        try:
            return _kernel(True)
        except Exception:  # noqa: BLE001 -- torch.compile unavailable
            self.compiled = False
            return adam_chunk

    def load_param_state(self, p: Any, s: dict[str, Any]) -> None:
        """Fill the state of `p` from a canonical (fp32) per-parameter state, converting."""
        mine = self.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            if key in s:
                mine[key].copy_(s[key])
        if "step" in s:
            step = float(s["step"])
            mine["step"].fill_(step)
            self.step_count = int(step)


def state_nbytes(state_dtype: str) -> int:
    """Bytes of optimizer state per parameter for Adam(W) (two moments)."""
    return 2 * (2 if state_dtype == "bf16" else 4)
