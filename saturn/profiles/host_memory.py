"""Host memory as a planned resource: what an option holds in the node's RAM, and what a node has.

Why: a node's host memory is shared by every job it runs at once, and the options that train
models bigger than the GPU (spilling, CPU offload) keep tens of bytes per parameter there. Issue
33: a gpt-6.7b was planned onto spilling that needed 128 GiB on a 123 GiB host, and the failure
surfaced only inside the worker. The planner now sees each option's host bytes (`host_mem_gb` on
a profile row: the measured peak `host_peak_gb` when there is one, else this module's estimate,
calibrated by measured peaks) and each node's capacity (`host_memory_gb`: declared in the
cluster spec, or probed here respecting a cgroup limit), and plans it like CPU cores
(`saturn.planner.cores`).

The estimate counts, per technique and knob setting, for the whole job on its node (all ranks):
the worker processes themselves (Python, torch, CUDA libraries and context), the data
pipeline's prefetch, host copies of parameters / gradients / optimizer state that offloading
techniques keep, their pinned transfer buffers, and a checkpoint's host staging copy. Pure
Python, no torch (the planner imports it).

A measured host OOM (a worker killed by the kernel for memory) is a profile row too
(`host_oom_row`): status `host_oom`, infeasible, with the measured peak and the node's memory,
so the option is ruled out on that host type with a reason naming host memory.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

GB = 1e9
PROCESS_BYTES = {"cuda": 3.0e9, "cpu": 0.6e9}  # one worker: interpreter, torch, CUDA libs + context
DATA_PIPELINE_BYTES = 0.25e9  # per worker: prefetched batches, loader state
CHECKPOINT_STAGING = 12  # bytes per parameter staged for a checkpoint (fp32 weights + Adam moments)
PINNED_SLACK = 1.10  # pinned allocations round up to power-of-two-ish blocks (CUDA caching host allocator)
HOST_OOM_STATUS = "host_oom"
CGROUP_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


@dataclass(frozen=True)
class HostEstimate:
    """Host bytes of one option for its whole job (all ranks on one node), by part."""

    bytes: float
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def gb(self) -> float:
        return self.bytes / GB


def _on(v: Any) -> bool:
    return v not in (None, False, 0, "", "none", "None", "off", "false", "False")


def moment_bytes(knobs: Mapping[str, Any]) -> int:
    """Bytes per parameter of Adam's two moments: fp32 (8), bf16 (4) or 8-bit (2)."""
    state = str(dict(knobs or {}).get("optimizer_state") or "fp32").lower()
    return {"bf16": 4, "int8": 2, "8bit": 2}.get(state, 8)


LEAN_SHARD_FRACTION = 1 / 16  # the spilling engine's largest auto-sized shard (spilling/pool.py)


def spilling_bytes_per_param(knobs: Mapping[str, Any]) -> float:
    """What the spilling engine holds per parameter at model size on the host: with the
    optimizer on the host (lean, spilling/pool.py) fp32 master weights and Adam's moments only;
    with the optimizer on the GPU also an fp32 gradient buffer and fp32 state streamed with it."""
    k = dict(knobs or {})
    if str(k.get("optimizer_on", "cpu")).lower() == "gpu":
        return 4 + 4 + 8
    return 4 + moment_bytes(k)


def spilling_shard_buffers(shape: Any, knobs: Mapping[str, Any], wire_bytes: int) -> float:
    """Bytes of the reusable buffers of the shards in flight (lean engine): `prefetch + 1` wire
    copies (only when the wire dtype is not fp32), two gradient landing buffers, one fp32
    scratch for torch's AdamW (fp32 moments with a cast wire), each the size of the largest shard."""
    k = dict(knobs or {})
    if str(k.get("optimizer_on", "cpu")).lower() == "gpu":
        return 0.0
    P, L = float(shape.params), max(1, int(shape.n_layer)) + 2
    layers = int(k.get("shard_layers") or 0)
    shard = layers * P / L if layers else max(P / L, P * LEAN_SHARD_FRACTION)
    cast = wire_bytes != 4
    per = ((1 + int(k.get("prefetch", 1) or 0)) * wire_bytes if cast else 0) + 2 * wire_bytes
    per += 4 if cast and moment_bytes(k) == 8 else 0
    return shard * per * PINNED_SLACK


