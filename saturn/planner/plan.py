"""The plan the planner returns, its JSON form, and an independent validator.

`validate_plan` deliberately re-derives everything from the raw inputs (the profile table, the
cluster) instead of trusting the planner's internal option objects: it is the last line of defence
against a solver bug, so it must not share the solver's assumptions. `plan()` calls it on every plan
before returning it, and the property tests call it on thousands of random instances.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import pandas as pd

from saturn.planner.inputs import (
    canonical_knobs,
    gpu_type_matches,
    job_runtime_s,
    normalize_cluster,
    normalize_jobs,
    table_records,
)


class InvalidPlanError(AssertionError):
    """A plan breaks a hard rule (a planner bug, or a hand-edited plan file)."""


@dataclass
class Assignment:
    """One job's decision: technique + knobs, a node, concrete GPU ids and its time window."""

    job: str
    technique: str
    knobs: dict
    node: str
    gpus: list[int]
    start_s: float
    end_s: float
    cpu_cores: float = 0.0  # input-pipeline cores planned for the job (0 = not planned)
    host_mem_gb: float = 0.0  # host memory planned for the job on its node (0 = not planned)
    # where the row this decision rests on came from (saturn.planner.provenance): "measured here",
    # "measured elsewhere", "extrapolated", "simulated", "guessed" or "unlabelled"; None = not known yet
    provenance: Optional[str] = None
    source: Optional[str] = None  # that row's own `source` text
    phases: dict = field(default_factory=dict)  # phase -> {"s", "source"} (duration model)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict:
        d = {
            "job": self.job,
            "technique": self.technique,
            "knobs": dict(self.knobs),
            "node": self.node,
            "gpus": [int(g) for g in self.gpus],
            "start_s": float(self.start_s),
            "end_s": float(self.end_s),
            **({"phases": self.phases} if self.phases else {}),
            **({"cpu_cores": float(self.cpu_cores)} if self.cpu_cores else {}),
            **({"host_mem_gb": float(self.host_mem_gb)} if self.host_mem_gb else {}),
        }
        if self.provenance is not None:
            d["provenance"] = self.provenance
            d["source"] = self.source
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Assignment":
        knobs = d.get("knobs") or {}
        if isinstance(knobs, str):
            knobs = json.loads(knobs or "{}")
        return cls(
            job=str(d["job"]),
            technique=str(d["technique"]),
            knobs=dict(knobs),
            node=str(d["node"]),
            gpus=[int(g) for g in d["gpus"]],
            start_s=float(d["start_s"]),
            end_s=float(d["end_s"]),
            phases=dict(d.get("phases") or {}),
            cpu_cores=float(d.get("cpu_cores") or 0.0),
            host_mem_gb=float(d.get("host_mem_gb") or 0.0),
            provenance=d.get("provenance"),
            source=d.get("source"),
        )


@dataclass
class SolverInfo:
    """How the plan was found.

    status: "optimal" (makespan equals the lower bound), "gap_limit" (within the requested gap of
    the lower bound), "slot_optimal" (the time-slotted MILP was solved to optimality; the real plan
    is within slot rounding of optimal), "time_limit" (stopped by the time limit), "heuristic" (no
    MILP was needed or possible). gap = (makespan - lower_bound) / makespan, a certified gap.
    """

    status: str = "heuristic"
    gap: float = 0.0
    time_s: float = 0.0
    source: str = ""  # which candidate won: "milp", "greedy:...", "warm_start", "baseline:..."
    milp_status: Optional[str] = None
    milp_gap: Optional[float] = None
    stop: Optional[str] = None  # why the search ended early, in words (planner/search.py)


