"""Profile table -> per-job options (technique, knobs, GPU count, runtime).

The solver only ever looks at a job's *options*. A profile table may hold dozens of rows per job
(techniques x knobs x GPU counts), most of which can never be part of an optimal plan, so we prune:

1. for each (job, GPU count, GPU type) keep only the fastest feasible technique/knobs
   (`JobOptions.by_size`, used by the baselines, which fix the GPU count themselves);
2. drop an option if another one uses no more GPUs and is at least as fast (`JobOptions.options`,
   the Pareto front used by the planner). With fewer GPUs an option also fits every node the
   bigger one fits, so pruning never loses a better plan.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional, Union

import pandas as pd

from saturn.errors import InfeasibleError, MissingProfilesError, SaturnError
from saturn.numerics import CHANGES as NUMERICS_KNOBS
from saturn.numerics import numerics_conflict
from saturn.parse import num as _num
from saturn.planner.inputs import (
    JobSpec,
    NodeSpec,
    canonical_knobs,
    gpu_type_matches,
    job_phases,
    on_gpu_s,
    table_records,
)

REQUIRED_COLUMNS = ("job", "technique", "gpus", "step_time_s", "feasible")


@dataclass(frozen=True)
class Option:
    """One way to run one job on `gpus` GPUs. `runtime_s` is the sum of its on-GPU `phases`
    ((name, seconds, source) for launch, steps, periodic checkpoints and the final save; see
    `saturn.planner.inputs.job_phases`); `startup_s` is the profile's fixed cost as given."""

    job: str
    technique: str
    knobs: str  # canonical JSON
    gpus: int
    runtime_s: float
    step_time_s: float = 0.0
    startup_s: float = 0.0
    peak_mem_gb: Optional[float] = None
    gpu_type: Optional[str] = None
    phases: tuple = ()  # ((phase, seconds, source), ...): where runtime_s comes from
    cpu_cores: float = 0.0  # input-pipeline cores it needs (0 = not measured: unconstrained)
    host_mem_gb: float = 0.0  # host memory of the job on its node (0 = not known: unconstrained)

    @property
    def area(self) -> float:
        """GPU-seconds the option occupies."""
        return self.gpus * self.runtime_s

    @property
    def knobs_dict(self) -> dict:
        return json.loads(self.knobs)

    def fits(self, node: NodeSpec) -> bool:
        return (self.gpus <= node.gpus and gpu_type_matches(self.gpu_type, node)
                and self.cpu_cores <= (getattr(node, "cpu_cores", None) or float("inf"))
                and self.host_mem_gb <= (getattr(node, "host_memory_gb", None) or float("inf")))


@dataclass
class JobOptions:
    job: JobSpec
    by_size: list[Option] = field(default_factory=list)  # fastest per (gpus, gpu_type)
    options: list[Option] = field(default_factory=list)  # Pareto front over (gpus, runtime)
    ruled_out: list[str] = field(default_factory=list)  # options ruled out for host memory, why

    def fitting(self, node: NodeSpec) -> list[Option]:
        return [o for o in self.options if o.fits(node)]

    def fastest(self) -> Option:
        return min(self.options, key=lambda o: (o.runtime_s, o.gpus))

    def min_area(self) -> Option:
        return min(self.options, key=lambda o: (o.area, o.runtime_s))


