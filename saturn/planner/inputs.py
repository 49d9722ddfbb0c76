"""Normalize the planner's inputs into small internal dataclasses.

`plan()` is called by several tools with different shapes of input: the CLI passes a parsed
`Workload` (jobs with allowed techniques / GPU counts, a cluster with typed nodes), tests and the
benchmark pass plain mappings. Everything past this module sees only `JobSpec` and `NodeSpec`, so
the solver core never imports `saturn.spec` (duck typing keeps the packages independent).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from saturn.errors import SaturnError
from saturn.parse import (
    canonical_knobs,  # noqa: F401 - re-exported
    table_records,  # noqa: F401 - re-exported
)


@dataclass(frozen=True)
class JobSpec:
    """One training job as the planner sees it."""

    name: str
    steps: float
    techniques: Optional[frozenset[str]] = None  # allowed techniques (None = any)
    gpus: Optional[frozenset[int]] = None  # allowed GPU counts (None = any)
    signature: Optional[str] = None
    weight: float = 1.0  # priority for the weighted_completion objective (see planner/objectives.py)
    checkpoint_every: int = 0  # periodic checkpoints every N steps (0: only the final one)
    numerics: str = "exact"  # exact | low-memory: which options it may use (saturn.numerics)


@dataclass(frozen=True)
class NodeSpec:
    """One node: `gpus` GPUs with ids 0..gpus-1."""

    name: str
    gpus: int
    gpu_type: Optional[str] = None
    gpu_memory_gb: Optional[float] = None
    cpu_cores: Optional[int] = None  # CPU cores for input pipelines (None = not planned)
    host_memory_gb: Optional[float] = None  # host RAM shared by its jobs (None = not planned)


def _opt_set(value: Any, cast) -> Optional[frozenset]:
    """None/empty means "no restriction"; otherwise a frozenset of cast values."""
    if value is None:
        return None
    if isinstance(value, (str, int)):
        value = [value]
    items = [cast(v) for v in value]
    return frozenset(items) if items else None


def normalize_jobs(jobs: Any) -> list[JobSpec]:
    """Accept `{name: steps}`, a Workload (`.jobs`), or an iterable of job-like objects."""
    if hasattr(jobs, "jobs") and not isinstance(jobs, Mapping):
        jobs = jobs.jobs
    if isinstance(jobs, Mapping):
        out = [JobSpec(str(name), float(steps)) for name, steps in jobs.items()]
    else:
        out = []
        for job in jobs:
            if isinstance(job, JobSpec):
                out.append(job)
                continue
            steps = getattr(job, "total_steps", None) or job.steps  # spec Jobs may give epochs
            out.append(
                JobSpec(
                    name=str(job.name),
                    steps=float(steps),
                    techniques=_opt_set(getattr(job, "techniques", None), str),
                    gpus=_opt_set(getattr(job, "gpus", None), int),
                    signature=getattr(job, "signature", None),
                    weight=float(getattr(job, "weight", None) or 1.0),
                    checkpoint_every=int(getattr(job, "checkpoint_every", 0) or 0),
                    numerics=str(getattr(job, "numerics", None) or "exact"),
                )
            )
    dupes = sorted(n for n, k in Counter(j.name for j in out).items() if k > 1)
    if dupes:
        raise SaturnError(f"job names must be unique; duplicated: {', '.join(dupes)}")
    for j in out:
        if not (j.steps > 0 and math.isfinite(j.steps)):
            raise SaturnError(f"job {j.name!r}: steps must be a positive number, got {j.steps}")
        if not (j.weight > 0 and math.isfinite(j.weight)):
            raise SaturnError(f"job {j.name!r}: weight must be a positive number, got {j.weight}")
    if not out:
        raise SaturnError("the workload has no jobs to plan")
    return out


def normalize_cluster(cluster: Any) -> list[NodeSpec]:
    """Accept `{node: gpu_count}`, a Cluster (`.nodes`), or an iterable of node-like objects."""
    if hasattr(cluster, "cluster") and not hasattr(cluster, "nodes"):
        cluster = cluster.cluster  # a Workload
    if hasattr(cluster, "nodes") and not isinstance(cluster, Mapping):
        cluster = cluster.nodes
    if isinstance(cluster, Mapping):
        out = [NodeSpec(str(name), int(g)) for name, g in cluster.items()]
    else:
        out = []
        for node in cluster:
            if isinstance(node, NodeSpec):
                out.append(node)
                continue
            gtype = getattr(node, "gpu_type", None)
            mem = getattr(node, "gpu_memory_gb", None)
            out.append(
                NodeSpec(
                    name=str(node.name),
                    gpus=int(node.gpus),
                    gpu_type=str(gtype) if gtype is not None else None,
                    gpu_memory_gb=float(mem) if mem is not None else None,
                    cpu_cores=int(getattr(node, "cpu_cores", None) or 0) or None,
                    host_memory_gb=float(getattr(node, "host_memory_gb", None) or 0) or None,
                )
            )
    if not out:
        raise SaturnError("the cluster has no nodes")
    names = [n.name for n in out]
    if len(set(names)) != len(names):
        raise SaturnError(f"node names must be unique, got {names}")
    for n in out:
        if n.gpus < 1:
            raise SaturnError(f"node {n.name!r} must have at least 1 GPU, got {n.gpus}")
    return out


def gpu_type_matches(profile_type: Any, node: NodeSpec) -> bool:
    """A profile row applies to a node unless both name a GPU type and the types differ."""
    if node.gpu_type is None or profile_type is None:
        return True
    if isinstance(profile_type, float) and math.isnan(profile_type):
        return True
    return str(profile_type).strip().lower() == node.gpu_type.strip().lower()



# ------------------------------------------------------------------ the job duration model
# Periodic checkpoints are background saves (saturn.runtime.drain.in_background): only
# their staging into host memory blocks the steps. When a profile did not measure that part, it
# is estimated as this fraction of a full save (device->host copy vs. write + fsync).
BACKGROUND_SAVE_FRACTION = 0.1


def _val(row: Mapping[str, Any], key: str) -> Optional[float]:
    try:
        f = float(row.get(key))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f >= 0 else None


def periodic_checkpoints(steps: float, checkpoint_every: int) -> int:
    """Checkpoints a run of `steps` steps writes before its final one (every N steps)."""
    if not checkpoint_every or checkpoint_every <= 0:
        return 0
    return max(0, math.ceil(steps / checkpoint_every) - 1)


def job_phases(row: Mapping[str, Any], steps: float, checkpoint_every: int = 0
               ) -> dict[str, tuple[float, str]]:
    """A job's planned wall time by phase, each (seconds, source), from one profile row:

        launch       process start, model build, first-step warm-up overheads, teardown
        steps        steps x steady step time
        checkpoints  periodic background saves x their blocking (staging) cost
        final_save   the last checkpoint, written synchronously: the run waits for it (or, for
                     a row with `drain_s`, its blocking part: it drains behind)
        drain        (rows with `drain_s`) writing the final checkpoint after the job has left
                     its GPU: not part of the job's runtime (`OFF_GPU_PHASES`), but the run's
                     results are durable only after it (`Plan.durable_s`)

    Sources say where each number came from: "measured" (the profiler timed it), "estimated"
    (a model, e.g. bytes / bandwidth), "startup_s" (a table without the launch/checkpoint split:
    its startup_s is the whole fixed cost) or "none" (not in the table: counted as 0).
    Rows with a `launch_s` column keep `startup_s = launch_s + checkpoint_s`, so with no periodic
    checkpoints the total equals the older `steps x step + startup_s`."""
    step = _val(row, "step_time_s") or 0.0
    out: dict[str, tuple[float, str]] = {"steps": (steps * step, "measured")}
    launch, ckpt = _val(row, "launch_s"), _val(row, "checkpoint_s")
    ckpt_src = str(row.get("checkpoint_source") or "estimated")
    if ckpt_src not in ("measured", "estimated"):
        ckpt_src = "estimated"
    if launch is None:  # older tables: startup_s is everything fixed (incl. one final save)
        startup = _val(row, "startup_s")
        out["launch"] = (startup or 0.0, "startup_s" if startup is not None else "none")
        out["final_save"] = (0.0, "startup_s" if startup is not None else "none")
    else:
        out["launch"] = (launch, "measured")
        out["final_save"] = (ckpt or 0.0, ckpt_src if ckpt is not None else "none")
    n = periodic_checkpoints(steps, checkpoint_every)
    stage = _val(row, "checkpoint_stage_s")
    if stage is not None:
        per, src = stage, str(row.get("checkpoint_source") or "estimated")
    elif ckpt is not None:
        per, src = BACKGROUND_SAVE_FRACTION * ckpt, "estimated"
    else:
        per, src = 0.0, "none"
    out["checkpoints"] = (n * per, src if n else "none")
    drain = _val(row, "drain_s")
    if drain is not None:
        out["drain"] = (drain, ckpt_src)
    return out


OFF_GPU_PHASES = frozenset({"drain"})  # phases that do not hold the job's GPUs


def on_gpu_s(phases: Mapping[str, tuple[float, str]]) -> float:
    """Seconds a job holds its GPUs: the sum of its phases but the off-GPU ones."""
    return sum(s for k, (s, _) in phases.items() if k not in OFF_GPU_PHASES)


def job_runtime_s(row: Mapping[str, Any], steps: float, checkpoint_every: int = 0) -> float:
    """Planned wall time of a job with this profile row on its GPUs (see `on_gpu_s`)."""
    return on_gpu_s(job_phases(row, steps, checkpoint_every))
