"""Greedy plans: fast, valid, and good enough to warm-start (and often to finish) the MILP.

Two families, each tried with a few priority rules; `plan()` keeps the best:

* **allotment first**: pick every job's option up front so that no job is longer than a target C
  while using the least GPU-area (the classic two-phase approach to malleable scheduling; the
  target balancing max-runtime against area/GPUs mirrors the allotment lower bound), then list
  schedule longest-first.
* **earliest finish**: place jobs longest-first, each with the option and node that finish
  earliest, among options whose area is within a factor of the job's minimum (unbounded, this
  rule grabs too many GPUs for badly scaling jobs; at factor 1 it is min-area).
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from saturn.planner.inputs import NodeSpec
from saturn.planner.options import JobOptions, Option
from saturn.planner.plan import Assignment
from saturn.planner.schedule import BACKFILL_MAX_JOBS, Choice, Scheduler, list_schedule

Candidate = tuple[str, list[Assignment]]


def makespan(assignments: Sequence[Assignment]) -> float:
    return max((a.end_s for a in assignments), default=0.0)


def allot(options: Mapping[str, JobOptions], target: float) -> dict[str, Option]:
    """Per job: least-area option with runtime <= target (the fastest if none is that short)."""
    out = {}
    for name, jo in options.items():
        within = [o for o in jo.options if o.runtime_s <= target]
        out[name] = min(within, key=lambda o: (o.area, o.runtime_s)) if within else jo.fastest()
    return out


def allotment_targets(options: Mapping[str, JobOptions], nodes: Sequence[NodeSpec], k: int = 3,
                      max_evals: int = 2_000_000) -> list[float]:
    """Targets C around the one that balances max runtime against area / GPUs.

    Every distinct option runtime is a candidate; when candidates x jobs exceeds `max_evals`
    (thousands of jobs), an evenly spaced subset of them is scored (numpy, all jobs at once)."""
    total = sum(n.gpus for n in nodes)
    cands = sorted({o.runtime_s for jo in options.values() for o in jo.options})
    if len(cands) * len(options) > max_evals:
        cands = [cands[i] for i in np.unique(np.linspace(0, len(cands) - 1, max(8, max_evals // len(options)))
                                             .round().astype(int))]
    scored = sorted(zip(allotment_scores(options, cands, total), cands))
    best = scored[0][0]
    picks = [c for _, c in scored[:k]]
    # Slightly longer targets free GPU-area, which list scheduling can use to fill gaps.
    picks += [best * f for f in (0.6, 0.8, 1.25)]
    return sorted(set(picks))


def allotment_scores(options: Mapping[str, JobOptions], cands: Sequence[float], total: int) -> list[float]:
    """max(longest chosen runtime, chosen area / GPUs) of `allot(options, c)` for each c."""
    K = max(len(jo.options) for jo in options.values())
    R = np.full((len(options), K), np.inf)
    A = np.full((len(options), K), np.inf)
    for i, jo in enumerate(options.values()):
        for k, o in enumerate(jo.options):
            R[i, k], A[i, k] = o.runtime_s, o.area
    rows = np.arange(len(options))
    fast = _argmin2(R, A)  # JobOptions.fastest: shortest runtime, ties to fewer GPUs (less area)
    out = []
    for c in cands:
        within = R <= c
        # least area within c, ties to the shorter runtime; the fastest option if none is within
        key_a = np.where(within, A, np.inf)
        pick = _argmin2(key_a, R)
        pick = np.where(within.any(axis=1), pick, fast)
        r, a = R[rows, pick], A[rows, pick]
        out.append(max(float(r.max()), float(a.sum()) / total))
    return out


def _argmin2(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Row-wise argmin of `primary`, ties broken by `secondary` (then by column)."""
    m = primary.min(axis=1, keepdims=True)
    return np.where(primary == m, secondary, np.inf).argmin(axis=1)


ORDERS: dict[str, Callable[[Option], tuple]] = {
    "lpt": lambda o: (-o.runtime_s, -o.gpus, o.job),
    "area": lambda o: (-o.area, -o.runtime_s, o.job),
    "wide": lambda o: (-o.gpus, -o.runtime_s, o.job),
}