@dataclass
class Plan:
    assignments: list[Assignment]
    lower_bound_s: float = 0.0
    solver: SolverInfo = field(default_factory=SolverInfo)
    baselines: dict[str, float] = field(default_factory=dict)  # baseline name -> makespan
    # Completion-time objectives (planner/objectives.py): the weighted mean completion time (s),
    # its lower bound, and each baseline's value; for "makespan" these stay empty.
    objective: str = "makespan"
    objective_value: Optional[float] = None
    objective_lower_bound: Optional[float] = None
    objective_baselines: dict[str, float] = field(default_factory=dict)
    # job -> its options ruled out by host memory, each with the reason (issue 33)
    ruled_out: dict[str, list[str]] = field(default_factory=dict)

    @property
    def makespan_s(self) -> float:
        return max((a.end_s for a in self.assignments), default=0.0)

    @property
    def durable_s(self) -> float:
        """When every result is durable: the makespan, or later where a job's final checkpoint
        drains after it left its GPU (its planned `drain` phase)."""
        return max((a.end_s + float((a.phases.get("drain") or {}).get("s", 0.0)) for a in self.assignments),
                   default=0.0)

    @property
    def mean_completion_s(self) -> float:
        """Unweighted mean end time of the jobs (every objective reports it)."""
        return sum(a.end_s for a in self.assignments) / len(self.assignments) if self.assignments else 0.0

    def by_job(self) -> dict[str, Assignment]:
        return {a.job: a for a in self.assignments}

    def to_dict(self) -> dict:
        return {
            "makespan_s": self.makespan_s,
            **({"durable_s": self.durable_s} if self.durable_s > self.makespan_s else {}),
            "lower_bound_s": float(self.lower_bound_s),
            "solver": asdict(self.solver),
            "baselines": {k: float(v) for k, v in self.baselines.items()},
            "assignments": [a.to_dict() for a in sorted(self.assignments, key=lambda a: (a.start_s, a.job))],
            **self._objective_dict(),
            **({"provenance": _provenance_summary(self.assignments)}
               if any(a.provenance is not None for a in self.assignments) else {}),
            **({"ruled_out": {j: list(v) for j, v in self.ruled_out.items()}} if self.ruled_out else {}),
        }

    def _objective_dict(self) -> dict:
        if self.objective == "makespan":
            return {}
        return {"objective": {"name": self.objective, "value_s": self.objective_value,
                              "lower_bound_s": self.objective_lower_bound,
                              "mean_completion_s": self.mean_completion_s,
                              "baselines": {k: float(v) for k, v in self.objective_baselines.items()}}}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        solver = d.get("solver") or {}
        known = SolverInfo.__dataclass_fields__
        return cls(
            assignments=[Assignment.from_dict(a) for a in d.get("assignments", [])],
            lower_bound_s=float(d.get("lower_bound_s", 0.0)),
            solver=SolverInfo(**{k: v for k, v in solver.items() if k in known}),
            baselines={k: float(v) for k, v in (d.get("baselines") or {}).items()},
            objective=str((d.get("objective") or {}).get("name", "makespan")),
            objective_value=(d.get("objective") or {}).get("value_s"),
            objective_lower_bound=(d.get("objective") or {}).get("lower_bound_s"),
            objective_baselines=dict((d.get("objective") or {}).get("baselines") or {}),
            ruled_out={str(j): [str(x) for x in v] for j, v in (d.get("ruled_out") or {}).items()},
        )

    def to_json(self, path: Union[str, Path, None] = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: Union[str, Path]) -> "Plan":
        p = Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        return cls.from_dict(json.loads(p.read_text() if p else str(text_or_path)))


def read_plan(path: Union[str, Path], jobs: Any, cluster: Any = None, techniques: Any = None) -> Plan:
    """The plan in `path` (from `saturn plan --json`), refused (SaturnError, exit 2) when it does not
    parse or does not fit this workload: every job planned exactly once, no job of another workload,
    nodes and GPU ids of this cluster, techniques among `techniques` (the registry's names, passed
    by the caller: the planner does not import techniques). Checked before any work, so `saturn run
    --plan` never starts from another workload's plan."""
    from saturn.errors import SaturnError

    where = f"--plan {path}"
    try:
        d = json.loads(Path(path).read_text())
    except OSError as exc:
        raise SaturnError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SaturnError(f"{where}: not valid JSON ({exc}); write it with `saturn plan W.yaml --json FILE`") from None
    try:
        if not isinstance(d, dict) or not isinstance(d.get("assignments"), list):
            raise TypeError("no `assignments` list")
        plan = Plan.from_dict(d)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise SaturnError(f"{where}: not a Saturn plan ({type(exc).__name__}: {exc}); write it with "
                          "`saturn plan W.yaml --json FILE`") from None
    match_plan(plan, jobs, cluster, techniques, where)
    return plan


