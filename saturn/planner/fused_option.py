"""Fused groups as planner options: the fused width is a decision, like technique and GPU count.

Why a module of its own: like a SHARP group (`sharp_option`), a fused group (`saturn.fused`: K
jobs of one shape trained as one vmapped model on one GPU) belongs to several jobs. It is planned
the same way: a profiled group is a pseudo-job `fused:a+b+c` whose only option is its group row,

    job = "fused:a+b+c", technique = "fused", gpus = 1, step_time_s = one group step (all K members)

and its runtime is step_time_s * max(members' steps) + startup_s (the members advance together; a
member that finishes early leaves, so this is an upper bound). `sharp_option.plan_with_groups`
solves the workload as it is and once per *variant* -- the variants of this module replace the
members of one group, or of every disjoint group of one width at once (so a sweep of eight jobs
of two architectures can run as two groups of four) -- and keeps the plan with the smaller
makespan: a group is chosen only when its profile says it pays against its members' solo options.

Widths: the profiler measures a shape's group step time at a few widths (`measure_widths`);
`estimate_step_time` interpolates (and, past the largest, extrapolates linearly) the others, and
`width_rows` turns them into rows for chunks of the shape's jobs, labelled `source` "measured" or
"estimated from widths [...]". Which jobs may share a group at all is `saturn.fused.grouping`'s
decision (a refused grouping gets no row).
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import pandas as pd

from saturn.fused.grouping import PREFIX, TECHNIQUE, group_name, is_group, members_of
from saturn.planner.inputs import JobSpec

__all__ = ["PREFIX", "TECHNIQUE", "estimate_step_time", "group_name", "group_row", "has_groups",
           "is_group", "members_of", "variants", "width_rows"]


def has_groups(profiles: pd.DataFrame) -> bool:
    return "job" in profiles.columns and bool(profiles["job"].astype(str).map(is_group).any())


def group_row(members: Sequence[str], step_time_s: float, *, startup_s: float = 0.0,
              gpu_type: Optional[str] = None, peak_mem_gb: Optional[float] = None,
              source: str = "measured") -> dict[str, Any]:
    """A profile-table row for a fused group (module docstring); `step_time_s` is one group step."""
    if not (step_time_s > 0):
        raise ValueError(f"step_time_s must be > 0, got {step_time_s!r}")
    return {"job": group_name(list(members)), "technique": TECHNIQUE, "gpus": 1,
            "knobs": json.dumps({"width": len(members)}, sort_keys=True),
            "step_time_s": float(step_time_s), "startup_s": float(startup_s), "feasible": True,
            "status": "ok", "gpu_type": gpu_type, "peak_mem_gb": peak_mem_gb, "source": source}


def estimate_step_time(measured: dict[int, float], width: int) -> float:
    """A group step time at `width` from measured {width: step time}: piecewise-linear in the
    width between measurements, linear beyond them (the nearest segment's slope; a negative
    slope, i.e. measurement noise, counts as flat: a wider group is never faster)."""
    if not measured:
        raise ValueError("no measured widths to estimate from")
    if width in measured:
        return float(measured[width])
    ws = sorted(measured)
    if len(ws) == 1:  # one point: assume members cost the same each (no fusion gain assumed)
        return float(measured[ws[0]]) * width / ws[0]
    if width < ws[0]:
        lo, hi = ws[0], ws[1]
    elif width > ws[-1]:
        lo, hi = ws[-2], ws[-1]
    else:
        lo = max(w for w in ws if w < width)
        hi = min(w for w in ws if w > width)
    slope = max((measured[hi] - measured[lo]) / (hi - lo), 0.0)  # a wider group is never faster
    base = hi if width > hi else lo
    return max(float(measured[base] + slope * (width - base)), 1e-9)


def width_rows(jobs: Sequence[str], measured: dict[int, float], widths: Sequence[int], *,
               startup_s: float = 0.0, gpu_type: Optional[str] = None) -> list[dict[str, Any]]:
    """Rows for `jobs` (one shape) cut into consecutive groups of each width in `widths` (>= 2):
    measured step times where the width was measured, estimated ones elsewhere."""
    rows = []
    for k in sorted({int(w) for w in widths if 2 <= int(w) <= len(jobs)}):
        t = estimate_step_time(measured, k)
        src = "measured" if k in measured else f"estimated from widths {sorted(measured)}"
        for i in range(0, len(jobs) - k + 1, k):
            rows.append(group_row(jobs[i:i + k], t, startup_s=startup_s, gpu_type=gpu_type, source=src))
    return rows


def _pseudo(name: str, by_name: dict[str, JobSpec]) -> JobSpec:
    members = [by_name[m] for m in members_of(name)]
    return JobSpec(name, max(m.steps for m in members), frozenset({TECHNIQUE}),
                   weight=sum(m.weight for m in members))


def variants(specs: list[JobSpec], profiles: pd.DataFrame, fixed_names: set[str]
             ) -> list[tuple[str, list[JobSpec]]]:
    """Workload variants where fused groups replace their members (module docstring): one per
    profiled group, plus one per width with every disjoint group of that width."""
    by_name = {j.name: j for j in specs}
    valid = []
    for g in sorted(set(profiles["job"].astype(str))):
        members = members_of(g) if is_group(g) else []
        if len(members) < 2 or any(m not in by_name or m in fixed_names for m in members):
            continue  # a group only replaces jobs still to plan
        if any((allowed := by_name[m].techniques) is not None and TECHNIQUE not in allowed
               for m in members):
            continue  # a member whose allowed techniques exclude fused
        valid.append(g)
    sets = [[g] for g in valid]
    for k in sorted({len(members_of(g)) for g in valid}):
        taken: set[str] = set()
        chosen = []
        for g in (g for g in valid if len(members_of(g)) == k):
            if taken.isdisjoint(members_of(g)):
                chosen.append(g)
                taken |= set(members_of(g))
        if len(chosen) > 1:
            sets.append(chosen)
    out = []
    for groups in sets:
        replaced = {m for g in groups for m in members_of(g)}
        out.append(("+".join(groups), [j for j in specs if j.name not in replaced]
                    + [_pseudo(g, by_name) for g in groups]))
    return out
