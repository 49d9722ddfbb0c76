"""The prior: estimated step time and peak memory of an option nobody has measured yet.

Why: measuring every (model, technique, GPU count, knobs) costs more than many runs it serves
(issue 24), and a job must never be left unplanned because a trial was skipped. The prior turns a
model's FLOPs and bytes (parameters, activations, optimizer state, communication volume) into
seconds with the machine's rates (matmul throughput per dtype, device memory, host link,
interconnect, host optimizer throughput; `saturn.prior.machine` measures them once per
machine) and predicts peak memory, which decides feasibility. Every measured row calibrates it: a
multiplicative correction per (technique, device kind), the median of measured / estimated.

The numbers are *estimates* (provenance `estimated`): the planner may use them, the profiler uses
them to order trials, and the executor measures an estimated option on its first attempt.
Pure Python (the planner side never imports torch); shapes come from `saturn.prior.shapes`.

The structural constants below (bytes per activation, kernels per layer, hook launches) are the
usual transformer accounting (Korthikanti et al. 2022 for activations, 6 x params FLOPs per token)
and rough counts of what each technique does per step; the calibration absorbs what they miss.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Optional

GB = 1e9
ACT_BYTES_PER_TOKEN_LAYER_PER_D = 24  # bf16 activations kept for backward per token per layer / d
# (34 in Korthikanti et al. with dropout masks and materialized attention; no dropout, SDPA here)
ELEMWISE_BYTES_PER_TOKEN_LAYER_PER_D = 60  # norm/gelu/residual/softmax traffic, fwd + bwd
LOGIT_BYTES = 10  # per token per class: bf16 logits, fp32 loss input, fp32 grad
ADAM_BYTES_PER_PARAM = 28  # fused AdamW: read p, g, m, v (16) + write p, m, v (12), fp32
KERNELS_PER_LAYER = 90  # launches per block, fwd + bwd
HOOK_LAUNCHES = {"zero3_tensor": 30}  # host work per parameter tensor and pass (DeepSpeed ZeRO-3 hooks)
# FSDP2 copies every parameter in and out of its flat all-gather / reduce-scatter buffers (with
# dtype casts) per pass, in many small kernels: counted as this many bytes of device memory
# traffic per parameter and pass (passes: forward gather, backward re-gather when resharding,
# gradient reduce-scatter; without resharding the gathered bf16 copy is reused: one pass)
FSDP_BYTES_PER_PARAM_PASS = 100
COMPILE_ELEMWISE = 0.5  # torch.compile fuses elementwise ops: about half the traffic remains
COMPILE_LAUNCH_S = 12.0  # extra start-up of compile=True (11.5 s measured, gpt2-medium on an H200,
# BENCHMARKS.md techniques section): paid by every launch, so it must be earned by the steps
USABLE_MEMORY = 0.95  # fraction of device memory a step may use
COMM_EXPOSED_MIN = 0.15  # share of a collective never hidden behind compute
SPILL_LINK_EXPOSED_MIN = 0.25  # share of spilling's host-link traffic never hidden (stream waits,
# copies contending with compute for device memory)
MODEL_MATMUL_EFFICIENCY = 0.75  # share of the probed GEMM rate a training step reaches (shapes,
# transposed backward GEMMs, attention kernels); the calibration corrects it per technique


@dataclass(frozen=True)
class MachineRates:
    """What one device of a machine does per second (probed, or a datasheet when not here).

    `matmul_tflops[dtype][n]`: achieved TFLOP/s of an (8192 x n) @ (n x n) product;
    `interconnect_source` says whether the GPU-to-GPU figure was measured or estimated (one GPU)."""

    device: str  # 'H200', 'cpu', ...
    matmul_tflops: dict[str, dict[int, float]]
    mem_gbps: float  # device memory bandwidth (copy)
    h2d_gbps: float  # pinned host <-> device link
    interconnect_gbps: float  # GPU <-> GPU (bus bandwidth of a collective)
    host_adam_params_per_s: float  # torch AdamW on the host (spilling / CPU offload)
    launch_us: float  # one small kernel launch from Python
    interconnect_source: str = "measured"
    source: str = "probed"  # 'probed on HOST at TIME' or 'datasheet: ...'

    def matmul(self, dtype: str, n: int) -> float:
        """TFLOP/s at inner size n, interpolated in log(n) between probed sizes."""
        table = self.matmul_tflops.get(dtype) or self.matmul_tflops.get("fp32") or {}
        if not table:
            return 1.0
        sizes = sorted(table)
        if n <= sizes[0]:
            return table[sizes[0]] * max(n / sizes[0], 0.05)
        if n >= sizes[-1]:
            return table[sizes[-1]]
        for a, b in zip(sizes, sizes[1:]):
            if a <= n <= b:
                w = math.log(n / a) / math.log(b / a)
                return table[a] * (1 - w) + table[b] * w
        return table[sizes[-1]]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["matmul_tflops"] = {k: {str(n): v for n, v in t.items()} for k, t in self.matmul_tflops.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MachineRates":
        d = dict(d)
        d["matmul_tflops"] = {k: {int(n): float(v) for n, v in t.items()}
                              for k, t in dict(d["matmul_tflops"]).items()}
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# Datasheet figures for GPUs this machine cannot probe (planning on a laptop for a cluster):
# (dense bf16 TFLOP/s, fp32 TFLOP/s, HBM GB/s, host link GB/s, NVLink bus GB/s). Achievable rates
# are taken as a fraction of peak (DATASHEET_EFFICIENCY), smaller for small matmuls.
DATASHEET = {
    "h200": (989.0, 67.0, 4800.0, 50.0, 400.0),
    "h100": (989.0, 67.0, 3350.0, 50.0, 400.0),
    "a100": (312.0, 19.5, 2039.0, 24.0, 240.0),
    "l40s": (362.0, 91.6, 864.0, 24.0, 24.0),
    "a10g": (125.0, 31.2, 600.0, 12.0, 12.0),
}
DATASHEET_EFFICIENCY = {512: 0.25, 1024: 0.45, 2048: 0.6, 4096: 0.7}


def datasheet_rates(gpu_type: str, interconnect: str = "nvlink") -> MachineRates:
    """Rates for a GPU from its datasheet (labelled so); an unknown type gets H100-class numbers."""
    key = str(gpu_type).lower()
    known = key in DATASHEET
    bf16, fp32, mem, h2d, nvl = DATASHEET.get(key, DATASHEET["h100"])
    link = nvl if "nvlink" in interconnect or interconnect in ("unknown", "single") else 25.0
    mm = {"bf16": {n: bf16 * e for n, e in DATASHEET_EFFICIENCY.items()},
          "fp32": {n: fp32 * e / 0.7 for n, e in DATASHEET_EFFICIENCY.items()}}
    what = f"datasheet: {gpu_type}" if known else f"datasheet: {gpu_type} unknown, H100-class figures assumed"
    # host optimizer: ~2e9 params/s is what spilling's steps imply on the H200 host of profiles.csv
    return MachineRates(str(gpu_type), mm, mem * 0.8, h2d, link, 2.0e9, 8.0,
                        interconnect_source="estimated (datasheet)", source=what)


@dataclass(frozen=True)
class ModelShape:
    """What the prior needs to know about a job's model and batch (no torch objects)."""

    params: int  # all parameters
    matmul_params: int  # weights used in a matmul per token (blocks + head; not embedding tables)
    n_layer: int
    d_model: int
    tokens_per_sample: int  # sequence length (GPT) or patches + 1 (ViT)
    batch_size: int
    classes: int  # width of the output layer (vocabulary or classes)
    causal: bool = True
    n_tensors: int = 0  # parameter tensors (ZeRO-3 hooks); 0 = 12 per layer
    precision: str = "bf16"
    label: str = ""

    @property
    def tokens(self) -> int:
        return self.batch_size * self.tokens_per_sample

    @property
    def logit_tokens(self) -> int:
        """Positions that produce logits: every token (LM) or one per sample (classifier)."""
        return self.tokens if self.causal else self.batch_size

    def flops(self) -> float:
        """Training FLOPs per step: 6 x matmul params x tokens + attention (halved when causal)."""
        attn = 12.0 * self.n_layer * self.tokens_per_sample * self.d_model * (0.5 if self.causal else 1.0)
        return self.tokens * (6.0 * self.matmul_params + attn)


