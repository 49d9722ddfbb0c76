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
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Sequence
from typing import Any

import numpy as np


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
    return any(node_cores(n) for n in nodes)


class CoreTimeline:
    """Core use of one node over time (piecewise constant); answers "are c cores free in [t, t+d)"."""

    def __init__(self, capacity: int | None):
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
                    fixed: Sequence[Any] = ()) -> list[str]:
    """Every (node, time) where the jobs running at once need more cores than the node has."""
    cap = {n.name: node_cores(n) for n in nodes}
    out = []
    by_node: dict[str, list] = {}
    for a in list(fixed) + list(assignments):
        c = cores_of.get(a.job, float(getattr(a, "cpu_cores", 0) or 0))
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
                           f"cores, the node has {limit}")
    return sorted(set(out))


def cores_ok(assignments: Sequence[Any], nodes: Sequence[Any], fixed: Sequence[Any] = ()) -> bool:
    return not constrained(nodes) or not core_violations(assignments, nodes, {}, fixed)


def add_core_rows(h: Any, blocks: Sequence[Any], nodes: Sequence[Any], T: int,
                  fixed_slots: Sequence[tuple[int, float, int]] = ()) -> int:
    """Add the per-node, per-slot core capacity rows to a HiGHS model built by milp._build.

    blocks: milp_model.Block (job, option, group = node index, dur, col0, n_starts); fixed_slots:
    (node index, cores, slots held from 0) of running jobs. Returns the number of rows added.
    """
    import highspy

    entries: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for b in blocks:
        c = option_cores(b.option)
        if c <= 0 or not node_cores(nodes[b.group]):
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
        node_cap = node_cores(nodes[k[0]])
        assert node_cap is not None  # entries hold only nodes with a core capacity
        upper.append(max(0.0, node_cap - reserved.get(k, 0.0)))
    inf = highspy.kHighsInf
    h.addRows(len(keys), np.full(len(keys), -inf), np.asarray(upper, float), len(index),
              np.asarray(starts[:-1], np.int32), np.asarray(index, np.int32), np.asarray(value, float))
    return len(keys)


def slot_seed(seed: Sequence[Any], opt_key: Any, nodes_idx: dict[str, int], nodes: Sequence[Any], dur_of: dict,
              reserved: Sequence[Any] = (), fixed_cores: Sequence[tuple[int, float, int]] = ()) -> tuple[dict, int]:
    """slot_replay.slot_seed with core capacity too: replay the seed plan in slot time (GPU count and
    cores per slot), so the warm start -- and the horizon T derived from it -- is feasible for the
    core rows. Returns (job -> (option key, start slot), makespan in slots)."""
    gpu_use: list[dict[int, int]] = [{} for _ in nodes]
    core_use: list[dict[int, float]] = [{} for _ in nodes]
    for n, r in enumerate(reserved or []):
        for t, g in enumerate(r):
            if g:
                gpu_use[n][t] = int(g)
    for n, c, k in fixed_cores:
        for t in range(k):
            core_use[n][t] = core_use[n].get(t, 0.0) + c
    out, ms = {}, 0
    for a in sorted(seed, key=lambda a: (a.start_s, a.job)):
        key, n = opt_key(a), nodes_idx[a.node]
        d, g, c = dur_of[key], len(a.gpus), float(a.cpu_cores or 0)
        cap_c = node_cores(nodes[n]) or float("inf")
        s = 0
        while any(gpu_use[n].get(t, 0) + g > nodes[n].gpus or core_use[n].get(t, 0.0) + c > cap_c + 1e-9
                  for t in range(s, s + d)):
            s += 1
        for t in range(s, s + d):
            gpu_use[n][t] = gpu_use[n].get(t, 0) + g
            core_use[n][t] = core_use[n].get(t, 0.0) + c
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
