"""Pure decision logic of the executor: no processes, no clock, no I/O.

* `Estimator`: a job's step time / start-up / checkpoint cost per option, from the profile table
  corrected by what was observed (a job measured 20% slower than profiled on one option is assumed
  20% slower on all of its options, until those are observed too).
* `planner_jobs_and_profiles`: the remaining work as `saturn.planner.plan` inputs. Running jobs get
  their remaining steps; their current option costs no start-up, every other option of theirs
  costs start-up + checkpoint (the switching cost), so the planner weighs switching itself.
* `retime`: turn a plan's choices (option + node + order per job) into concrete assignments on the
  *current* cluster state: running jobs that keep their option are pinned to their GPUs from now;
  stopping/switching jobs block their old GPUs for the checkpoint time; everyone else is list-
  scheduled in plan order. The planner cannot pin jobs, so this is where "running jobs keep their
  GPUs" is enforced, and every candidate (keep the current plan, new plan, new plan without
  switches) is compared on the same ground.
* `choose_plan`: adopt a candidate only if it beats the current plan by more than a margin
  (switching costs are already inside the candidates' durations).
* `ready_to_launch`: which assignments start now: GPUs free and every job the plan put before it
  on any of those GPUs finished (plan order, not wall-clock).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Optional, Sequence

import pandas as pd

from saturn.executor.state import ACTIVE, RUNNING, STOPPING, TERMINAL, JobState, RunState, option_key

DEFAULT_CHECKPOINT_S = 1.0  # when neither measured nor profiled


def knobs_key(knobs: Any) -> str:
    if knobs is None or (isinstance(knobs, float) and math.isnan(knobs)):
        return "{}"
    if isinstance(knobs, str):
        knobs = json.loads(knobs.strip() or "{}")
    return json.dumps(knobs, sort_keys=True, separators=(",", ":"))


def _num(v: Any, default: float) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(f) else f


def _true(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes", "y", "t")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    return bool(v)


@dataclass(frozen=True)
class OptionRow:
    technique: str
    knobs: str  # canonical JSON
    gpus: int
    step_time_s: float
    startup_s: float
    checkpoint_s: Optional[float] = None
    gpu_type: Optional[str] = None


class Estimator:
    """Profiled options per job, corrected by observations in the run state."""

    def __init__(self, profiles: pd.DataFrame):
        self.rows: dict[str, list[OptionRow]] = {}
        self.add_profiles(profiles)

    def add_profiles(self, profiles: pd.DataFrame) -> None:
        for r in profiles.to_dict("records"):
            if not _true(r.get("feasible", True)):
                continue
            st = _num(r.get("step_time_s"), math.nan)
            if not (st >= 0 and math.isfinite(st)):
                continue
            ck = _num(r.get("checkpoint_s"), math.nan)
            gt = r.get("gpu_type")
            row = OptionRow(str(r["technique"]), knobs_key(r.get("knobs")), int(r["gpus"]), st,
                            _num(r.get("startup_s"), 0.0), None if math.isnan(ck) else ck,
                            None if gt is None or (isinstance(gt, float) and math.isnan(gt)) else str(gt))
            lst = self.rows.setdefault(str(r["job"]), [])
            lst[:] = [x for x in lst if (x.technique, x.knobs, x.gpus, x.gpu_type) !=
                      (row.technique, row.knobs, row.gpus, row.gpu_type)] + [row]

    def options(self, js: JobState) -> list[OptionRow]:
        info = js.info
        out = []
        for o in self.rows.get(js.name, []):
            if option_key(o.technique, o.gpus) in js.infeasible:
                continue
            if info.techniques and o.technique not in info.techniques:
                continue
            if info.gpus and o.gpus not in info.gpus:
                continue
            out.append(o)
        return out

    def profiled(self, js: JobState, technique: str, gpus: int, knobs: Any = None) -> Optional[OptionRow]:
        cands = [o for o in self.rows.get(js.name, []) if o.technique == technique and o.gpus == gpus]
        if knobs is not None:
            exact = [o for o in cands if o.knobs == knobs_key(knobs)]
            cands = exact or cands
        return min(cands, key=lambda o: o.step_time_s) if cands else None

    def factor(self, js: JobState) -> float:
        """Observed / profiled step time, step-weighted geometric mean over observed options."""
        num, den = 0.0, 0
        for key, (secs, steps) in js.observed.items():
            tech, g = key.rsplit("|", 1)
            p = self.profiled(js, tech, int(g))
            if p is None or p.step_time_s <= 0 or steps <= 0:
                continue
            num += steps * math.log((secs / steps) / p.step_time_s)
            den += steps
        return math.exp(num / den) if den else 1.0

    def step_time(self, js: JobState, technique: str, gpus: int, knobs: Any = None) -> float:
        obs = js.observed_step_time(technique, gpus)
        if obs is not None:
            return obs
        p = self.profiled(js, technique, gpus, knobs)
        if p is None:
            return math.inf
        return p.step_time_s * self.factor(js)

    def startup(self, js: JobState, technique: str, gpus: int, knobs: Any = None) -> float:
        if js.startup_obs:
            return sum(js.startup_obs[-3:]) / len(js.startup_obs[-3:])
        p = self.profiled(js, technique, gpus, knobs)
        return p.startup_s if p is not None else 0.0

    def checkpoint_cost(self, js: JobState) -> float:
        if js.checkpoint_obs:
            return sum(js.checkpoint_obs[-3:]) / len(js.checkpoint_obs[-3:])
        cks = [o.checkpoint_s for o in self.rows.get(js.name, []) if o.checkpoint_s is not None]
        return max(cks) if cks else DEFAULT_CHECKPOINT_S

    def switch_cost(self, js: JobState, technique: str, gpus: int, knobs: Any = None) -> float:
        """Measured (else profiled) checkpoint + restart time of moving a running job."""
        return self.checkpoint_cost(js) + self.startup(js, technique, gpus, knobs)

    def remaining_s(self, js: JobState, now: float) -> float:
        """Time a running job needs from `now` to finish on its current option."""
        seg = js.current
        if seg is None:
            return 0.0
        st = self.step_time(js, seg.technique, len(seg.gpus), seg.knobs)
        startup_left = 0.0
        if seg.first_progress is None:
            startup_left = max(0.0, self.startup(js, seg.technique, len(seg.gpus), seg.knobs)
                               - (now - seg.launched_at))
        else:
            # progress reports are discrete: credit the steps done since the last one
            t_last, s_last = seg.last_progress or seg.first_progress
            done_since = min(js.live_remaining_steps, (now - t_last) / st) if st > 0 else 0.0
            return max(0.0, (js.info.total_steps - s_last - done_since) * st)
        return startup_left + js.live_remaining_steps * st


# ------------------------------------------------------------------------------- planner inputs
def planner_jobs_and_profiles(state: RunState, est: Estimator, now: float,
                              keep_running: bool = False) -> tuple[list[Any], pd.DataFrame]:
    """(jobs, profile table) for `saturn.planner.plan` describing the remaining work.

    keep_running=True restricts running jobs to their current option (no switching)."""
    jobs, rows = [], []
    for js in state.jobs.values():
        if js.status in TERMINAL or (js.status == STOPPING and js.stop_reason != "switch"):
            continue
        steps = js.live_remaining_steps if js.status == RUNNING else js.remaining_steps
        if steps <= 0:
            continue
        seg = js.current if js.status == RUNNING else None
        opts = est.options(js)
        if seg is not None and keep_running:
            opts = [o for o in opts if o.technique == seg.technique and o.gpus == len(seg.gpus)
                    and o.knobs == knobs_key(seg.knobs)] or [o for o in opts if o.technique == seg.technique and o.gpus == len(seg.gpus)]
        if not opts:
            continue
        jobs.append(SimpleNamespace(name=js.name, steps=steps, techniques=None, gpus=None, signature=None))
        for o in opts:
            st = est.step_time(js, o.technique, o.gpus, o.knobs)
            current = (seg is not None and o.technique == seg.technique and o.gpus == len(seg.gpus)
                       and o.knobs == knobs_key(seg.knobs))
            if current:
                startup = max(0.0, est.remaining_s(js, now) - steps * st)
            elif seg is not None:
                startup = est.switch_cost(js, o.technique, o.gpus, o.knobs)
            elif js.status == STOPPING:
                startup = est.checkpoint_cost(js) + est.startup(js, o.technique, o.gpus, o.knobs)
            else:
                startup = est.startup(js, o.technique, o.gpus, o.knobs)
            rows.append({"job": js.name, "technique": o.technique, "knobs": o.knobs, "gpus": o.gpus,
                         "step_time_s": st, "startup_s": startup, "feasible": True,
                         "gpu_type": o.gpu_type})
    return jobs, pd.DataFrame(rows, columns=["job", "technique", "knobs", "gpus", "step_time_s",
                                             "startup_s", "feasible", "gpu_type"])


# ------------------------------------------------------------------------------------ retiming
@dataclass
class Choice:
    job: str
    technique: str
    knobs: dict
    gpus: int
    node: Optional[str] = None
    prefer: Sequence[int] = ()


@dataclass
class Retimed:
    """A candidate plan on the current state: assignments relative to `now`, and what it costs."""

    assignments: list[dict]
    makespan_s: float
    switches: list[str] = field(default_factory=list)  # running jobs this plan moves
    source: str = ""
    solver: dict = field(default_factory=dict)
    lower_bound_s: float = 0.0

    def to_plan_dict(self) -> dict:
        return {"makespan_s": self.makespan_s, "lower_bound_s": self.lower_bound_s,
                "solver": dict(self.solver, source=self.source), "baselines": {},
                "assignments": sorted(self.assignments, key=lambda a: (a["start_s"], a["job"]))}


def retime(state: RunState, est: Estimator, now: float, nodes: Mapping[str, int],
           choices: Iterable[Choice], source: str = "") -> Optional[Retimed]:
    """Schedule `choices` (in order) around the running jobs; None if a choice cannot be placed.

    A running job whose choice matches its current option and node keeps its GPUs from now (it
    need not appear in `choices`); a running job with a different choice is a switch: its old GPUs
    stay busy for its checkpoint time, and it restarts (start-up) with the new option."""
    avail = {(n, g): 0.0 for n, k in nodes.items() for g in range(k)}
    by_job = {c.job: c for c in choices}
    out, switches = [], []
    ordered: list[Choice] = []
    for js in state.jobs.values():
        seg = js.current
        if js.status not in ACTIVE or seg is None:
            continue
        c = by_job.get(js.name)
        same = (js.status == RUNNING and (c is None or (c.technique == seg.technique and c.gpus == len(seg.gpus)
                and knobs_key(c.knobs) == knobs_key(seg.knobs) and (c.node in (None, seg.node)))))
        if same:
            end = est.remaining_s(js, now)
            for g in seg.gpus:
                avail[(seg.node, g)] = max(avail.get((seg.node, g), 0.0), end)
            out.append({"job": js.name, "technique": seg.technique, "knobs": dict(seg.knobs),
                        "node": seg.node, "gpus": list(seg.gpus), "start_s": 0.0, "end_s": max(end, 1e-6)})
        else:
            left = est.checkpoint_cost(js)
            if js.status == STOPPING and seg.stop_requested_at is not None:
                left = max(0.0, left - (now - seg.stop_requested_at))
            for g in seg.gpus:
                avail[(seg.node, g)] = max(avail.get((seg.node, g), 0.0), left)
            if js.status == RUNNING:
                switches.append(js.name)
    pinned = {a["job"] for a in out}
    busy: dict[tuple[str, int], list[tuple[float, float]]] = {k: [(0.0, v)] if v > 0 else [] for k, v in avail.items()}
    for c in choices:
        if c.job not in pinned:
            ordered.append(c)
    for c in ordered:
        js = state.jobs[c.job]
        steps = js.live_remaining_steps if js.status == RUNNING else js.remaining_steps
        dur = steps * est.step_time(js, c.technique, c.gpus, c.knobs) + est.startup(js, c.technique, c.gpus, c.knobs)
        release = 0.0
        if js.status in ACTIVE:  # switching / stopping: it checkpoints first
            release = est.checkpoint_cost(js)
            if js.current is not None and js.current.stop_requested_at is not None:
                release = max(0.0, release - (now - js.current.stop_requested_at))
        if not math.isfinite(dur):
            return None
        dur = max(dur, 1e-6)
        best = None
        for n, k in nodes.items():
            if c.gpus > k or (c.node is not None and c.node in nodes and n != c.node):
                continue
            start, ids = _earliest(busy, n, k, c.gpus, dur, release, c.prefer)
            key = (start + dur, k - c.gpus, n)
            if best is None or key < best[0]:
                best = (key, n, start, ids)
        if best is None:
            return None
        _, n, start, ids = best
        for g in ids:
            busy[(n, g)].append((start, start + dur))
            busy[(n, g)].sort()
        out.append({"job": c.job, "technique": c.technique, "knobs": dict(c.knobs), "node": n,
                    "gpus": ids, "start_s": start, "end_s": start + dur})
    ms = max([a["end_s"] for a in out] + [0.0])
    return Retimed(assignments=out, makespan_s=ms, switches=switches, source=source)


def _earliest(busy, node: str, k: int, need: int, dur: float, release: float,
              prefer: Sequence[int]) -> tuple[float, list[int]]:
    """Earliest start >= release at which `need` GPUs of the node are free for `dur` (backfilling
    into gaps), and which GPUs: the planned ones when free, else those idle the shortest time."""
    times = sorted({release} | {e for g in range(k) for _, e in busy[(node, g)] if e > release})
    for t in times:
        free = []
        for g in range(k):
            ivs = busy[(node, g)]
            if all(e <= t + 1e-9 or s >= t + dur - 1e-9 for s, e in ivs):
                idle_since = max([e for _, e in ivs if e <= t + 1e-9] + [0.0])
                free.append((0 if g in prefer else 1, t - idle_since, g))
        if len(free) >= need:
            free.sort()
            return t, sorted(g for *_, g in free[:need])
    raise AssertionError("unreachable: after the last interval every GPU is free")


def choices_from_plan(plan: Optional[dict], state: RunState) -> list[Choice]:
    """A plan's choices in its start order, for the unfinished jobs it covers."""
    if not plan:
        return []
    out = []
    for a in sorted(plan.get("assignments", []), key=lambda a: (a["start_s"], a["job"])):
        js = state.jobs.get(a["job"])
        if js is None or js.status in TERMINAL or (js.status == STOPPING and js.stop_reason != "switch"):
            continue
        out.append(Choice(a["job"], a["technique"], dict(a.get("knobs") or {}), len(a["gpus"]),
                          a.get("node"), tuple(a["gpus"])))
    return out