@dataclass(frozen=True)
class Estimate:
    """The prior's answer for one option; `parts` are the seconds of each term (before the
    calibration factor) and `factor` the calibration applied to their sum."""

    step_time_s: float
    peak_mem_gb: float
    feasible: bool
    reason: str = ""
    factor: float = 1.0
    parts: dict[str, float] = field(default_factory=dict)
    floored: bool = False  # the device-side floor (see `estimate`) set the step time


def launch_extra_s(knobs: Mapping[str, Any]) -> float:
    """Start-up a knob setting adds to a launch (compilation)."""
    return COMPILE_LAUNCH_S if _on(dict(knobs or {}).get("compile")) else 0.0


def _on(v: Any) -> bool:
    return v not in (None, False, 0, "", "none", "None", "off", "false", "False")


def _dtype(shape: ModelShape, rates: MachineRates) -> str:
    return "bf16" if shape.precision in ("bf16", "fp16") and rates.device.lower() != "cpu" else "fp32"


def _act_bytes(shape: ModelShape, tokens: float, layers: float, ckpt: bool, elem: int) -> float:
    full = ACT_BYTES_PER_TOKEN_LAYER_PER_D * shape.d_model * tokens * elem / 2
    if not ckpt:
        return full * layers
    return 2 * elem * shape.d_model * tokens * layers + full  # layer inputs + one recomputed layer


