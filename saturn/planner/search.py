"""The makespan search after the heuristics: alternate MILP steps that shorten the plan with
bound steps that raise the lower bound, and stop as soon as more solving cannot pay for itself.

**Early-stop rule** (`worth_continuing`). At any moment the plan is at most
gap x makespan = makespan - lower_bound seconds longer than the best possible plan: that is the
most that further solving can still save the run. Further solving costs the planner's remaining
time budget (an unfinished MILP search runs until its time limit). So the planner stops as soon as

    makespan - lower_bound  <  seconds left of the time limit,

i.e. when the remaining gap is worth less than the time the solver would keep spending. A short
workload is therefore planned in a few seconds even under a long limit (its gap is worth only
seconds), while a long one uses the whole limit: 1% of a 10-hour workload is 360 s. The rule is
checked before every step, so a step already started finishes (within its own time slice).

**Steps.** Primal: the rounded time-indexed MILP (milp.py), coarse slots first (they solve in a
fraction of a second and usually find the good plans), warm-started from the best plan so far;
on several nodes whose full model is too big, one MILP per node of the best plan's split.
Dual: the relaxed slot model (milp_bounds.py) at the current best makespan, which is far stronger
than the allotment bound once that makespan is good; it stops as soon as its bound certifies the
requested gap. Every step gets a slice of what is left, so one slow HiGHS search cannot eat the
whole budget.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

from saturn.planner.greedy import makespan
from saturn.planner.inputs import NodeSpec
from saturn.planner.milp import MilpResult, solve_time_indexed
from saturn.planner.milp_bounds import slot_lower_bound
from saturn.planner.options import JobOptions
from saturn.planner.plan import Assignment

log = logging.getLogger(__name__)

PRIMAL_SLOTS = (20, 30, 45, 70, 100, 150)  # coarse first: fast, and usually where the good plans are
DUAL_SLOTS = (24, 30, 40, 60, 90)  # the relaxed bound tightens with finer slots (and costs more)


def worth_continuing(makespan_s: float, lower_bound_s: float, seconds_left: float) -> bool:
    """The early-stop rule: more solving can save at most makespan - lower_bound seconds of
    run time (gap x makespan) and costs up to `seconds_left` of planning; continue only while
    the former is the larger."""
    return makespan_s - lower_bound_s >= seconds_left


@dataclass
class SearchResult:
    best: list[Assignment]
    lower_bound_s: float
    improved: bool  # a MILP step shortened the plan
    stop: str  # why the search ended, in words (shown by `saturn plan`)
    runs: list[MilpResult] = field(default_factory=list)


def improve_makespan(
    options: Mapping[str, JobOptions],
    nodes: Sequence[NodeSpec],
    best: list[Assignment],
    lb: float,
    *,
    deadline: float,
    mip_gap: float,
    threads: int = 1,
    slots: Optional[int] = None,
    fixed: Sequence[Assignment] = (),
    early_stop: bool = True,
    primal_step: Optional[Callable[..., list[Assignment]]] = None,
) -> SearchResult:
    """Shorten `best` and raise `lb` until the gap is closed, not worth closing, or time is up.

    primal_step(best, T, step_deadline, runs, lb) -> a plan (default: the full rounded MILP on all
    `nodes`); solve.py passes the per-node variant for clusters whose full model is too big."""
    fixed_end = makespan(fixed)
    runs: list[MilpResult] = []
    primal = primal_step or _full_step(options, nodes, mip_gap, threads, fixed)
    p_ladder = (slots,) if slots else PRIMAL_SLOTS
    ip = idual = 0
    improved = False
    bound_at: Optional[float] = None  # the makespan at which the last bound step ran
    stop = "time limit reached"
    while True:
        ms = max(makespan(best), fixed_end)
        left = deadline - time.perf_counter()
        if _gap(ms, lb) <= mip_gap:
            stop = f"gap {_gap(ms, lb):.1%} within the requested {mip_gap:.1%}"
            break
        if left < 0.1:
            break
        if early_stop and not worth_continuing(ms, lb, left):
            stop = (f"stopped early: the gap is worth at most {ms - lb:,.1f} s of run time, "
                    f"less than the {left:,.1f} s of solving left")
            break
        stale = bound_at is None or ms < bound_at * (1 - 1e-9)
        if ip < len(p_ladder) and (ip == 0 or not stale or idual >= len(DUAL_SLOTS)):
            T = p_ladder[ip]
            ip += 1
            n_before = len(runs)
            cand = primal(best, T, time.perf_counter() + _slice(left), runs, lb)
            if ms > max(makespan(cand), fixed_end) + 1e-9:
                best, improved = cand, True
            log.debug("primal T=%d: %.1f -> %.1f (lb %.1f, %.2f s left)", T, ms, makespan(best), lb,
                      deadline - time.perf_counter())
            if any(r.status not in ("optimal", "gap_limit") for r in runs[n_before:]):
                ip = len(p_ladder)  # this level ran out of its slice: finer ones would too
        elif idual < len(DUAL_SLOTS):
            T = DUAL_SLOTS[idual]
            idual += 1
            bound_at = ms
            b = slot_lower_bound(options, nodes, ms, lb, time_limit_s=_slice(left), slots=T, threads=threads,
                                 fixed=fixed, target_s=ms * (1 - mip_gap))
            lb = max(lb, b or 0.0)
            log.debug("bound T=%d at %.1f: %s -> lb %.1f (%.2f s left)", T, ms, b, lb, deadline - time.perf_counter())
        else:
            stop = "every refinement step done"
            break
    if not any(r.assignments is not None for r in runs):
        stop += "; no MILP solution (" + (", ".join(sorted({r.status for r in runs})) or "not started") \
            + "): the plan is the best heuristic one"
    return SearchResult(best, lb, improved, stop, runs)


def _slice(left: float) -> float:
    """A step's share of the time left: half of it, so a slow search leaves room for the rest."""
    return max(0.1, 0.5 * left)


def _gap(ms: float, lb: float) -> float:
    return (ms - lb) / ms if ms > 0 else 0.0


def _full_step(options, nodes, mip_gap, threads, fixed):
    def step(best, T, step_deadline, runs, lb):
        r = solve_time_indexed(options, nodes, best, lb, time_limit_s=step_deadline - time.perf_counter(),
                               mip_gap=mip_gap, slots=T, threads=threads, fixed=fixed)
        runs.append(r)
        return r.assignments if r.assignments is not None else best

    return step
