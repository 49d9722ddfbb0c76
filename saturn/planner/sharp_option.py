"""SHARP as a planner option for a *group* of jobs (no torch here: the solver stays generic).

Why a module of its own: every other option belongs to one job, a SHARP option to several (their
models share one pool of GPUs, shard task by shard task; see `saturn.sharp`). Rather than teach
the time-indexed MILP a second kind of column, a group is planned as one *pseudo-job* named
`sharp:a+b+c` whose only option is its profiled SHARP row, standing in for its members: the
planner solves the workload as it is and once per profiled group (members replaced by the
pseudo-job) and keeps the plan with the smaller makespan. The chosen plan is valid for the
ordinary validator, because the pseudo-job is an ordinary job with an ordinary profile row.

Profiling a group is like profiling any option: a short SHARP trial of the members together
(scripts/bench_sharp.py runs one and emits the row) measures the group's wall time per member
step, written as a profile row (`group_row`)

    job = "sharp:a+b+c", technique = "sharp", gpus = G, step_time_s = wall / sum(member steps)

so the pseudo-job's runtime is step_time_s * (sum of the members' steps) + startup_s. Rows are
measurements; no group row is invented from solo profiles.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import pandas as pd

from saturn.planner.inputs import JobSpec, normalize_jobs

PREFIX = "sharp:"
TECHNIQUE = "sharp"


def group_name(members: list[str]) -> str:
    """The pseudo-job name of a group (members in the given order: the order is not a choice)."""
    if len(members) < 2:
        raise ValueError(f"a SHARP group needs at least 2 jobs, got {members}")
    return PREFIX + "+".join(members)


def members_of(name: str) -> list[str]:
    return name[len(PREFIX):].split("+") if name.startswith(PREFIX) else []


def is_group(name: str) -> bool:
    return str(name).startswith(PREFIX)


def has_groups(profiles: pd.DataFrame) -> bool:
    return "job" in profiles.columns and bool(profiles["job"].astype(str).str.startswith(PREFIX).any())


def group_row(members: list[str], step_time_s: float, gpus: int = 1, *, knobs: Any = None,
              startup_s: float = 0.0, gpu_type: Optional[str] = None,
              peak_mem_gb: Optional[float] = None) -> dict[str, Any]:
    """A profile-table row for a measured SHARP group (see the module docstring)."""
    import json

    return {"job": group_name(members), "technique": TECHNIQUE, "gpus": int(gpus),
            "knobs": json.dumps(knobs or {}, sort_keys=True), "step_time_s": float(step_time_s),
            "startup_s": float(startup_s), "feasible": True, "status": "ok",
            "gpu_type": gpu_type, "peak_mem_gb": peak_mem_gb}


def _variants(specs: list[JobSpec], profiles: pd.DataFrame, fixed_names: set[str]
              ) -> list[tuple[str, list[JobSpec]]]:
    by_name = {j.name: j for j in specs}
    out = []
    for g in sorted(set(profiles["job"].astype(str))):
        if not is_group(g):
            continue
        members = members_of(g)
        if len(members) < 2 or any(m not in by_name or m in fixed_names for m in members):
            continue  # a group only replaces jobs still to plan
        if any((allowed := by_name[m].techniques) is not None and not (allowed & {TECHNIQUE})
               for m in members):
            continue  # a member whose allowed techniques exclude sharp
        pseudo = JobSpec(g, sum(by_name[m].steps for m in members), frozenset({TECHNIQUE}))
        out.append((g, [j for j in specs if j.name not in members] + [pseudo]))
    return out


def plan_with_groups(plan_fn: Callable[..., Any], jobs: Any, cluster: Any,
                     profiles: pd.DataFrame, *, time_limit_s: float = 30, fixed: Any = None,
                     **kw: Any) -> Any:
    """The best of: `plan_fn` on the workload as it is, and on each variant where a profiled
    SHARP group, or fused groups (`fused_option.variants`), replace their members. `plan_fn`
    is `saturn.planner.solve.plan`; it is called
    with `_groups=False` so that it does not come back here."""
    specs = normalize_jobs(jobs)
    fixed_names = {str(a["job"] if isinstance(a, dict) else a.job) for a in (fixed or [])}
    from saturn.planner import fused_option  # fused groups are offered the same way

    variants = _variants(specs, profiles, fixed_names) + fused_option.variants(specs, profiles, fixed_names)
    solo_rows = profiles[~profiles["job"].astype(str).map(lambda j: is_group(j) or fused_option.is_group(j))]
    share = time_limit_s / (1 + len(variants))
    best = plan_fn(specs, cluster, solo_rows, time_limit_s=share, fixed=fixed, _groups=False, **kw)
    for _group, variant in variants:
        try:
            cand = plan_fn(variant, cluster, profiles, time_limit_s=share, fixed=fixed,
                           _groups=False, **kw)
        except Exception as exc:  # e.g. the group does not fit any node: the variant is out
            from saturn.errors import SaturnError

            if isinstance(exc, SaturnError):
                continue
            raise
        if cand.makespan_s < best.makespan_s - 1e-9:
            best = cand
    return best


def expand(assignments: list[Any]) -> list[dict[str, Any]]:
    """Per-member view of a plan (for display and for running a group): each member of a group
    assignment gets the group's node, GPUs and window, technique `sharp` and its group name."""
    out = []
    for a in assignments:
        d = a.to_dict() if hasattr(a, "to_dict") else dict(a)
        if is_group(d["job"]):
            for m in members_of(d["job"]):
                out.append({**d, "job": m, "knobs": {**d.get("knobs", {}), "group": d["job"]}})
        else:
            out.append(d)
    return out