def estimate(shape: ModelShape, technique: str, knobs: Mapping[str, Any], gpus: int, rates: MachineRates,
             gpu_memory_gb: float, factor: float = 1.0, compute_factor: Optional[float] = None) -> Estimate:
    """Step time and peak memory per device of `technique` with `knobs` on `gpus` devices.

    `factor` calibrates the whole step; `compute_factor` (how this device does the model's own
    math, `Calibration.compute_factor`) floors it: the device-side terms (all but the host
    optimizer) at the device's calibration. No technique runs faster than the device does its
    work, whatever a correction learned on its other settings says (a factor fitted on spilling's
    host-bound rows must not make its GPU-optimizer setting faster than plain DDP)."""
    g = max(1, int(gpus))
    k = dict(knobs or {})
    dt = _dtype(shape, rates)
    elem = 2 if dt == "bf16" else 4
    P, L, d = float(shape.params), max(1, shape.n_layer), shape.d_model
    ckpt = _on(k.get("activation_checkpointing"))
    flops = shape.flops() * (4.0 / 3.0 if ckpt else 1.0)
    rate = rates.matmul(dt, d) * 1e12 * MODEL_MATMUL_EFFICIENCY
    mem_bw, link, net = rates.mem_gbps * GB, rates.h2d_gbps * GB, rates.interconnect_gbps * GB
    launch = rates.launch_us * 1e-6
    elemwise = ELEMWISE_BYTES_PER_TOKEN_LAYER_PER_D * d * shape.tokens * L * elem / 2
    elemwise += shape.logit_tokens * shape.classes * LOGIT_BYTES
    if _on(k.get("compile")):
        elemwise *= COMPILE_ELEMWISE
    tensors = shape.n_tensors or 12 * L + 4
    parts: dict[str, float] = {}
    logits = shape.logit_tokens * shape.classes * LOGIT_BYTES
    fixed16 = 16 * P  # fp32 weights + grads + AdamW state
    if technique == "pipeline":
        m = max(1, int(k.get("n_microbatches") or 2 * g))
        stage_flops = flops / g
        parts["compute"] = stage_flops / rate * (m + g - 1) / m
        parts["memory"] = (elemwise / g) / mem_bw * (m + g - 1) / m + ADAM_BYTES_PER_PARAM * P / g / mem_bw
        parts["comm"] = 2 * shape.tokens * d * elem * (2 if g > 1 else 0) / max(net, 1.0)
        parts["launch"] = max(0.0, KERNELS_PER_LAYER * L / g * m * launch - parts["compute"])
        inflight = m if str(k.get("schedule", "1f1b")).lower() == "gpipe" else min(m, g)
        act = _act_bytes(shape, shape.tokens / m * inflight, L / g, ckpt, elem)
        mem = fixed16 / g + act + logits / m * inflight
    elif technique == "spilling":
        wire = 4 if str(k.get("wire_dtype") or "").lower() == "fp32" or elem == 4 else 2
        parts["compute"] = flops / rate
        parts["memory"] = elemwise / mem_bw
        moved = 3 * P * wire + (4 * shape.tokens * d * elem * L if _on(k.get("offload_activations")) else 0)
        on_gpu = str(k.get("optimizer_on", "cpu")).lower() == "gpu"
        if on_gpu:
            parts["memory"] += ADAM_BYTES_PER_PARAM * P / mem_bw
        # shards stream in while others compute and the host steps each shard's optimizer during
        # backward: with prefetch the slowest of the three streams sets the pace
        link_s = moved / link
        host_s = 0.0 if on_gpu else P / rates.host_adam_params_per_s
        gpu_s = parts["compute"] + parts["memory"]
        if int(k.get("prefetch", 1) or 0):
            parts["host_link"] = max(SPILL_LINK_EXPOSED_MIN * link_s, link_s - gpu_s)
            parts["host_optimizer"] = max(0.0, host_s - max(gpu_s, link_s))
        else:
            parts["host_link"], parts["host_optimizer"] = link_s, host_s
        parts["launch"] = max(0.0, KERNELS_PER_LAYER * L * launch - parts["compute"])
        per_layer = P / L
        shard = max(1, int(k.get("shard_layers") or 2))
        resident = (1 + int(k.get("prefetch", 1) or 0)) * shard * per_layer * (wire + elem)
        act = (_act_bytes(shape, shape.tokens, shard, ckpt, elem) + 2 * elem * d * shape.tokens * L
               if _on(k.get("offload_activations")) else _act_bytes(shape, shape.tokens, L, ckpt, elem))
        mem = resident + act + logits + (16 * P if on_gpu else 0)
    else:
        tokens = shape.tokens / g
        parts["compute"] = flops / g / rate
        parts["memory"] = elemwise / g / mem_bw
        act = _act_bytes(shape, tokens, L, ckpt, elem) + logits / g
        units = L + 1
        coll = (g - 1) / g if g > 1 else 0.0
        comm = 0.0
        if technique == "fsdp":
            reshard = _on(k.get("reshard_after_forward", True))
            offload = _on(k.get("cpu_offload"))
            gathers = 2 if reshard else 1
            comm = (gathers * 2 * P + 4 * P) * coll / max(net, 1.0)
            parts["memory"] += ADAM_BYTES_PER_PARAM * P / g / mem_bw
            parts["fsdp_copies"] = (3 if reshard else 1) * FSDP_BYTES_PER_PARAM_PASS * P / g / mem_bw
            if offload:
                parts["host_link"] = (gathers * 4 * P + 4 * P) / g / link
                parts["host_optimizer"] = P / g / rates.host_adam_params_per_s
                parts["memory"] -= ADAM_BYTES_PER_PARAM * P / g / mem_bw
            gathered = 2 * P if not reshard else 2 * 2 * P / units
            mem = (0.0 if offload else fixed16 / g) + gathered + act
        elif technique == "zero":
            stage = int(k.get("stage", 2) or 2)
            off_opt, off_par = _on(k.get("offload_optimizer")), _on(k.get("offload_param"))
            comm = (2 * P * 2 + (2 * P * 2 if stage == 3 else 0)) * coll / max(net, 1.0)
            parts["memory"] += ADAM_BYTES_PER_PARAM * P / g / mem_bw
            if stage == 3:
                parts["hooks"] = 2 * tensors * HOOK_LAUNCHES["zero3_tensor"] * launch
            if off_opt:
                parts["memory"] -= ADAM_BYTES_PER_PARAM * P / g / mem_bw
                parts["host_link"] = 2 * 2 * P / g / link
                parts["host_optimizer"] = P / g / rates.host_adam_params_per_s
            if off_par:
                parts["host_link"] = parts.get("host_link", 0.0) + 2 * 2 * P / link
            params = 0.0 if off_par else (2 * P / g if stage == 3 else 2 * P)
            grads = 2 * P / g if stage >= 2 else 2 * P
            opt = 0.0 if off_opt else 12 * P / g
            mem = params + grads + opt + act + (2 * 2 * P / units if stage == 3 else 0.0)
        else:  # ddp and techniques the prior does not know: data parallel over full replicas
            bucket = 4 * P if g > 1 else 0.0
            wire = 2 if str(k.get("grad_compression", "none")).lower() in ("fp16", "bf16") else 4
            comm = 2 * wire * P * coll / max(net, 1.0)
            parts["memory"] += ADAM_BYTES_PER_PARAM * P / mem_bw
            mem = fixed16 + bucket + act
        if comm:
            backward = parts["compute"] * 2 / 3
            parts["comm"] = max(COMM_EXPOSED_MIN * comm, comm - backward)
        gpu_s = parts["compute"] + parts["memory"]
        parts["launch"] = max(0.0, KERNELS_PER_LAYER * L * launch - gpu_s)
    step = sum(parts.values()) * factor
    floor = 0.0
    if compute_factor is not None:  # the device's own work, at the device's calibration
        floor = sum(v for n, v in parts.items() if n != "host_optimizer") * compute_factor
    peak = mem / GB
    usable = gpu_memory_gb * USABLE_MEMORY
    feasible = peak <= usable
    reason = "" if feasible else (f"estimated peak memory {peak:.1f} GB > {usable:.1f} GB usable "
                                  f"of {gpu_memory_gb:g} GB")
    return Estimate(round(max(step, floor), 6), round(peak, 3), feasible, reason, factor,
                    {n: round(v, 6) for n, v in parts.items()}, floor > step)