def schedule_allotted(nodes: Sequence[NodeSpec], chosen: Mapping[str, Option], order: str,
                      fixed: Sequence[Assignment] = ()) -> list[Assignment]:
    seq = sorted(chosen.values(), key=ORDERS[order])
    return list_schedule(nodes, (Choice(o) for o in seq), fixed)


def schedule_eft(
    nodes: Sequence[NodeSpec], options: Mapping[str, JobOptions], order: Sequence[str], area_factor: float,
    fixed: Sequence[Assignment] = (),
) -> list[Assignment]:
    """Each job in `order` takes the option+node finishing first among near-min-area options."""
    s = Scheduler(nodes, fixed, backfill=len(order) <= BACKFILL_MAX_JOBS)
    for name in order:
        jo = options[name]
        cap = jo.min_area().area * area_factor * (1 + 1e-9)
        best = None
        for o in jo.options:
            if o.area > cap:
                continue
            t, n, ids = s.best_place(o)
            key = (t + o.runtime_s, o.area)
            if best is None or key < best[0]:
                best = (key, o, t, n, ids)
        assert best is not None  # the min-area option itself is within the cap
        _, o, t, n, ids = best
        s.place(o, t, n, ids)
    return s.assignments


def greedy_candidates(
    options: Mapping[str, JobOptions], nodes: Sequence[NodeSpec], deadline: Optional[float] = None,
    fixed: Sequence[Assignment] = (),
) -> list[Candidate]:
    """All greedy rules, cheapest first; stops early (keeping what it has) past `deadline`."""
    out: list[Candidate] = []

    def late() -> bool:
        return deadline is not None and time.perf_counter() > deadline and bool(out)

    for c in allotment_targets(options, nodes):
        chosen = allot(options, c)
        for order in ORDERS:
            if late():
                return out
            out.append((f"greedy:allot({c:.4g}s)/{order}", schedule_allotted(nodes, chosen, order, fixed)))
    lpt = sorted(options, key=lambda j: (-options[j].min_area().runtime_s, j))
    for f in (1.0, 1.25, 1.5, 2.0, math.inf):
        if late():
            return out
        out.append((f"greedy:eft(area<={f}x)", schedule_eft(nodes, options, lpt, f, fixed)))
    return out


def perturbed_search(
    options: Mapping[str, JobOptions],
    nodes: Sequence[NodeSpec],
    best: list[Assignment],
    deadline: float,
    seed: int = 0,
    max_iters: int = 200,
    fixed: Sequence[Assignment] = (),
) -> Optional[list[Assignment]]:
    """Randomized re-ordering of the best plan's (option, node) choices until the deadline.

    Keeps each job's option but re-lists jobs by start time with random swaps and lets the
    scheduler pick nodes; cheap and sometimes closes the last few percent.
    """
    rng = random.Random(seed)
    by_job = {a.job: a for a in best}
    opt_of = {}
    for name, jo in options.items():
        a = by_job[name]
        opt_of[name] = next(
            o for o in jo.options + jo.by_size
            if o.technique == a.technique and o.gpus == len(a.gpus) and o.knobs_dict == a.knobs
        )
    order = sorted(by_job, key=lambda j: (by_job[j].start_s, j))
    fixed_end = makespan(fixed)
    cur, cur_ms, improved = order, max(makespan(best), fixed_end), None
    for _ in range(max_iters):
        if time.perf_counter() > deadline:
            break
        cand = list(cur)
        for _ in range(rng.randint(1, 3)):
            i, j = rng.randrange(len(cand)), rng.randrange(len(cand))
            cand.insert(j, cand.pop(i))
        sched = list_schedule(nodes, (Choice(opt_of[j]) for j in cand), fixed)
        ms = max(makespan(sched), fixed_end)
        if ms < cur_ms - 1e-9:
            cur, cur_ms, improved = cand, ms, sched
    return improved
