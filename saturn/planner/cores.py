"""CPU cores as a planned resource: each node has `cpu_cores`, each option needs `cpu_cores`.

Why: a job's input pipeline needs cores to keep its GPUs busy (the profiler measures samples per
core-second; an option's need is its samples/s at the profiled step time divided by that rate).
Jobs that share a node share its cores; a plan that co-locates jobs needing more cores than the
node has starves them all, so core capacity is a hard constraint like GPU capacity:

    sum_{j,o,s: s <= t < s + d_o} cores_o x[j,o,n,s] <= K_n - (cores of fixed jobs on n at t)

Three places enforce it, all through this module so that the solver core changes by a few lines:
`add_core_rows` adds those rows to the time-indexed MILP; `CoreTimeline` makes the list scheduler
(every heuristic plan and the MILP's compaction) place a job only where its cores are free;
`core_violations` checks a finished plan (the planner drops candidates that break it). A node
without `cpu_cores`, or an option with 0 cores (no ingestion measured), is unconstrained, so old
profiles and clusters plan exactly as before.

Host memory (issue 33) is the same kind of capacity: each node's `host_memory_gb`, each option's
`host_mem_gb` (its measured or estimated host peak, saturn.profiles.host_memory), shared by the
jobs a node runs at once. Each capacity is a `Resource`; the rows, timelines and checks below
take one (CORES by default) and `RESOURCES` lists every one the planner enforces.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class Resource:
    """A per-node capacity shared by the jobs running on it at once: what an option (or an
    Assignment) needs is its `need_attr`, what a node has its `capacity_attr` (None/0 = not
    planned)."""

    name: str
    unit: str
    need_attr: str
    capacity_attr: str

    def need(self, o: Any) -> float:
        return float(getattr(o, self.need_attr, 0) or 0)

    def capacity(self, n: Any) -> Optional[float]:
        c = getattr(n, self.capacity_attr, None)
        return float(c) if c else None


CORES = Resource("CPU cores", "cores", "cpu_cores", "cpu_cores")
HOST_MEMORY = Resource("host memory", "GB", "host_mem_gb", "host_memory_gb")
RESOURCES = (CORES, HOST_MEMORY)


def cores_needed(batch_size: float, step_time_s: float, samples_per_core_s: float) -> int:
    """Cores that keep one job's GPUs fed: samples consumed per second / samples one core makes."""
    if not (step_time_s > 0 and samples_per_core_s > 0):
        return 0
    return max(1, math.ceil(batch_size / step_time_s / samples_per_core_s - 1e-9))


def option_cores(o: Any) -> float:
    return float(getattr(o, "cpu_cores", 0) or 0)


def node_cores(n: Any) -> int | None:
    c = getattr(n, "cpu_cores", None)
    return int(c) if c else None


def constrained(nodes: Sequence[Any]) -> bool:
    """Whether any node plans any of RESOURCES."""
    return any(r.capacity(n) for n in nodes for r in RESOURCES)


class CoreTimeline:
    """Core use of one node over time (piecewise constant); answers "are c cores free in [t, t+d)"."""

    def __init__(self, capacity: float | None):
        self.capacity = capacity
        self.intervals: list[tuple[float, float, float]] = []  # (start, end, cores), sorted by start

    def fits(self, t: float, d: float, cores: float) -> bool:
        if not self.capacity or cores <= 0:
            return True
        if cores > self.capacity:
            return False
        end = t + d
        live = [(s, e, c) for s, e, c in self.intervals if s < end and e > t]
        # peak use inside [t, end) is reached at t or at some interval's start within it
        for p in [t] + [s for s, _, _ in live if s > t]:
            if sum(c for s, e, c in live if s <= p < e) + cores > self.capacity + 1e-9:
                return False
        return True

    def place(self, t: float, d: float, cores: float) -> None:
        if cores > 0:
            insort(self.intervals, (t, t + d, cores))


def core_violations(assignments: Sequence[Any], nodes: Sequence[Any], cores_of: dict[str, float],
                    fixed: Sequence[Any] = (), resource: Resource = CORES) -> list[str]:
    """Every (node, time) where the jobs running at once need more of `resource` than the node has."""
    cap = {n.name: resource.capacity(n) for n in nodes}
    out = []
    by_node: dict[str, list] = {}
    for a in list(fixed) + list(assignments):
        c = cores_of.get(a.job, resource.need(a))
        if c > 0 and cap.get(a.node):
            by_node.setdefault(a.node, []).append((a.start_s, a.end_s, c, a.job))
    for node, iv in by_node.items():
        limit = cap[node]
        assert limit is not None  # by_node holds only nodes with a core capacity
        for s, _, _, _ in iv:
            running = [(j, c) for s2, e2, c, j in iv if s2 <= s < e2]
            used = sum(c for _, c in running)
            if used > limit + 1e-9:
                out.append(f"node {node} at t={s:.0f}s: jobs {sorted(j for j, _ in running)} need {used:g} "
                           f"{resource.unit} of {resource.name}, the node has {limit:g}")
    return sorted(set(out))