# ------------------------------------------------------------------------------- calibration
@dataclass
class Calibration:
    """Multiplicative corrections per (technique, device kind): the median of measured /
    estimated step time over measured rows. A technique without rows on that device falls back to
    the median over that device's rows of every technique, else 1."""

    factors: dict[tuple[str, str], float] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    device: dict[str, float] = field(default_factory=dict)
    device_counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def fit(cls, ratios: Iterable[tuple[str, str, float]]) -> "Calibration":
        """`ratios`: (technique, device kind, measured / uncalibrated estimate) per measured row."""
        by: dict[tuple[str, str], list[float]] = {}
        dev: dict[str, list[float]] = {}
        for tech, kind, r in ratios:
            if r > 0 and math.isfinite(r):
                by.setdefault((tech, kind.lower()), []).append(r)
                dev.setdefault(kind.lower(), []).append(r)
        return cls({k: statistics.median(v) for k, v in by.items()}, {k: len(v) for k, v in by.items()},
                   {k: statistics.median(v) for k, v in dev.items()}, {k: len(v) for k, v in dev.items()})

    def compute_factor(self, kind: str) -> float:
        """How this device kind does the model's own math: the DDP factor (DDP adds least to
        the compute), else the device's median, else 1."""
        return self.factors.get(("ddp", kind.lower())) or self.device.get(kind.lower()) or 1.0

    def factor(self, technique: str, kind: str) -> tuple[float, str]:
        """(factor, what it rests on) for one technique on one device kind."""
        key = (technique, kind.lower())
        if key in self.factors:
            return self.factors[key], f"x{self.factors[key]:.3g} from {self.counts[key]} measured {technique} row(s)"
        if kind.lower() in self.device:
            f = self.device[kind.lower()]
            return f, f"x{f:.3g} from {self.device_counts[kind.lower()]} measured row(s) of other techniques"
        return 1.0, "uncalibrated (no measured row on this device)"