def _is_true(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes", "y", "t")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    return bool(v)


def check_profile_columns(profiles: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in profiles.columns]
    if missing:
        raise SaturnError(
            f"the profile table lacks column(s) {', '.join(missing)}; "
            f"it needs at least {', '.join(REQUIRED_COLUMNS)}"
        )


def row_host_gb(r: dict) -> float:
    """A row's host memory for its job: the measured peak, else the prior's estimate, else 0
    (not known: unconstrained). Columns from saturn.profiles.host_memory."""
    peak = _num(r.get("host_peak_gb"), math.nan)
    if peak > 0:
        return float(peak)
    est = _num(r.get("host_mem_gb"), math.nan)
    return float(est) if est > 0 else 0.0


def rows_to_options(job: JobSpec, rows: Union[pd.DataFrame, list[dict]]) -> list[Option]:
    """All feasible, allowed rows of one job (a DataFrame or its records) as Options (no pruning)."""
    out = []
    for r in (rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows):
        if not _is_true(r["feasible"]) or str(r.get("status") or "ok").lower() not in ("ok", "nan"):
            continue
        tech, gpus = str(r["technique"]), int(r["gpus"])
        if job.techniques is not None and tech not in job.techniques:
            continue
        if job.gpus is not None and gpus not in job.gpus:
            continue
        knobs = _knobs_text(r.get("knobs"))
        if tech in NUMERICS_KNOBS and numerics_conflict(job.numerics, tech, json.loads(knobs)):  # saturn.numerics
            continue
        step = _num(r["step_time_s"], math.nan)
        if not (step >= 0 and math.isfinite(step)) or gpus < 1:
            continue
        startup = _num(r.get("startup_s"), 0.0)
        phases = job_phases(r, job.steps, job.checkpoint_every)
        runtime = on_gpu_s(phases)
        if runtime <= 0:
            continue
        mem = _num(r.get("peak_mem_gb"), math.nan)
        out.append(
            Option(
                job=job.name,
                technique=tech,
                knobs=knobs,
                gpus=gpus,
                runtime_s=runtime,
                step_time_s=step,
                startup_s=startup,
                peak_mem_gb=None if math.isnan(mem) else mem,
                gpu_type=None if r.get("gpu_type") is None or pd.isna(r.get("gpu_type")) else str(r["gpu_type"]),
                phases=tuple((k, round(v, 6), src) for k, (v, src) in phases.items()),
                cpu_cores=_num(r.get("cpu_cores"), 0.0),  # additive column (saturn.profiler.ingest)
                host_mem_gb=row_host_gb(r),
            )
        )
    return out


_KNOBS: dict[str, str] = {}


def _knobs_text(raw) -> str:
    """canonical_knobs, memoized for the JSON text a table repeats on every row of a technique."""
    if not isinstance(raw, str):
        return canonical_knobs(raw)
    if raw not in _KNOBS:
        if len(_KNOBS) > 10_000:
            _KNOBS.clear()
        _KNOBS[raw] = canonical_knobs(raw)
    return _KNOBS[raw]


def pareto(options: list[Option]) -> list[Option]:
    """Keep options not dominated by one with <= GPUs and <= runtime (per GPU type)."""
    keep = []
    for gtype in {o.gpu_type for o in options}:
        best = math.inf
        for o in sorted((o for o in options if o.gpu_type == gtype), key=lambda o: (o.gpus, o.runtime_s)):
            if o.runtime_s < best:
                keep.append(o)
                best = o.runtime_s
    return sorted(keep, key=lambda o: (o.gpus, o.runtime_s, o.gpu_type or ""))


def fastest_per_size(options: list[Option]) -> list[Option]:
    best: dict = {}
    for o in options:
        key = (o.gpus, o.gpu_type)
        if key not in best or (o.runtime_s, o.technique, o.knobs) < (
            best[key].runtime_s,
            best[key].technique,
            best[key].knobs,
        ):
            best[key] = o
    return sorted(best.values(), key=lambda o: (o.gpus, o.gpu_type or ""))


def build_options(jobs: list[JobSpec], nodes: list[NodeSpec], profiles: pd.DataFrame) -> dict[str, JobOptions]:
    """Options per job; raises a user-facing error naming every job that cannot be planned."""
    check_profile_columns(profiles)
    groups = rows_by_job(profiles)
    missing = [j.name for j in jobs if j.name not in groups]
    if missing:
        raise MissingProfilesError(
            f"no profile rows for job(s): {', '.join(missing)}. "
            "Run `saturn profile WORKLOAD.yaml` on the target cluster or pass --profiles FILE."
        )
    out: dict[str, JobOptions] = {}
    problems = []
    max_gpus = max(n.gpus for n in nodes)
    shapes = list({(n.gpus, n.gpu_type, getattr(n, "cpu_cores", None), getattr(n, "host_memory_gb", None)): n
                   for n in nodes}.values())
    for job in jobs:
        feasible = rows_to_options(job, groups[job.name])
        fitting = [o for o in feasible if any(o.fits(n) for n in shapes)]
        if not feasible and job.gpus is not None and min(job.gpus) > max_gpus:  # the real cause (#15)
            problems.append(f"job {job.name!r} allows only GPU counts {sorted(job.gpus)} but the cluster's largest "
                            f"node has {max_gpus} GPUs; allow a count <= {max_gpus} or add a bigger node")
            continue
        if not feasible:
            problems.append(f"job {job.name!r} has no feasible option" + _allowed_note(job) + ": "
                            + why_infeasible(job, groups[job.name]))
            continue
        host = _host_memory_note(feasible, shapes)
        if not fitting and host:
            problems.append(f"job {job.name!r} has no option that fits a node's host memory: {host}")
            continue
        if not fitting:
            need = min(o.gpus for o in feasible)
            problems.append(
                f"job {job.name!r} needs at least {need} GPUs on one node but the largest node "
                f"has {max_gpus}; allow a technique that fits fewer GPUs (e.g. spilling) or add a bigger node"
            )
            continue
        out[job.name] = JobOptions(job=job, by_size=fastest_per_size(fitting), options=pareto(fitting),
                                   ruled_out=host_ruled_out(job, groups[job.name], feasible, shapes))
    if problems:
        raise InfeasibleError("cannot plan: " + "; ".join(problems))
    return out


def host_ruled_out(job: JobSpec, rows: list[dict], feasible: list[Option], shapes: list[NodeSpec]) -> list[str]:
    """The job's options ruled out by host memory, each with its reason (issue 33): rows the
    prior or a measurement marked infeasible for host memory, and options over a node's
    `host_memory_gb`. Shown by `saturn plan` (table and --json) beside the chosen option."""
    out = []
    for r in rows:
        cause = _cause(r)
        if "host memory" in cause and not _is_true(r.get("feasible")) and (
                job.techniques is None or str(r.get("technique")) in job.techniques):
            out.append(f"{r.get('technique')}x{r.get('gpus')} {_knobs_text(r.get('knobs'))}: {cause}")
    note = _host_memory_note(feasible, shapes)
    return sorted(set(out)) + ([note] if note else [])


def _host_memory_note(feasible: list[Option], shapes: list[NodeSpec]) -> str:
    """Why options that fit a node's GPUs do not fit it: their host memory ('' if none)."""
    parts = []
    for o in feasible:
        for n in shapes:
            cap = getattr(n, "host_memory_gb", None)
            if cap and o.gpus <= n.gpus and gpu_type_matches(o.gpu_type, n) and o.host_mem_gb > cap:
                parts.append(f"{o.technique}x{o.gpus} needs {o.host_mem_gb:.1f} GB of host memory, node {n.name} "
                             f"has {cap:g} GB (host_memory_gb)")
                break
    return "; ".join(sorted(set(parts))[:6])


def rows_by_job(profiles: pd.DataFrame) -> dict[str, list[dict]]:
    """job name -> its rows as dicts: one pass over the table (a pandas group per job costs
    about 1 ms each, 10 s for 10,000 jobs)."""
    out: dict[str, list[dict]] = {}
    for r in table_records(profiles):
        out.setdefault(str(r["job"]), []).append(r)
    return out


def _num_or_none(v: object) -> "float | None":
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if f == f and f > 0 else None


def _cause(r: dict) -> str:
    """One row's true cause: out of memory / crashed / timed out / ruled out / estimated, with the
    row's own reason (which carries the log path when the profiler kept one)."""
    status = str(r.get("status") or "").strip().lower()
    src = str(r.get("source") or "").strip().lower()
    reason = str(r.get("reason") or "").strip()
    reason = "" if reason.lower() == "nan" else reason
    if src.startswith("estimated"):
        what = "estimated infeasible (not measured)"
    elif status == "oom":
        what = "out of memory (measured)"
    elif status == "host_oom":  # the worker was killed by the kernel for host memory (#33)
        peak, node = _num_or_none(r.get("host_peak_gb")), _num_or_none(r.get("host_memory_gb"))
        what = "host out of memory (measured" + (f": killed at {peak:.1f} GB resident" if peak else "") + \
            (f", the node has {node:.1f} GB" if node else "") + ")"
    elif status == "timeout":
        what = "timed out (measured)"
    elif status == "failed":
        what = "crashed (measured)"
    elif status == "infeasible":
        what = "ruled out by the technique"
    elif _is_true(r.get("feasible")):
        what = "not allowed or no usable step time"
    else:
        what = "marked infeasible in the table"
    return what + (f": {reason[:200]}" if reason else "")


def why_infeasible(job: JobSpec, rows: Union[pd.DataFrame, list[dict]], limit: int = 6) -> str:
    """The causes of a job's options that cannot run, one per technique x GPU count (#24: never
    'failed' for what was skipped or only estimated)."""
    parts = []
    for r in (rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows):
        tech, g = str(r.get("technique")), r["gpus"]
        if job.techniques is not None and tech not in job.techniques:
            continue
        if job.gpus is not None and int(g) not in job.gpus:
            continue
        parts.append(f"{tech}x{g} {_cause(r)}")
    if not parts:
        return "no row for an allowed technique/GPU count (nothing was measured or estimated for them)"
    more = f"; and {len(parts) - limit} more" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


def _allowed_note(job: JobSpec) -> str:
    parts = []
    if job.techniques is not None:
        parts.append(f"techniques {sorted(job.techniques)}")
    if job.gpus is not None:
        parts.append(f"GPU counts {sorted(job.gpus)}")
    return f" among its allowed {' and '.join(parts)}" if parts else ""
