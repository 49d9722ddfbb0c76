"""Candidate plans on the current state, and whether one is worth adopting.

Why a module of its own: re-planning compares plans made on different grounds (the stored plan,
a free re-plan in which running jobs may move, the "no job moved" plan); this is where they are
brought onto the same ground and judged, with no processes, clock or I/O.

* `PlannedOption`: what a plan picked for one job (option + node), without its times.
* `retime`: turn a plan's picks (in plan order) into concrete assignments on the *current*
  cluster state, with the planner's list scheduler (`saturn.planner.list_schedule`) around the
  `fixed` assignments of `planner_inputs.held_gpus`: running jobs that keep their option stay on
  their GPUs; moved jobs block their old GPUs for the checkpoint time and restart once
  checkpointed; everyone else is placed in plan order. This is how a plan made with running jobs
  free to move (which may put a job that keeps its option elsewhere) and the current plan are
  brought onto the same ground as the "no job moved" candidate before they are compared.
* `Retimed`: such a candidate, its assignments typed (`saturn.planner.Assignment`, the planner's
  own decision type) until it is adopted as a plan dict.
* `choose_plan`: adopt a candidate only if it beats the current plan by more than a margin
  (switching costs are already inside the candidates' durations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

from saturn.executor.estimates import Estimator
from saturn.executor.planner_inputs import checkpoint_left, held_gpus, is_checkpoint
from saturn.executor.state import (
    ACTIVE,
    OFF_GPU,
    RUNNING,
    STOPPING,
    RunState,
    option_key,
)
from saturn.parse import canonical_knobs as knobs_key
from saturn.planner import Assignment, NodeSpec, Option, Placement, list_schedule


@dataclass
class PlannedOption:
    """What a plan picked for one job: its option (technique, knobs, GPU count) and node, without
    the plan's times (retiming gives it new ones). Not the planner's `Placement`
    (`schedule.Choice`), which wraps a priced `Option` for its list scheduler."""

    job: str
    technique: str
    knobs: dict
    gpus: int
    node: Optional[str] = None


@dataclass
class Retimed:
    """A candidate plan on the current state: assignments relative to `now`, and what it costs."""

    assignments: list[Assignment]
    makespan_s: float
    switches: list[str] = field(default_factory=list)  # running jobs this plan moves
    source: str = ""
    solver: dict = field(default_factory=dict)
    lower_bound_s: float = 0.0

    def to_plan_dict(self) -> dict:
        return {"makespan_s": self.makespan_s, "lower_bound_s": self.lower_bound_s,
                "solver": dict(self.solver, source=self.source), "baselines": {},
                "assignments": [a.to_dict() for a in sorted(self.assignments, key=lambda a: (a.start_s, a.job))]}


def retimed_from_plan(plan: Any, source: str, switches: Sequence[str] = ()) -> Retimed:
    """A planner result (relative to now, running jobs fixed in it) as a candidate; the
    checkpoint pseudo-jobs are dropped."""
    d = plan.to_dict() if hasattr(plan, "to_dict") else dict(plan)
    out = [Assignment.from_dict(a) for a in d.get("assignments", []) if not is_checkpoint(a)]
    return Retimed(assignments=out, makespan_s=max([a.end_s for a in out] + [0.0]), switches=list(switches),
                   source=source, solver=dict(d.get("solver") or {}),
                   lower_bound_s=float(d.get("lower_bound_s", 0.0)))


def retime(state: RunState, est: Estimator, now: float, nodes: Mapping[str, int],
           choices: Iterable[PlannedOption], source: str = "") -> Optional[Retimed]:
    """Schedule `choices` (in order) around the running jobs; None if a choice cannot be placed.

    A running job whose choice matches its current option and node keeps its GPUs from now (it
    need not appear in `choices`); a running job with a different choice is a switch: its old GPUs
    stay busy for its checkpoint time, and it restarts (start-up) with the new option once it has
    checkpointed. Both are `fixed` assignments (`held_gpus`); the planner's list scheduler places
    the rest in order, each at its earliest finish."""
    choices = list(choices)
    by_job = {c.job: c for c in choices}
    switches = []
    for js in state.jobs.values():
        seg, c = js.current, by_job.get(js.name)
        if js.status != RUNNING or seg is None or c is None:
            continue
        if not (c.technique == seg.technique and c.gpus == len(seg.gpus) and knobs_key(c.knobs) == knobs_key(seg.knobs)
                and c.node in (None, seg.node)):
            switches.append(js.name)
    fixed = held_gpus(state, est, now, moved=switches)
    pinned = {a.job for a in fixed}
    place = []
    for c in choices:
        if c.job in pinned:
            continue
        js = state.jobs[c.job]
        steps = js.live_remaining_steps if js.status == RUNNING else js.remaining_steps
        dur = steps * est.step_time(js, c.technique, c.gpus, c.knobs) + est.startup(js, c.technique, c.gpus, c.knobs)
        if not math.isfinite(dur):
            return None
        release = checkpoint_left(js, est, now) if js.status in ACTIVE else 0.0  # it checkpoints first
        opt = Option(c.job, c.technique, knobs_key(c.knobs), c.gpus, max(dur, 1e-6))
        place.append(Placement(opt, c.node if c.node in nodes else None, release))
    try:
        placed = list_schedule([NodeSpec(n, int(k)) for n, k in nodes.items()], place, fixed)
    except ValueError:  # an option fits no node (or not its planned one)
        return None
    out = [a for a in fixed if not is_checkpoint(a)] + list(placed)
    ms = max([a.end_s for a in out] + [0.0])
    return Retimed(assignments=out, makespan_s=ms, switches=switches, source=source)


def choices_from_plan(plan: Optional[dict], state: RunState) -> list[PlannedOption]:
    """A plan's choices in its start order, for the unfinished jobs it covers."""
    if not plan:
        return []
    out = []
    for a in sorted(plan.get("assignments", []), key=lambda a: (a["start_s"], a["job"])):
        js = state.jobs.get(a["job"])
        if js is None or js.status in OFF_GPU or (js.status == STOPPING and js.stop_reason != "switch"):
            continue
        out.append(PlannedOption(a["job"], a["technique"], dict(a.get("knobs") or {}), len(a["gpus"]), a.get("node")))
    return out


