"""A plan from outside (`saturn run --plan FILE`, `saturn.run(plan=...)`) checked against every
job's constraints before anything runs.

Why: the executor launches a given plan as written. A hand-edited or stale plan could give a
`gpus: [1]` job two devices (or one device twice), a `techniques: [spilling]` job ddp, or knobs
that do not exist or are out of range -- the job then trains on what its spec forbids, or dies
mid-run. Each problem is named with the job, the plan's field and the fix (SaturnError, exit 2):

1. the plan matches the workload (every job once, nodes and GPU ids of this cluster):
   `saturn.planner.plan.match_plan`, the check `read_plan` applies to a file;
2. devices: no device twice, as many devices as one of the job's allowed GPU counts
   (`gpus:`, default 1, 2, 4, ... up to the largest node);
3. the technique is one the job allows (`techniques:`) and a registered one;
4. knobs exist for that technique and are in range (`saturn.techniques.registry.validate_knobs`),
   and agree with the job's pinned `knobs:`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from saturn.errors import SaturnError


def as_checked_plan(plan: Any, wl: Any, where: str) -> Any:
    """`plan` (a Plan, a plan dict, or a JSON path) as a Plan that fits workload `wl`; else a
    SaturnError naming every problem. `where` names the plan in messages (e.g. "--plan p.json")."""
    from saturn.planner.plan import Plan, match_plan, read_plan
    from saturn.techniques.registry import technique_names

    known = set(technique_names()).union(*(j.techniques or () for j in wl.jobs))
    if isinstance(plan, (str, os.PathLike)):
        plan = read_plan(Path(plan), wl.jobs, wl.cluster, techniques=known)
    else:
        if isinstance(plan, dict):
            try:
                plan = Plan.from_dict(plan)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                raise SaturnError(f"{where}: not a Saturn plan ({type(exc).__name__}: {exc}); pass the Plan "
                                  "saturn.plan() returns, its to_dict(), or a JSON file from "
                                  "`saturn plan --json`") from None
        if not isinstance(plan, Plan):
            raise SaturnError(f"{where}: expected a Plan, a plan dict or a JSON path, not {type(plan).__name__}")
        match_plan(plan, wl.jobs, wl.cluster, techniques=known, where=where)
    problems = [p for a in plan.assignments for p in _assignment_problems(a, wl)]
    if problems:
        raise SaturnError(f"{where} breaks its jobs' constraints: {'; '.join(problems)}. Make the plan for this "
                          "workload with `saturn plan W.yaml --json FILE` (or change the job), or leave the plan out")
    return plan


def _assignment_problems(a: Any, wl: Any) -> list[str]:
    from saturn.planner.plan import group_members
    from saturn.profiler.cells import allowed_techniques, gpu_counts

    jobs = {j.name: j for j in wl.jobs}
    out = []
    gpus = list(a.gpus)
    twice = sorted({g for g in gpus if gpus.count(g) > 1})
    if twice:
        out.append(f"job {a.job!r}: field `gpus` {gpus} names device(s) {twice} more than once; give each device once")
    if group_members(a.job):  # a SHARP or fused group: its rows came from the planner; devices only
        return out
    job = jobs.get(a.job)
    if job is None:  # named by match_plan
        return out
    largest = max((int(n.gpus) for n in (getattr(wl.cluster, "nodes", None) or [])), default=len(set(gpus)))
    allowed_counts = gpu_counts(job, largest)
    if len(set(gpus)) not in allowed_counts:
        out.append(f"job {a.job!r}: field `gpus` {gpus} gives it {len(set(gpus))} device(s), but the job allows "
                   f"{allowed_counts} (its `gpus:`); plan it on one of those counts")
    allowed = allowed_techniques(job)
    if a.technique not in allowed:
        out.append(f"job {a.job!r}: field `technique` is {a.technique!r}, but the job allows {allowed} "
                   "(its `techniques:`); plan it with one of those")
        return out
    out += _knob_problems(a, job)
    return out


def _knob_problems(a: Any, job: Any) -> list[str]:
    from saturn.techniques.registry import validate_knobs

    knobs = a.knobs if isinstance(a.knobs, dict) else None
    if knobs is None:
        return [f"job {a.job!r}: field `knobs` must be a mapping of knob: value, not {a.knobs!r}"]
    try:
        validate_knobs(a.technique, knobs, where=f"job {a.job!r}: field `knobs`")
    except (ValueError, SaturnError) as exc:
        return [f"{exc} (see `saturn techniques` for each knob's range)"]
    pinned = ((getattr(job, "knobs", None) or {}).get(a.technique)) or {}
    differ = {k: v for k, v in pinned.items() if k in knobs and knobs[k] != v}
    return [f"job {a.job!r}: field `knobs` sets {k}={knobs[k]!r}, but the job pins {k}={v!r} (its "
            f"`knobs: {{{a.technique}: ...}}`); plan it with the pinned value" for k, v in differ.items()]