def host_bytes(shape: Any, technique: str, knobs: Mapping[str, Any], gpus: int,
               device: str = "cuda") -> HostEstimate:
    """The prior's host memory for one option (see the module docstring). `shape` is a
    `saturn.prior.cost_model.ModelShape` (params, n_layer, ...); `device` 'cuda' or 'cpu' (CPU
    slots: the "device" memory is host memory too, so the model's own states count here)."""
    k = dict(knobs or {})
    g = max(1, int(gpus))
    P, L = float(shape.params), max(1, int(shape.n_layer))
    dev = "cpu" if str(device).lower() == "cpu" else "cuda"
    parts = {"processes": PROCESS_BYTES[dev] * g, "data_pipeline": DATA_PIPELINE_BYTES * g}
    if dev == "cpu":  # the model, its gradients and optimizer state live in the process itself
        parts["model_states"] = 16 * P
    if technique == "spilling":
        elem = 2 if getattr(shape, "precision", "bf16") in ("bf16", "fp16") and dev == "cuda" else 4
        wire = 4 if str(k.get("wire_dtype") or "").lower() == "fp32" else elem
        parts["master_and_state"] = spilling_bytes_per_param(k) * P * (0 if dev == "cpu" else 1)
        parts["shard_buffers"] = spilling_shard_buffers(shape, k, wire)
        if _on(k.get("offload_activations")):
            parts["activations"] = 2 * elem * shape.d_model * shape.tokens * L
    elif technique == "fsdp" and _on(k.get("cpu_offload")):
        parts["offloaded_states"] = 16 * P * PINNED_SLACK  # fp32 params + grads + Adam state
    elif technique == "zero" and (_on(k.get("offload_optimizer")) or _on(k.get("offload_param"))):
        if _on(k.get("offload_optimizer")):  # DeepSpeedCPUAdam: fp32 master + moments + fp32 grads
            parts["offloaded_states"] = 16 * P
        if _on(k.get("offload_param")):  # bf16 parameters (pinned) and their swap buffers
            parts["offloaded_params"] = 2 * P * PINNED_SLACK * 2
    if technique != "spilling" or dev == "cpu":
        parts["checkpoint_staging"] = CHECKPOINT_STAGING * P
    return HostEstimate(sum(parts.values()), {n: round(v) for n, v in parts.items()})


# ------------------------------------------------------------------------------ calibration
@dataclass
class HostCalibration:
    """measured host peak / estimate per technique (median over measured rows), else 1."""

    factors: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, ratios: Iterable[tuple[str, float]]) -> "HostCalibration":
        by: dict[str, list[float]] = {}
        for tech, r in ratios:
            if r > 0 and math.isfinite(r):
                by.setdefault(tech, []).append(r)
        return cls({t: statistics.median(v) for t, v in by.items()})

    def factor(self, technique: str) -> float:
        return self.factors.get(technique, 1.0)


def measured_peak_gb(row: Mapping[str, Any]) -> Optional[float]:
    """A row's measured host peak (GB), None when it has none."""
    try:
        v = float(row.get("host_peak_gb"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if v > 0 and math.isfinite(v) else None


def process_tree_peak_gb() -> float:
    """This process's peak resident memory (pinned host memory included: it is resident) plus
    what its live child processes (data loaders) hold now, in GB: the job's host peak as a
    measured row records it (`host_peak_gb`)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    try:
        import psutil

        peak += sum(c.memory_info().rss for c in psutil.Process().children(recursive=True))
    except Exception:  # noqa: BLE001 - children that exit while read, or no psutil: this process only
        pass
    return round(peak / GB, 4)


# ------------------------------------------------------------------------------ the node
def cgroup_limit_bytes(files: Iterable[str] = CGROUP_FILES) -> Optional[int]:
    """The memory limit of this process's cgroup (v2 `memory.max`, v1 `limit_in_bytes`), None
    when unlimited or unreadable."""
    for path in files:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text in ("", "max"):
            return None
        try:
            v = int(text)
        except ValueError:
            continue
        return v if 0 < v < 1 << 60 else None  # v1 says "unlimited" with a huge number
    return None


def physical_memory_bytes() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def node_host_memory_gb(files: Iterable[str] = CGROUP_FILES) -> Optional[float]:
    """This node's host memory for jobs: physical memory, or the cgroup limit when lower."""
    sizes = [v for v in (physical_memory_bytes(), cgroup_limit_bytes(files)) if v]
    return round(min(sizes) / GB, 1) if sizes else None


# ------------------------------------------------------------------------------ host OOM rows
def host_oom_reason(peak_gb: Optional[float], node_gb: Optional[float]) -> str:
    at = f"killed at {peak_gb:.1f} GB resident" if peak_gb else "killed by the kernel"
    has = f", the node has {node_gb:.1f} GB" if node_gb else ""
    return f"host out of memory: {at}{has}"


def host_oom_row(row: Mapping[str, Any], peak_gb: Optional[float], node_gb: Optional[float]) -> dict[str, Any]:
    """`row` (a profile row's key columns) as a measured host OOM: infeasible, with the measured
    peak (`host_peak_gb`) and the node's memory (`host_memory_gb`), the reason naming host
    memory. The planner rules the option out on that host type (saturn.planner.options)."""
    return {**dict(row), "status": HOST_OOM_STATUS, "feasible": False, "step_time_s": None,
            "host_peak_gb": peak_gb, "host_memory_gb": node_gb, "reason": host_oom_reason(peak_gb, node_gb)}
