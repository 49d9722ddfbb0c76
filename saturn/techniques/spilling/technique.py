"""The `spilling` technique: knobs, feasibility (incl. host RAM on the node that runs it), and
the worker-side builder.

Why a module of its own: this is the only place that knows about jobs and knobs; the engine
below it takes plain keyword arguments. `engine_kwargs` is the single function that turns a
knob setting into engine arguments (so a typed knob declaration only has to change it).
"""

from __future__ import annotations

import os
from typing import Any, Literal, Optional

from saturn.techniques.base import Feasibility
from saturn.techniques.common import LaunchedTechnique
from saturn.techniques.knobs import knob, knob_dataclass
from saturn.techniques.registry import register

DEFAULT_KNOBS: dict[str, Any] = {"shard_layers": 0, "gpu_budget_gb": 0.0, "prefetch": 1,
                                 "optimizer_on": "cpu", "offload_activations": False,
                                 "optimizer_state": "fp32", "gpu_state_fraction": 0.0}
SPLIT_FRACTIONS = (0.4,)  # gpu_state_fraction candidates the profiler measures


def knob_conflicts(job: Any, knobs: dict[str, Any]) -> str:
    """Why the job's own settings forbid this knob setting ('' = allowed): numerics exact (the
    default, saturn.numerics) and precision fp32 are the user asking for fp32 optimizer state,
    so it may not be rounded to bf16; bf16 state
    is Adam(W)-only; the split optimizer splits the host optimizer, so needs optimizer_on cpu."""
    from saturn.numerics import numerics_conflict

    k = {**DEFAULT_KNOBS, **(knobs or {})}
    if k["optimizer_state"] == "bf16":
        if job.precision == "fp32":
            return ("optimizer_state bf16 rounds Adam's moments to bf16, which precision fp32 "
                    "forbids; use precision bf16 or optimizer_state fp32")
        numerics = numerics_conflict(getattr(job, "numerics", "exact"), "spilling", k)
        if numerics:
            return numerics
        if job.optimizer.name not in ("adam", "adamw"):
            return f"optimizer_state bf16 applies to adam and adamw, not {job.optimizer.name}"
        if k["optimizer_on"] != "cpu":
            return "optimizer_state bf16 needs optimizer_on cpu"
    if float(k["gpu_state_fraction"] or 0) > 0 and k["optimizer_on"] != "cpu":
        return "gpu_state_fraction > 0 needs optimizer_on cpu"
    return ""


def engine_kwargs(job: Any, knobs: dict[str, Any]) -> dict[str, Any]:
    """SpillingEngine keyword arguments for a job and a knob setting (defaults filled in)."""
    k = {**DEFAULT_KNOBS, **(knobs or {})}
    return {"shard_layers": int(k["shard_layers"] or 0),
            "gpu_budget_gb": float(k["gpu_budget_gb"] or 0.0),
            "prefetch": int(k["prefetch"]), "optimizer_on": str(k["optimizer_on"]),
            "offload_activations": bool(k["offload_activations"]),
            "optimizer_state": str(k["optimizer_state"]),
            "gpu_state_fraction": float(k["gpu_state_fraction"] or 0.0),
            "wire_dtype": k.get("wire_dtype"),  # None: the compute dtype (bf16 jobs: bf16)
            "optimizer": job.optimizer.name, "optimizer_kwargs": job.optimizer.kwargs(),
            "precision": job.precision, "batch_hint": (job.batch_size, job.seq_len)}


def host_bytes_needed(job: Any, device_type: str = "cuda",
                      knobs: Optional[dict[str, Any]] = None) -> Optional[int]:
    """Host memory spilling holds for a job: the prior's count (saturn.profiles.host_memory):
    with the optimizer on the host fp32 masters + Adam's moments (2 bytes per moment with
    `optimizer_state: bf16`) and the reusable buffers of the shards in flight; with the
    optimizer on the GPU also an fp32 gradient buffer and fp32 state."""
    from saturn.prior.shapes import shape_of
    from saturn.profiles.host_memory import spilling_bytes_per_param, spilling_shard_buffers
    from saturn.zoo import param_count

    n = param_count(job.model)
    if n is None:
        return None
    k = {**DEFAULT_KNOBS, **(knobs or {})}
    if job.optimizer.name == "sgd":  # one moment (momentum) instead of two
        k = {**k, "optimizer_state": "bf16"}
    wire = 2 if (job.precision == "bf16" and device_type == "cuda" and k.get("wire_dtype") != "fp32") else 4
    shape = shape_of(job.model.name, job.model.overrides, job.batch_size, job.seq_len, job.precision) \
        if job.model.name else None
    buffers = spilling_shard_buffers(shape, k, wire) if shape is not None else 0.0
    return int(n * spilling_bytes_per_param(k) + buffers)