def covers(plan_choices: Sequence[Choice], state: RunState, est: Estimator) -> bool:
    """Whether a plan still has a feasible option for every unfinished, not-running job."""
    have = {c.job: c for c in plan_choices}
    for js in state.jobs.values():
        if js.status in TERMINAL or js.status == RUNNING:
            continue
        c = have.get(js.name)
        if c is None or option_key(c.technique, c.gpus) in js.infeasible:
            return False
        if not any(o.technique == c.technique and o.gpus == c.gpus for o in est.options(js)):
            return False
    return True


def keep_running(choices: Sequence[Choice], state: RunState) -> list[Choice]:
    """The same choices, but every running job keeps its current option and GPUs."""
    out = []
    for c in choices:
        js = state.jobs[c.job]
        seg = js.current
        if js.status == RUNNING and seg is not None:
            out.append(Choice(c.job, seg.technique, dict(seg.knobs), len(seg.gpus), seg.node, tuple(seg.gpus)))
        else:
            out.append(c)
    return out


@dataclass
class Decision:
    adopt: bool
    chosen: Optional[Retimed]
    current_s: float
    best_s: float
    reason: str


def choose_plan(current: Optional[Retimed], candidates: Sequence[Optional[Retimed]], *,
                min_gain_s: float = 0.0, min_gain_frac: float = 0.02) -> Decision:
    """Adopt the best candidate if it finishes earlier than the current plan by more than the
    margin max(min_gain_s, min_gain_frac x current makespan). A candidate's durations already
    include the checkpoint + restart time of each job it moves, so a switch is only adopted when
    its gross gain exceeds its switching cost plus the margin. With no valid current plan the best
    candidate is adopted unconditionally."""
    cands = [c for c in candidates if c is not None]
    if not cands:
        return Decision(False, None, current.makespan_s if current else math.inf, math.inf, "no candidate")
    best = min(cands, key=lambda c: (c.makespan_s, len(c.switches)))
    if current is None:
        return Decision(True, best, math.inf, best.makespan_s, "current plan is no longer valid")
    margin = max(min_gain_s, min_gain_frac * current.makespan_s)
    gain = current.makespan_s - best.makespan_s
    if gain > margin:
        return Decision(True, best, current.makespan_s, best.makespan_s,
                        f"gain {gain:.1f}s > margin {margin:.1f}s ({len(best.switches)} switch(es))")
    return Decision(False, best, current.makespan_s, best.makespan_s,
                    f"gain {gain:.1f}s <= margin {margin:.1f}s")


# --------------------------------------------------------------------------------- launching
def ready_to_launch(plan: Optional[dict], state: RunState) -> list[dict]:
    """Assignments of pending jobs whose GPUs are free and whose plan predecessors (earlier
    assignments sharing a GPU) are finished."""
    if not plan:
        return []
    busy = state.busy_gpus()
    order = sorted(plan.get("assignments", []), key=lambda a: (a["start_s"], a["job"]))
    out, claimed = [], set()
    for i, a in enumerate(order):
        js = state.jobs.get(a["job"])
        if js is None or js.status != "pending":
            continue
        gpus = {(a["node"], int(g)) for g in a["gpus"]}
        if gpus & set(busy) or gpus & claimed:
            continue
        blocked = False
        for b in order[:i]:
            if b["node"] != a["node"] or not gpus & {(b["node"], int(g)) for g in b["gpus"]}:
                continue
            bj = state.jobs.get(b["job"])
            if bj is not None and bj.status not in TERMINAL:
                blocked = True
                break
        if not blocked:
            out.append(a)
            claimed |= gpus
    return out
