"""The four ways people plan by hand, which every summary compares Saturn against.

All are FIFO in workload order unless named otherwise and produce valid plans with concrete GPU
ids (so the validator checks them too). They use `JobOptions.by_size` (fastest option per GPU
count, before Pareto pruning) because they fix the GPU count themselves.
"""

from __future__ import annotations

import heapq
from typing import Any, Mapping, Optional, Sequence

from saturn.planner.inputs import NodeSpec
from saturn.planner.options import JobOptions, Option
from saturn.planner.plan import Assignment
from saturn.planner.schedule import Choice, list_schedule, make_assignment


def _best_at_most(jo: JobOptions, node: NodeSpec, k: int) -> Optional[Option]:
    """Fastest option with the most GPUs <= k that fits the node (the "whole group" choice)."""
    fit = [o for o in jo.by_size if o.gpus <= k and o.fits(node)]
    if not fit:
        return None
    top = max(o.gpus for o in fit)
    return min((o for o in fit if o.gpus == top), key=lambda o: o.runtime_s)


def _groups_sequential(options: Mapping[str, JobOptions], nodes: Sequence[NodeSpec], k: Optional[int],
                       fixed: Sequence[Assignment] = ()) -> Optional[list[Assignment]]:
    """Split nodes into exclusive groups of k GPUs (None = whole node); FIFO to the group free first.

    A group is free once every fixed (running) job on one of its GPUs has ended."""
    busy_until: dict[tuple[str, int], float] = {}
    for a in fixed:
        for g in a.gpus:
            busy_until[(a.node, g)] = max(busy_until.get((a.node, g), 0.0), a.end_s)
    groups: list[list[Any]] = []  # [free_at, node, gpu ids]
    for n in nodes:
        size = n.gpus if k is None else k
        for start in range(0, n.gpus - size + 1, size):
            ids = list(range(start, start + size))
            groups.append([max([0.0] + [busy_until.get((n.name, g), 0.0) for g in ids]), n, ids])
    if not groups:
        return None
    # Groups of one shape (node kind, size) are interchangeable: the one free first wins (ties:
    # the earlier group), so a heap per shape replaces a scan over every group for every job.
    shapes: dict[tuple, list] = {}
    for gi, (free, n, ids) in enumerate(groups):
        shapes.setdefault((n.gpus, n.gpu_type, getattr(n, "cpu_cores", None), getattr(n, "host_memory_gb", None),
                           len(ids)), []).append((free, gi))
    heaps = list(shapes.values())
    for h in heaps:
        heapq.heapify(h)
    out = []
    for jo in options.values():
        best = None
        for h in heaps:
            free, gi = h[0]
            _, n, ids = groups[gi]
            o = _best_at_most(jo, n, len(ids))
            if o is not None and (best is None or (free + o.runtime_s, gi) < best[:2]):
                best = (free + o.runtime_s, gi, o, h)
        if best is None:
            return None
        end, gi, o, h = best
        _, n, ids = groups[gi]
        out.append(make_assignment(o, n.name, h[0][0], ids[: o.gpus]))
        heapq.heapreplace(h, (end, gi))
    return out


def whole_node(options, nodes, fixed=()) -> Optional[list[Assignment]]:
    """Each job on all GPUs of a node with its best technique at that size, one after another."""
    return _groups_sequential(options, nodes, None, fixed)


def fixed_split(options, nodes, fixed=()) -> tuple[Optional[int], Optional[list[Assignment]]]:
    """Equal groups of k GPUs per node (best k among powers of two between 1 and the node size)."""
    best: tuple[Optional[int], Optional[list[Assignment]]] = (None, None)
    biggest = max(n.gpus for n in nodes)
    k = 2
    while k < biggest:
        plan = _groups_sequential(options, nodes, k, fixed)
        if plan is not None and (best[1] is None or _ms(plan) < _ms(best[1])):
            best = (k, plan)
        k *= 2
    return best


def one_gpu(options, nodes, fixed=()) -> list[Assignment]:
    """The fastest 1-GPU option (spilling where nothing else fits); smallest option otherwise."""
    chosen = []
    for jo in options.values():
        ones = [o for o in jo.by_size if o.gpus == 1]
        pool = ones or [o for o in jo.by_size if o.gpus == min(p.gpus for p in jo.by_size)]
        chosen.append(Choice(min(pool, key=lambda o: o.runtime_s)))
    return list_schedule(nodes, chosen, fixed)


def greedy_min_area(options, nodes, fixed=()) -> list[Assignment]:
    """Least-GPU-area option per job, longest first, earliest finish with backfilling."""
    chosen = [jo.min_area() for jo in options.values()]
    chosen.sort(key=lambda o: (-o.runtime_s, o.job))
    return list_schedule(nodes, (Choice(o) for o in chosen), fixed)


def _ms(a: Sequence[Assignment]) -> float:
    return max((x.end_s for x in a), default=0.0)


def baseline_plans(options: Mapping[str, JobOptions], nodes: Sequence[NodeSpec],
                   fixed: Sequence[Assignment] = ()) -> dict[str, list[Assignment]]:
    """name -> assignments (of the jobs to plan, around the `fixed` ones), per applicable baseline."""
    out = {}
    wn = whole_node(options, nodes, fixed)
    if wn is not None:
        out["whole_node"] = wn
    out["one_gpu"] = one_gpu(options, nodes, fixed)
    k, fs = fixed_split(options, nodes, fixed)
    if fs is not None:
        out["fixed_split"] = fs
    out["greedy_min_area"] = greedy_min_area(options, nodes, fixed)
    return out