def cores_ok(assignments: Sequence[Any], nodes: Sequence[Any], fixed: Sequence[Any] = ()) -> bool:
    """No node over any of RESOURCES at any time."""
    return not constrained(nodes) or not any(core_violations(assignments, nodes, {}, fixed, r) for r in RESOURCES)


def add_core_rows(h: Any, blocks: Sequence[Any], nodes: Sequence[Any], T: int,
                  fixed_slots: Sequence[tuple[int, float, int]] = (), resource: Resource = CORES) -> int:
    """Add the per-node, per-slot capacity rows of `resource` to a HiGHS model built by milp_model.

    blocks: milp_model.Block (job, option, group = node index, dur, col0, n_starts); fixed_slots:
    (node index, amount, slots held from 0) of running jobs. Returns the number of rows added.
    """
    import highspy

    entries: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for b in blocks:
        c = resource.need(b.option)
        if c <= 0 or not resource.capacity(nodes[b.group]):
            continue
        for s in range(b.n_starts):
            for t in range(s, min(T, s + b.dur)):
                entries.setdefault((b.group, t), []).append((b.col0 + s, c))
    if not entries:
        return 0
    reserved: dict[tuple[int, int], float] = {}
    for gi, c, n in fixed_slots:
        for t in range(min(n, T)):
            reserved[(gi, t)] = reserved.get((gi, t), 0.0) + c
    keys = sorted(entries)
    starts, index, value, upper = [0], [], [], []
    for k in keys:
        for col, c in entries[k]:
            index.append(col)
            value.append(c)
        starts.append(len(index))
        node_cap = resource.capacity(nodes[k[0]])
        assert node_cap is not None  # entries hold only nodes with a capacity
        upper.append(max(0.0, node_cap - reserved.get(k, 0.0)))
    inf = highspy.kHighsInf
    h.addRows(len(keys), np.full(len(keys), -inf), np.asarray(upper, float), len(index),
              np.asarray(starts[:-1], np.int32), np.asarray(index, np.int32), np.asarray(value, float))
    return len(keys)


def slot_seed(seed: Sequence[Any], opt_key: Any, nodes_idx: dict[str, int], nodes: Sequence[Any], dur_of: dict,
              reserved: Sequence[Any] = (), fixed_use: Sequence[tuple[int, Any, int]] = ()) -> tuple[dict, int]:
    """slot_replay.slot_seed with RESOURCES too: replay the seed plan in slot time (GPU count, cores
    and host memory per slot), so the warm start -- and the horizon T derived from it -- is feasible
    for the capacity rows. fixed_use: (node index, a running Assignment, slots held from 0).
    Returns (job -> (option key, start slot), makespan in slots)."""
    gpu_use: list[dict[int, int]] = [{} for _ in nodes]
    use: list[list[dict[int, float]]] = [[{} for _ in nodes] for _ in RESOURCES]
    for n, r in enumerate(reserved or []):
        for t, g in enumerate(r):
            if g:
                gpu_use[n][t] = int(g)
    for n, a, k in fixed_use:
        for ri, res in enumerate(RESOURCES):
            for t in range(k):
                use[ri][n][t] = use[ri][n].get(t, 0.0) + res.need(a)
    out, ms = {}, 0
    for a in sorted(seed, key=lambda a: (a.start_s, a.job)):
        key, n = opt_key(a), nodes_idx[a.node]
        d, g = dur_of[key], len(a.gpus)
        need = [res.need(a) for res in RESOURCES]
        caps = [res.capacity(nodes[n]) or float("inf") for res in RESOURCES]
        s = 0
        while any(gpu_use[n].get(t, 0) + g > nodes[n].gpus
                  or any(use[ri][n].get(t, 0.0) + need[ri] > caps[ri] + 1e-9 for ri in range(len(RESOURCES)))
                  for t in range(s, s + d)):
            s += 1
        for t in range(s, s + d):
            gpu_use[n][t] = gpu_use[n].get(t, 0) + g
            for ri in range(len(RESOURCES)):
                use[ri][n][t] = use[ri][n].get(t, 0.0) + need[ri]
        out[a.job] = (key, s)
        ms = max(ms, s + d)
    return out, ms


def core_lower_bound(options: Any, nodes: Sequence[Any], fixed: Sequence[Any] = ()) -> float:
    """Core-seconds bound on the makespan: every job needs at least min_o(cores_o * runtime_o)
    core-seconds, running jobs their cores until their end, and the cluster has sum K_n cores.
    Valid only when every node has a capacity (0 otherwise)."""
    maybe_caps = [node_cores(n) for n in nodes]
    caps = [c for c in maybe_caps if c]
    if not caps or len(caps) < len(maybe_caps):
        return 0.0
    need = sum(min(option_cores(o) * o.runtime_s for o in jo.options) for jo in options.values())
    need += sum(float(getattr(a, "cpu_cores", 0) or 0) * a.end_s for a in fixed)
    return need / sum(caps)
