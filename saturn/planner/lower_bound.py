"""Valid lower bounds on the makespan, used to report plan quality (makespan / bound).

`simple_bound` is the textbook one from the SPASE paper: max(longest job at its fastest option,
total minimal GPU-area / total GPUs). `allotment_bound` is never weaker and still valid: in a plan
of makespan C every job runs an option of runtime <= C, so it occupies at least the least area
among *those* options, hence C >= sum_j min{area_o : runtime_o <= C} / total GPUs. The smallest C
satisfying both is the bound. It matters when fast options are GPU-hungry (jobs that scale
badly): the simple bound pairs the fastest runtime with the smallest area, which no plan can do.

With `fixed` (running) jobs, every plan also lasts until the last of them ends, and their GPU-area
up to that end is taken before any planned job's: both bounds add it.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from saturn.planner.inputs import NodeSpec
from saturn.planner.options import JobOptions
from saturn.planner.plan import Assignment


def _fixed_end_area(fixed: Sequence[Assignment]) -> tuple[float, float]:
    return max((a.end_s for a in fixed), default=0.0), sum(len(a.gpus) * a.duration_s for a in fixed)


def simple_bound(options: Mapping[str, JobOptions], nodes: Sequence[NodeSpec],
                 fixed: Sequence[Assignment] = ()) -> float:
    total = sum(n.gpus for n in nodes)
    fixed_end, fixed_area = _fixed_end_area(fixed)
    longest = max((jo.fastest().runtime_s for jo in options.values()), default=0.0)
    area = sum(jo.min_area().area for jo in options.values()) + fixed_area
    return max(longest, area / total, fixed_end)


def _min_area_within(jo: JobOptions, c: float) -> float:
    return min((o.area for o in jo.options if o.runtime_s <= c), default=math.inf)


def allotment_bound(options: Mapping[str, JobOptions], nodes: Sequence[NodeSpec],
                    fixed: Sequence[Assignment] = ()) -> float:
    """min over candidate C of max(C, sum_j minarea_j(C) / G); see the module docstring.

    Computed for every candidate C at once (numpy, O(options log options)), because it runs on
    every plan, including workloads of 10,000 jobs: minarea_j(C) is a step function of C that
    drops at job j's option runtimes, so sum_j minarea_j(C) is a cumulative sum of those drops
    over all options sorted by runtime."""
    if not options:
        return simple_bound(options, nodes, fixed)
    total = sum(n.gpus for n in nodes)
    _, fixed_area = _fixed_end_area(fixed)
    runtimes, drops = [], []
    for jo in options.values():
        best = math.inf
        for o in sorted(jo.options, key=lambda o: (o.runtime_s, o.area)):
            if o.area < best:  # job j's least area within runtime C drops here
                runtimes.append(o.runtime_s)
                drops.append(o.area - (best if best < math.inf else 0.0))
                best = o.area
    r = np.asarray(runtimes)
    order = np.argsort(r, kind="stable")
    r, area = r[order], np.cumsum(np.asarray(drops)[order])
    last = np.append(r[1:] != r[:-1], True)  # the area once every option of runtime <= r counts
    r, area = r[last], area[last]
    longest = max(jo.fastest().runtime_s for jo in options.values())
    ok = r >= longest  # below it some job has no option at all
    best = float(np.min(np.maximum(r[ok], (area[ok] + fixed_area) / total)))
    return max(best, simple_bound(options, nodes, fixed))


def allotment_bound_reference(options: Mapping[str, JobOptions], nodes: Sequence[NodeSpec],
                              fixed: Sequence[Assignment] = ()) -> float:
    """The same bound by its definition, one candidate C at a time (for tests)."""
    if not options:
        return simple_bound(options, nodes, fixed)
    total = sum(n.gpus for n in nodes)
    _, fixed_area = _fixed_end_area(fixed)
    longest = max(jo.fastest().runtime_s for jo in options.values())
    cands = sorted({o.runtime_s for jo in options.values() for o in jo.options if o.runtime_s >= longest})
    best = math.inf
    for c in cands:  # area(C) is a step function that only drops at option runtimes
        if c >= best:
            break
        area = sum(_min_area_within(jo, c) for jo in options.values()) + fixed_area
        best = min(best, max(c, area / total))
    return max(best, simple_bound(options, nodes, fixed))


def lower_bound(options: Mapping[str, JobOptions], nodes: Sequence[NodeSpec],
                fixed: Sequence[Assignment] = ()) -> float:
    return allotment_bound(options, nodes, fixed)