def match_plan(plan: Plan, jobs: Any, cluster: Any = None, techniques: Any = None, where: str = "plan") -> None:
    """`read_plan`'s workload check, for a plan from any door (a file, or a Plan handed to the API):
    SaturnError (exit 2) naming every mismatch."""
    from saturn.errors import SaturnError

    names = [str(getattr(j, "name", j)) for j in jobs]
    planned = [m for a in plan.assignments for m in (group_members(a.job) or [a.job])]  # a group: its members
    foreign = sorted(set(planned) - set(names))
    missing = sorted(set(names) - set(planned))
    twice = sorted({j for j in planned if planned.count(j) > 1})
    problems = []
    if foreign:
        problems.append(f"it plans job(s) not in this workload: {', '.join(foreign[:5])}"
                        + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else ""))
    if missing:
        problems.append(f"it lacks job(s) of this workload: {', '.join(missing[:5])}"
                        + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
    if twice:
        problems.append(f"it plans job(s) more than once: {', '.join(twice[:5])}")
    nodes = {n.name: n.gpus for n in (getattr(cluster, "nodes", None) or [])}
    if nodes:
        for a in plan.assignments:
            if a.node not in nodes:
                problems.append(f"job {a.job} is planned on node {a.node!r}, not in this cluster ({', '.join(nodes)})")
                break
            if any(not 0 <= g < nodes[a.node] for g in a.gpus) or not a.gpus:
                problems.append(f"job {a.job} is planned on GPUs {a.gpus} of node {a.node}, which has {nodes[a.node]}")
                break
    if techniques is not None:
        unknown = sorted({a.technique for a in plan.assignments if a.technique not in techniques
                          and ":" not in a.technique and not group_members(a.job)})
        if unknown:
            problems.append(f"it uses unregistered technique(s) {', '.join(unknown)} (registered: "
                            f"{', '.join(sorted(techniques))})")
    if problems:
        raise SaturnError(f"{where} does not match this workload: {'; '.join(problems)}. Make the plan for this "
                          "workload with `saturn plan W.yaml --json FILE`, or leave --plan out")


def group_members(name: str) -> list[str]:
    """The member jobs of a SHARP or fused group's pseudo-job name ([] for a plain job)."""
    from saturn.planner import fused_option, sharp_option

    return sharp_option.members_of(name) or fused_option.members_of(name)


def _provenance_summary(assignments: list) -> dict:
    from saturn.planner.provenance import summary

    return summary(assignments)


def _is_empty(jobs: Any) -> bool:
    try:
        return len(jobs) == 0
    except TypeError:
        return False


def as_plan(plan: Union[Plan, dict]) -> Plan:
    return plan if isinstance(plan, Plan) else Plan.from_dict(plan)


def _profiled_runtimes(rows: Union[pd.DataFrame, list[dict]], steps: float,
                       checkpoint_every: int = 0, only: Optional[tuple[str, int]] = None,
                       ) -> dict[tuple, list[tuple[float, Any]]]:
    """(technique, knobs, gpus) -> [(runtime, gpu_type)] over the feasible rows of one job
    (only those of technique and GPU count `only`, when given)."""
    out: dict[tuple, list] = {}
    for r in (rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows):
        feas = r["feasible"]
        if isinstance(feas, str):
            feas = feas.strip().lower() in ("true", "1", "yes", "y", "t")
        status = r.get("status")
        if not bool(feas) or pd.isna(r["feasible"]) or (isinstance(status, str) and status.lower() != "ok"):
            continue
        if only is not None and (str(r["technique"]), int(r["gpus"])) != only:
            continue
        key = (str(r["technique"]), canonical_knobs(r.get("knobs")), int(r["gpus"]))
        out.setdefault(key, []).append((job_runtime_s(r, steps, checkpoint_every), r.get("gpu_type")))
    return out


def validate_plan(plan: Union[Plan, dict], jobs: Any, cluster: Any, profiles: pd.DataFrame, *, rel_tol: float = 1e-6,
                  fixed: Optional[list] = None) -> None:
    """Raise InvalidPlanError listing every broken rule; return None if the plan is valid.

    Rules: every job exactly once and nothing else; its GPUs distinct, on one existing node, with
    valid ids; a feasible profile row (allowed technique and GPU count, matching GPU type) whose
    runtime equals end - start; no GPU runs two jobs at once; lower bound <= makespan.
    `fixed` (running jobs, Assignments or dicts): each must appear exactly as given -- technique,
    knobs, node, GPU ids, start and end -- whether or not it is also in `jobs`; its window is its
    remaining time, so it is not checked against the profile table, but its GPUs count as busy.
    """
    plan = as_plan(plan)
    fixed_by_job = {}
    for f in fixed or []:
        f = f if isinstance(f, Assignment) else Assignment.from_dict(f)
        fixed_by_job[f.job] = f
    jobs_n = {j.name: j for j in normalize_jobs(jobs)} if not (fixed_by_job and _is_empty(jobs)) else {}
    nodes = {n.name: n for n in normalize_cluster(cluster)}
    problems: list[str] = []
    span = max([abs(a.end_s) for a in plan.assignments] + [1.0])
    tol = rel_tol * span
    groups: dict[str, list[dict]] = {}
    for r in table_records(profiles):  # one pass: a pandas group per job is ~1 ms each
        groups.setdefault(str(r["job"]), []).append(r)
    seen: dict[str, int] = {}
    busy: dict[tuple[str, int], list[tuple[float, float, str]]] = {}
    for a in plan.assignments:
        seen[a.job] = seen.get(a.job, 0) + 1
        job, node = jobs_n.get(a.job), nodes.get(a.node)
        f = fixed_by_job.get(a.job)
        if f is not None:
            if (a.technique, canonical_knobs(a.knobs), a.node, sorted(a.gpus)) != (
                    f.technique, canonical_knobs(f.knobs), f.node, sorted(f.gpus)) \
                    or abs(a.start_s - f.start_s) > tol or abs(a.end_s - f.end_s) > tol:
                problems.append(f"{a.job}: fixed (running) job not kept as given: planned {a.technique} {a.knobs} "
                                f"on {a.node} GPUs {a.gpus} [{a.start_s:.6g}, {a.end_s:.6g}), fixed {f.technique} "
                                f"{f.knobs} on {f.node} GPUs {f.gpus} [{f.start_s:.6g}, {f.end_s:.6g})")
            if node is None:
                problems.append(f"{a.job}: unknown node {a.node!r}")
                continue
            if not a.gpus or len(set(a.gpus)) != len(a.gpus) or any(not 0 <= g < node.gpus for g in a.gpus):
                problems.append(f"{a.job}: bad GPU ids {a.gpus} on node {a.node} ({node.gpus} GPUs)")
            for g in a.gpus:
                busy.setdefault((a.node, g), []).append((a.start_s, a.end_s, a.job))
            continue
        if job is None:
            problems.append(f"{a.job}: not a job of this workload")
            continue
        if node is None:
            problems.append(f"{a.job}: unknown node {a.node!r}")
            continue
        if not a.gpus or len(set(a.gpus)) != len(a.gpus) or any(not 0 <= g < node.gpus for g in a.gpus):
            problems.append(f"{a.job}: bad GPU ids {a.gpus} on node {a.node} ({node.gpus} GPUs)")
        if not (math.isfinite(a.start_s) and math.isfinite(a.end_s)) or a.start_s < -tol or a.end_s <= a.start_s:
            problems.append(f"{a.job}: bad time window [{a.start_s}, {a.end_s}]")
        if job.techniques is not None and a.technique not in job.techniques:
            problems.append(f"{a.job}: technique {a.technique} not allowed")
        if job.gpus is not None and len(a.gpus) not in job.gpus:
            problems.append(f"{a.job}: {len(a.gpus)} GPUs not allowed")
        rows = groups.get(a.job)
        profiled = [] if rows is None else _profiled_runtimes(rows, job.steps, job.checkpoint_every,
                                                              (a.technique, len(a.gpus))).get(
            (a.technique, canonical_knobs(a.knobs), len(a.gpus)), []
        )
        runtimes = [rt for rt, gt in profiled if gpu_type_matches(gt, node)]
        if not runtimes:
            problems.append(f"{a.job}: no feasible profile row for {a.technique} {a.knobs} "
                            f"on {len(a.gpus)} GPUs of {a.node}")
        elif not any(abs(rt - a.duration_s) <= tol for rt in runtimes):
            problems.append(f"{a.job}: duration {a.duration_s:.6g}s differs from profiled runtime {runtimes[0]:.6g}s")
        for g in a.gpus:
            busy.setdefault((a.node, g), []).append((a.start_s, a.end_s, a.job))
    for name in {**jobs_n, **fixed_by_job}:
        if seen.get(name, 0) != 1:
            problems.append(f"{name}: assigned {seen.get(name, 0)} times (must be exactly once)")
    for (node_name, g), ivs in busy.items():
        ivs.sort()
        for (s0, e0, j0), (s1, e1, j1) in zip(ivs, ivs[1:]):
            if s1 < e0 - tol:
                problems.append(f"{node_name} GPU {g}: {j0} [{s0:.6g},{e0:.6g}) overlaps {j1} [{s1:.6g},{e1:.6g})")
    if plan.lower_bound_s > plan.makespan_s + tol:
        problems.append(f"lower bound {plan.lower_bound_s:.6g}s exceeds makespan {plan.makespan_s:.6g}s")
    if problems:
        raise InvalidPlanError("invalid plan:\n  " + "\n  ".join(problems))
