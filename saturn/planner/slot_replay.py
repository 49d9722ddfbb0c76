"""Between slot time and real time: replaying a plan into slots, and compacting slots back.

The MILP works in slots of length delta; a warm start (a real-time plan) is replayed into slots
(`slot_seed`), and a slotted solution is turned back into a real-time plan with concrete GPU ids
(`compact`). `score` decides which of compaction's two replays is kept (makespan by default, or
the planner's objective, e.g. weighted completion time).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from saturn.planner.cores import cores_ok
from saturn.planner.inputs import NodeSpec
from saturn.planner.options import Option
from saturn.planner.plan import Assignment
from saturn.planner.schedule import Choice, Scheduler, make_assignment


def slot_seed(seed: Sequence[Assignment], opt_key, nodes_idx, caps: Sequence[int], dur_of,
               reserved=None) -> tuple[dict, int]:
    """Replay the seed plan (options, nodes, start order) in slot time: job -> (key, start slot).

    Gives HiGHS a feasible starting point of the rounded model; its makespan fixes the horizon.
    """
    use: list[dict[int, int]] = [dict() for _ in caps]  # per node: slot -> GPUs in use
    for n, r in enumerate(reserved or []):
        for t, g in enumerate(r):
            if g:
                use[n][t] = int(g)
    out, ms = {}, 0
    for a in sorted(seed, key=lambda a: (a.start_s, a.job)):
        key = opt_key(a)
        n = nodes_idx[a.node]
        d, g = dur_of[key], len(a.gpus)
        s = 0
        while any(use[n].get(t, 0) + g > caps[n] for t in range(s, s + d)):
            s += 1
        for t in range(s, s + d):
            use[n][t] = use[n].get(t, 0) + g
        out[a.job] = (key, s)
        ms = max(ms, s + d)
    return out, ms


def reserved_slots(fixed_slots, n_groups: int, T: int) -> list[np.ndarray]:
    """Per group: GPUs held by fixed jobs in each of T slots; fixed_slots = [(group, gpus, n_slots)]."""
    out = [np.zeros(T) for _ in range(n_groups)]
    for gi, g, n in fixed_slots:
        out[gi][: min(n, T)] += g
    return out


def match_option(opts: list[Option], a: Assignment) -> Option:
    """The option an assignment runs (same technique, knobs, GPU count and duration)."""
    tol = 1e-6 * max(1.0, a.duration_s)
    return next(
        o for o in opts
        if o.technique == a.technique and o.gpus == len(a.gpus) and o.knobs_dict == a.knobs
        and abs(o.runtime_s - a.duration_s) <= tol
    )


def compact(picks: list[tuple[int, str, Option, int]], nodes: Sequence[NodeSpec], delta: float,
            fixed: Sequence[Assignment] = (),
            score: Optional[Callable[[Sequence[Assignment]], float]] = None) -> list[Assignment]:
    """Exact compaction of a slotted solution into a real-time plan with GPU ids.

    Two replays, keep the shorter: (a) start at s*delta with the real duration, give GPU ids in
    start order (possible because slot capacity held and real durations are shorter), then shift
    every job left as far as its own GPUs allow (never later: makespan <= C*delta); (b) list
    schedule the same options/nodes in the MILP's start order, each job as early as possible.
    """
    picks = sorted(picks, key=lambda p: (p[0], -p[2].gpus, p[1]))
    a = _compact_fixed(picks, nodes, delta, fixed)
    sched = Scheduler(nodes, fixed)
    for _, _, o, ni in picks:
        sched.add(Choice(o, nodes[ni].name))
    b = sched.assignments
    if not cores_ok(a, nodes, fixed):  # left-shifting ignores cores; the list scheduler keeps them
        return b
    score = score or (lambda xs: max(x.end_s for x in xs))
    return a if score(a) <= score(b) else b


def _compact_fixed(picks, nodes: Sequence[NodeSpec], delta: float,
                   fixed: Sequence[Assignment] = ()) -> list[Assignment]:
    free_at = [[0.0] * n.gpus for n in nodes]  # real end of the last job on each GPU
    shifted_end = [[0.0] * n.gpus for n in nodes]  # same, after left-shifting
    idx = {n.name: i for i, n in enumerate(nodes)}
    for f in fixed:  # running jobs hold their GPUs from 0 to their end
        if f.node in idx:
            for g in f.gpus:
                free_at[idx[f.node]][g] = max(free_at[idx[f.node]][g], f.end_s)
                shifted_end[idx[f.node]][g] = max(shifted_end[idx[f.node]][g], f.end_s)
    out = []
    for s, _, o, ni in picks:
        t = s * delta
        free = [g for g in range(nodes[ni].gpus) if free_at[ni][g] <= t + 1e-9 * max(1.0, t)]
        if len(free) < o.gpus:  # cannot happen for a capacity-feasible slotted plan
            raise AssertionError("slot capacity violated during compaction")
        free.sort(key=lambda g: -free_at[ni][g])  # best fit: GPUs freed most recently
        ids = sorted(free[: o.gpus])
        start = max(shifted_end[ni][g] for g in ids)
        for g in ids:
            free_at[ni][g] = t + o.runtime_s
            shifted_end[ni][g] = start + o.runtime_s
        out.append(make_assignment(o, nodes[ni].name, start, ids))
    return out