def covers(plan_choices: Sequence[PlannedOption], state: RunState, est: Estimator) -> bool:
    """Whether a plan still has a feasible option for every unfinished, not-running job."""
    have = {c.job: c for c in plan_choices}
    for js in state.jobs.values():
        if js.status in OFF_GPU or js.status == RUNNING:
            continue
        c = have.get(js.name)
        if c is None or option_key(c.technique, c.gpus) in js.infeasible:
            return False
        if not any(o.technique == c.technique and o.gpus == c.gpus for o in est.options(js)):
            return False
    return True


@dataclass
class Decision:
    adopt: bool
    chosen: Optional[Retimed]
    current_s: float
    best_s: float
    reason: str


def plan_score(objective: str, state: RunState):
    """What re-planning compares candidates by: their makespan, or, for the completion-time
    objectives (#16), the (weighted) mean end of their jobs (weights from the jobs' specs)."""
    if objective in (None, "makespan"):
        return None

    def weight(job: str) -> float:
        js = state.jobs.get(job)
        spec = (js.info.spec or {}) if js is not None else {}
        return float(spec.get("weight") or 1.0) if objective == "weighted_completion" else 1.0

    def score(c: Retimed) -> float:
        total = sum(weight(a.job) for a in c.assignments)
        return sum(weight(a.job) * a.end_s for a in c.assignments) / total if total else 0.0

    return score


def choose_plan(current: Optional[Retimed], candidates: Sequence[Optional[Retimed]], *,
                min_gain_s: float = 0.0, min_gain_frac: float = 0.02, score=None) -> Decision:
    """Adopt the best candidate if it finishes earlier than the current plan by more than the
    margin max(min_gain_s, min_gain_frac x current makespan). A candidate's durations already
    include the checkpoint + restart time of each job it moves, so a switch is only adopted when
    its gross gain exceeds its switching cost plus the margin. With no valid current plan the best
    candidate is adopted unconditionally. `score` (see plan_score) replaces the makespan."""
    score = score or (lambda c: c.makespan_s)
    cands = [c for c in candidates if c is not None]
    if not cands:
        return Decision(False, None, score(current) if current else math.inf, math.inf, "no candidate")
    best = min(cands, key=lambda c: (score(c), len(c.switches)))
    if current is None:
        return Decision(True, best, math.inf, score(best), "current plan is no longer valid")
    margin = max(min_gain_s, min_gain_frac * score(current))
    gain = score(current) - score(best)
    if gain > margin:
        return Decision(True, best, score(current), score(best),
                        f"gain {gain:.1f}s > margin {margin:.1f}s ({len(best.switches)} switch(es))")
    return Decision(False, best, score(current), score(best),
                    f"gain {gain:.1f}s <= margin {margin:.1f}s")