def node_host_memory_bytes() -> Optional[int]:
    """Memory this node can still give (MemAvailable), else its physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_host_memory(job: Any, device_type: str, available: Optional[int],
                      knobs: Optional[dict[str, Any]] = None) -> Feasibility:
    need = host_bytes_needed(job, device_type, knobs)
    if need is None or available is None or need <= 0.9 * available:
        return Feasibility(True)
    return Feasibility(False, f"needs ~{need / 2**30:.1f} GiB of host memory for master weights, "
                              f"optimizer state and the shards in flight; the node running it has "
                              f"{available / 2**30:.1f} GiB available")


def build(job: Any, knobs: dict[str, Any], ctx: Any) -> Any:
    """Worker side (saturn.training.loop.worker_entry): the seeded model as a SpillingEngine on ctx.device.
    The host-memory check runs here, on the node that runs the job, before anything is
    allocated (the planning host's memory says nothing about it)."""
    import torch

    from saturn.techniques.spilling.engine import SpillingEngine
    from saturn.training import loop

    conflict = knob_conflicts(job, knobs)
    if conflict:
        raise ValueError(f"spilling: {conflict}")
    feas = check_host_memory(job, ctx.device.type, node_host_memory_bytes(), knobs)
    if not feas:
        raise MemoryError(f"spilling: {feas.reason}")
    model = loop.build_model(job)
    dataset = loop.build_dataset(job, model)
    engine = SpillingEngine(model, ctx.device, **engine_kwargs(job, knobs))

    def step(x: Any, y: Any) -> Any:
        return torch.tensor(engine.train_step(x, y))

    return loop.Trainable(step_fn=step, save=engine.save_checkpoint,
                              load=engine.load_checkpoint, device=ctx.device, dataset=dataset)


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
    wire_dtype: Optional[Literal["fp32", "bf16"]] = knob(
        None, "dtype parameters and gradients cross the link in (None = the compute dtype): bf16 halves "
              "the bytes but adds two host casts per step")
    optimizer_state: Literal["fp32", "bf16"] = knob(
        "fp32", "dtype of Adam(W)'s moments (fp32 masters either way); bf16 halves the bytes the "
                "host optimizer touches; precision fp32 forbids it")
    gpu_state_fraction: float = knob(
        0.0, "share of the GPU budget for the first shards, kept on the GPU with masters and "
             "optimizer state and stepped there (split optimizer); 0 = all step on the host",
        ge=0.0, le=0.9)


@register
class Spilling(LaunchedTechnique):
    """Model spilling on one device: shards of layers stream through the GPU (package doc)."""

    name = "spilling"
    builder = "saturn.techniques.spilling:build"
    knob_type = SpillingKnobs
    requires = ("torch; exactly 1 GPU (or CPU slot); host RAM for parameters, gradients and "
                "optimizer state (pinned), checked on the node that runs the job")
    knobs = {
        "shard_layers": "layers per shard; 0 = pack consecutive layers into shards sized from "
                        "gpu_budget_gb (prefetch+1 shards resident)",
        "gpu_budget_gb": "GPU memory the shards may plan for when shard_layers is 0; 0 = 90% of "
                         "the device memory free at start",
        "prefetch": "0 | 1 | 2: shards copied in ahead on a separate CUDA stream while the "
                    "current one computes (double buffering; 0 = copy on demand)",
        "optimizer_on": "cpu: optimizer state and fused step on the host, per shard as its "
                        "gradients land, overlapped with the GPU | gpu: state streamed in with "
                        "the shard, step on the GPU, parameters and state copied back",
        "offload_activations": "keep shard-boundary activations in pinned host memory instead of "
                               "on the GPU (for long sequences / large batches)",
        "wire_dtype": "None | fp32 | bf16: dtype on the link (None = the compute dtype; bf16 halves "
                      "the bytes, adds two host casts per step)",
        "optimizer_state": "fp32 | bf16: Adam(W) moments in bf16 with fp32 master weights, "
                           "updated in one fused pass (stochastic rounding); about half the host "
                           "memory traffic of the optimizer; precision fp32 forbids it",
        "gpu_state_fraction": "0..0.9: share of the GPU budget that keeps the first shards on the "
                              "GPU with their fp32 masters and optimizer state, stepped there "
                              "(split optimizer, ZeRO-Offload++ twin-flow); the rest stream",
    }

    def knob_conflicts(self, job: Any, knobs: dict[str, Any]) -> str:
        return knob_conflicts(job, knobs)

    def feasible(self, job: Any, gpus: int) -> Feasibility:
        if gpus != 1:
            return Feasibility(False, f"spilling runs on exactly 1 device, not {gpus}")
        if job.precision == "fp16":
            return Feasibility(False, "fp16 needs loss scaling with a global overflow check, which "
                                      "per-shard optimizer steps cannot do; use bf16 or fp32")
        # Planning may happen elsewhere: only a node size given explicitly is checked here; the
        # worker checks the real node before allocating (`build`).
        from saturn.env import node_host_memory_gb

        declared = node_host_memory_gb()
        if declared:
            feas = check_host_memory(job, "cuda", int(declared * 2**30))
            if not feas:
                return feas
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
        if job.precision == "bf16":
            # bf16 on the wire halves the link bytes but adds host casts; on an H200 host the host
            # side was the critical path (BENCHMARKS.md, spilling 2026-12-02): measure both
            out.append({**base, "wire_dtype": "fp32"})
        # fewer bytes for the host optimizer (issue 26): smaller state, and a split optimizer;
        # knob_conflicts drops what the job's precision / optimizer forbids
        out.append({**base, "optimizer_state": "bf16"})
        for f in SPLIT_FRACTIONS:
            out.append({**base, "gpu_state_fraction": f})
            out.append({**base, "gpu_state_fraction": f, "optimizer_state": "bf16"})
        return [c for c in out if not knob_conflicts(job, c)]
