"""Pure decision logic of the executor: no processes, no clock, no I/O.

* `Estimator`: a job's step time / start-up / checkpoint cost per option, from the profile table
  corrected by what was observed (a job measured 20% slower than profiled on one option is assumed
  20% slower on all of its options, until those are observed too).
* `planner_jobs_and_profiles`: the remaining work as `saturn.planner.plan` inputs. Running jobs get
  their remaining steps; their current option costs no start-up, every other option of theirs
  costs start-up + checkpoint (the switching cost), so the planner weighs switching itself.
* `held_gpus` / `planner_inputs_around_running`: what holds GPUs now as the planner's `fixed`
  assignments (times relative to now): running jobs keep their option and GPUs until their
  estimated end (remaining steps at the observed speed); a checkpointing job (stopping, or moved by
  a candidate) holds its old GPUs for its checkpoint time as a pseudo-job `<job>@checkpoint`. With
  them, `plan(..., fixed=...)` optimizes the rest around the running jobs: the "no job moved"
  candidate.
* `retime`: turn a plan's choices (option + node + order per job) into concrete assignments on the
  *current* cluster state, with the planner's list scheduler (`saturn.planner.list_schedule`)
  around the same `fixed` assignments: running jobs that keep their option stay on their GPUs;
  moved jobs block their old GPUs for the checkpoint time and restart once checkpointed; everyone
  else is placed in plan order. This is how a plan made with running jobs free to move (which may
  put a job that keeps its option elsewhere) and the current plan are brought onto the same ground
  as the "no job moved" candidate before they are compared.
* `choose_plan`: adopt a candidate only if it beats the current plan by more than a margin
  (switching costs are already inside the candidates' durations).
* `ready_to_launch`: which assignments start now: GPUs free and every job the plan put before it
  on any of those GPUs finished (plan order, not wall-clock).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Optional, Sequence

import pandas as pd

from saturn.executor.state import (
    ACTIVE,
    OFF_GPU,
    RUNNING,
    STOPPING,
    JobState,
    RunState,
    option_key,
)
from saturn.parse import canonical_knobs as knobs_key
from saturn.parse import num as _num
from saturn.planner import Assignment, NodeSpec, Option, Placement, list_schedule

DEFAULT_CHECKPOINT_S = 1.0  # when neither measured nor profiled


def _true(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes", "y", "t")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    return bool(v)


def _opt(v: Any) -> Optional[float]:
    f = _num(v, math.nan)
    return None if math.isnan(f) else f


@dataclass(frozen=True)
class OptionRow:
    technique: str
    knobs: str  # canonical JSON
    gpus: int
    step_time_s: float
    startup_s: float
    checkpoint_s: Optional[float] = None
    gpu_type: Optional[str] = None
    checkpoint_source: Optional[str] = None  # "measured" | "estimated" (profiler)
    checkpoint_stage_s: Optional[float] = None  # blocking part of a background save
    worker_start_s: Optional[float] = None  # starting a warm worker, measured by the trial
    checkpoint_gb: Optional[float] = None  # host staging its background save needs (measured)


@dataclass
class LaunchFacts:
    """What launching costs on this backend, as data (from `Backend.launch_facts`):
    warm: jobs run on long-lived workers, so a launch costs the profile's `launch_s` only, and a
        device whose worker is still starting is held for the rest of that start
        (`worker_starts`, (node, gpu) -> seconds left); cold: every launch also starts its
        processes (`worker_start_s`).
    drains_behind: a one-GPU job's final save blocks only for its staging; the write goes on
        after the job has left its GPU (saturn.training.checkpoint).
    staging_budget_gb / node_gpus: the node's host staging budget, shared by its GPUs. A job
        whose checkpoint needs more than one GPU's share cannot count on it (every GPU may drain
        at once): its save is planned at its full, blocking cost."""

    warm: bool = False
    drains_behind: bool = False
    worker_starts: dict = field(default_factory=dict)
    worker_start_s: Optional[float] = None  # measured by the backend (else the profiles')
    staging_budget_gb: Optional[float] = None
    node_gpus: int = 1


class Estimator:
    """Profiled options per job, corrected by observations in the run state."""

    def __init__(self, profiles: pd.DataFrame, checkpoint_every: int = 0):
        self.rows: dict[str, list[OptionRow]] = {}
        # rows that are no option: job -> {(technique, gpus): (status, reason)} (why a job cannot run)
        self.refused: dict[str, dict[tuple[str, int], tuple[str, str]]] = {}
        self.checkpoint_every = checkpoint_every  # the backend's periodic saves (steps), planned
        self.launch = LaunchFacts()
        self.add_profiles(profiles)

    def worker_start_s(self) -> float:
        """Seconds to start a job's processes from nothing (the backend's measurement, else the
        largest the profiler measured; 0 if neither: the profile's launch_s then holds it)."""
        if self.launch.worker_start_s is not None:
            return self.launch.worker_start_s
        vals = [o.worker_start_s for lst in self.rows.values() for o in lst if o.worker_start_s]
        return max(vals) if vals else 0.0

    def final_save_s(self, o: OptionRow) -> Optional[float]:
        """What the final save blocks: its staging when it drains behind (one GPU, and its share
        of the node's staging budget holds it), else all of it."""
        if o.checkpoint_s is None:
            return None
        if self.over_budget(o):
            return o.checkpoint_s  # the staging budget may be full when it saves: it blocks
        if self.launch.drains_behind and o.gpus == 1:
            from saturn.planner.inputs import BACKGROUND_SAVE_FRACTION

            return o.checkpoint_stage_s if o.checkpoint_stage_s is not None else \
                BACKGROUND_SAVE_FRACTION * o.checkpoint_s
        return o.checkpoint_s

    def over_budget(self, o: OptionRow) -> bool:
        """Whether its checkpoint needs more staging than one GPU's share of the node's budget."""
        f = self.launch
        if o.checkpoint_gb is None or f.staging_budget_gb is None:
            return False
        return o.checkpoint_gb > f.staging_budget_gb / max(1, f.node_gpus)

    def fixed_cost(self, o: OptionRow) -> float:
        """A fresh launch's fixed seconds on this backend: launch (+ process start when cold) +
        the final save's blocking part."""
        extra = 0.0 if self.launch.warm else self.worker_start_s()
        final = self.final_save_s(o)
        if final is None or o.checkpoint_s is None:
            return o.startup_s + extra
        return max(0.0, o.startup_s - o.checkpoint_s) + final + extra

    def add_profiles(self, profiles: pd.DataFrame) -> None:
        for r in profiles.to_dict("records"):
            if not _true(r.get("feasible", True)):
                st = r.get("status")
                why = r.get("reason")
                self.refused.setdefault(str(r["job"]), {})[(str(r["technique"]), int(r["gpus"]))] = (
                    st if isinstance(st, str) and st and st != "ok" else "infeasible",
                    why if isinstance(why, str) else "")
                continue
            st = _num(r.get("step_time_s"), math.nan)
            if not (st >= 0 and math.isfinite(st)):
                continue
            ck = _num(r.get("checkpoint_s"), math.nan)
            gt = r.get("gpu_type")
            row = OptionRow(str(r["technique"]), knobs_key(r.get("knobs")), int(r["gpus"]), st,
                            _num(r.get("startup_s"), 0.0), None if math.isnan(ck) else ck,
                            None if gt is None or (isinstance(gt, float) and math.isnan(gt)) else str(gt),
                            r["checkpoint_source"] if isinstance(r.get("checkpoint_source"), str) else None,
                            _opt(r.get("checkpoint_stage_s")), _opt(r.get("worker_start_s")),
                            _opt(r.get("checkpoint_gb")))
            lst = self.rows.setdefault(str(r["job"]), [])
            lst[:] = [x for x in lst if (x.technique, x.knobs, x.gpus, x.gpu_type) !=
                      (row.technique, row.knobs, row.gpus, row.gpu_type)] + [row]

    def why_no_option(self, js: JobState, cluster_gpus: int) -> str:
        """Why `js` has no option left, option by option, claiming OOM only where it was OOM."""
        info = js.info
        allowed = [o for o in self.rows.get(js.name, []) if (not info.techniques or o.technique in info.techniques)
                   and (not info.gpus or o.gpus in info.gpus)]
        parts = []
        oom = sorted(k for k in js.infeasible if not js.infeasible_why.get(k))
        if oom:  # recorded without a cause: a device OOM (the loop's "oom" status)
            parts.append("ran out of memory at run time (OOM) with " + ", ".join(k.replace("|", "×") for k in oom))
        parts += [f"{k.replace('|', '×')}: {js.infeasible_why[k][:500]}" for k in sorted(js.infeasible)
                  if js.infeasible_why.get(k)]
        refused = {k: v for k, v in self.refused.get(js.name, {}).items()
                   if (not info.techniques or k[0] in info.techniques) and (not info.gpus or k[1] in info.gpus)}
        for (tech, g), (status, why) in sorted(refused.items()):
            label = {"oom": "out of memory (OOM) when profiled", "host_oom": "killed for host memory when measured",
                     "failed": "failed when profiled",
                     "timeout": "timed out when profiled"}.get(status, "infeasible")
            parts.append(f"{tech}×{g}: {label}" + (f": {why.strip()}" if why.strip() else ""))
        if not allowed and not refused and not js.infeasible:
            if info.gpus and min(info.gpus) > cluster_gpus:
                return (f"it needs {min(info.gpus)} GPUs (gpus: {info.gpus}) and the largest node has "
                        f"{cluster_gpus}: more GPUs than the cluster has")
            return "no profile rows for it (not profiled); run `saturn profile` or pass --profiles"
        return "no runnable option: " + "; ".join(parts) if parts else "no runnable option"

    def options(self, js: JobState) -> list[OptionRow]:
        info = js.info
        out = []
        for o in self.rows.get(js.name, []):
            if option_key(o.technique, o.gpus) in js.infeasible:
                continue
            if info.techniques and o.technique not in info.techniques and not (
                    o.technique == "sharp" and "spilling" in info.techniques):  # SHARP = spilling in a group
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
        return self.fixed_cost(p) if p is not None else 0.0

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
def planner_jobs_and_profiles(state: RunState, est: Estimator, now: float) -> tuple[list[Any], pd.DataFrame]:
    """(jobs, profile table) for `saturn.planner.plan` describing the remaining work (running jobs
    may switch; `planner_inputs_around_running` is the variant in which none moves)."""
    jobs, rows = [], []
    for js in state.jobs.values():
        if js.status in OFF_GPU or (js.status == STOPPING and js.stop_reason != "switch"):
            continue
        steps = js.live_remaining_steps if js.status == RUNNING else js.remaining_steps
        if steps <= 0:
            continue
        seg = js.current if js.status == RUNNING else None
        opts = est.options(js)
        if not opts:
            continue
        fresh = seg is None and js.status != STOPPING and not js.startup_obs
        jobs.append(SimpleNamespace(name=js.name, steps=steps, techniques=None, gpus=None, signature=None,
                                    checkpoint_every=est.checkpoint_every if fresh else 0))
        for o in opts:
            st = est.step_time(js, o.technique, o.gpus, o.knobs)
            current = (seg is not None and o.technique == seg.technique and o.gpus == len(seg.gpus)
                       and o.knobs == knobs_key(seg.knobs))
            if current:
                startup = max(0.0, est.remaining_s(js, now) - steps * st)
            elif seg is not None:
                startup = est.switch_cost(js, o.technique, o.gpus, o.knobs)
            elif js.status == STOPPING:
                startup = _checkpoint_left(js, est, now) + est.startup(js, o.technique, o.gpus, o.knobs)
            else:
                startup = est.startup(js, o.technique, o.gpus, o.knobs)
            split = {}  # a fresh job on its profiled fixed cost: launch + final save, by phase
            final = est.final_save_s(o)
            if fresh and final is not None and startup >= final:
                behind = final != o.checkpoint_s
                split = {"launch_s": startup - final, "checkpoint_s": final,
                         "checkpoint_source": ("estimated" if behind and o.checkpoint_stage_s is None
                                               else o.checkpoint_source),
                         "checkpoint_stage_s": o.checkpoint_s if est.over_budget(o) else o.checkpoint_stage_s,
                         **({"drain_s": max(0.0, o.checkpoint_s - final)} if behind and o.checkpoint_s else {})}
            rows.append({"job": js.name, "technique": o.technique, "knobs": o.knobs, "gpus": o.gpus,
                         "step_time_s": st, "startup_s": startup, "feasible": True,
                         "gpu_type": o.gpu_type, **split})
    return jobs, pd.DataFrame(rows, columns=["job", "technique", "knobs", "gpus", "step_time_s",
                                             "startup_s", "feasible", "gpu_type", "launch_s",
                                             "checkpoint_s", "checkpoint_source",
                                             "checkpoint_stage_s", "drain_s"])


# ------------------------------------------------------------------------------------ retiming
CHECKPOINT_SUFFIX = "@checkpoint"  # pseudo-job holding a checkpointing job's old GPUs
WORKER_START_SUFFIX = "@worker-start"  # pseudo-job holding a GPU whose warm worker is starting


def _checkpoint_left(js: JobState, est: Estimator, now: float) -> float:
    """Checkpoint time a running/stopping job still needs before its GPUs are free."""
    left = est.checkpoint_cost(js)
    seg = js.current
    if seg is not None and seg.stop_requested_at is not None:
        left = max(0.0, left - (now - seg.stop_requested_at))
    return left


def held_gpus(state: RunState, est: Estimator, now: float, moved: Iterable[str] = ()) -> list[Assignment]:
    """What holds GPUs now, as `fixed` assignments for the planner (times relative to `now`).

    A running job not in `moved` keeps its option and GPUs until its estimated end (remaining time
    from observed speed); a job that checkpoints -- a stopping job, or a running job in `moved` --
    holds its old GPUs for its (remaining) checkpoint time, as a pseudo-job `<job>@checkpoint`
    (see `is_checkpoint`), which is not launched and is dropped from the plans the executor keeps."""
    moved = set(moved)
    out = []
    for js in state.jobs.values():
        seg = js.current
        if js.status not in ACTIVE or seg is None:
            continue
        if js.status == RUNNING and js.name not in moved:
            out.append(Assignment(js.name, seg.technique, dict(seg.knobs), seg.node, list(seg.gpus), 0.0,
                                  max(est.remaining_s(js, now), 1e-6)))
        else:
            left = _checkpoint_left(js, est, now)
            if left > 1e-9:
                out.append(Assignment(js.name + CHECKPOINT_SUFFIX, seg.technique, dict(seg.knobs), seg.node,
                                      list(seg.gpus), 0.0, left))
    return out + worker_start_blocks(state, est)


def worker_start_blocks(state: RunState, est: Estimator) -> list[Assignment]:
    """Devices whose warm worker is still starting, held for the rest of that start as pseudo-jobs
    `<node>:<gpu>@worker-start` (not launched, dropped like checkpoint pseudo-jobs): the first job
    planned there starts after it, every later one pays only the warm launch."""
    busy = state.busy_gpus()
    out = []
    for (node, gpu), left in sorted(est.launch.worker_starts.items()):
        left = est.worker_start_s() if left is None else float(left)
        if left > 1e-9 and (node, int(gpu)) not in busy:
            out.append(Assignment(f"{node}:{gpu}{WORKER_START_SUFFIX}", "worker-start", {}, node,
                                  [int(gpu)], 0.0, left))
    return out


def is_checkpoint(a: Any) -> bool:
    """A pseudo-job of `held_gpus` (a checkpoint or a worker start): held time, never launched."""
    job = a["job"] if isinstance(a, Mapping) else a.job
    return str(job).endswith((CHECKPOINT_SUFFIX, WORKER_START_SUFFIX))


def planner_inputs_around_running(state: RunState, est: Estimator, now: float
                                  ) -> tuple[list[Any], pd.DataFrame, list[Assignment]]:
    """(jobs, profile table, fixed) for `plan(jobs, cluster, table, fixed=fixed)`: the plan in
    which no running job moves. Running jobs are fixed on their GPUs (see `held_gpus`), so the
    solver places everything else around them; only the other jobs are planned."""
    fixed = held_gpus(state, est, now)
    pinned = {a.job for a in fixed}
    jobs, table = planner_jobs_and_profiles(state, est, now)
    jobs = [j for j in jobs if j.name not in pinned]
    table = table[table["job"].isin({j.name for j in jobs})].reset_index(drop=True)
    return jobs, table, fixed


@dataclass
class Choice:
    job: str
    technique: str
    knobs: dict
    gpus: int
    node: Optional[str] = None


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


def retimed_from_plan(plan: Any, source: str, switches: Sequence[str] = ()) -> Retimed:
    """A planner result (relative to now, running jobs fixed in it) as a candidate; the
    checkpoint pseudo-jobs are dropped."""
    d = plan.to_dict() if hasattr(plan, "to_dict") else dict(plan)
    out = [dict(a) for a in d.get("assignments", []) if not is_checkpoint(a)]
    return Retimed(assignments=out, makespan_s=max([a["end_s"] for a in out] + [0.0]), switches=list(switches),
                   source=source, solver=dict(d.get("solver") or {}),
                   lower_bound_s=float(d.get("lower_bound_s", 0.0)))


def retime(state: RunState, est: Estimator, now: float, nodes: Mapping[str, int],
           choices: Iterable[Choice], source: str = "") -> Optional[Retimed]:
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
        release = _checkpoint_left(js, est, now) if js.status in ACTIVE else 0.0  # it checkpoints first
        opt = Option(c.job, c.technique, knobs_key(c.knobs), c.gpus, max(dur, 1e-6))
        place.append(Placement(opt, c.node if c.node in nodes else None, release))
    try:
        placed = list_schedule([NodeSpec(n, int(k)) for n, k in nodes.items()], place, fixed)
    except ValueError:  # an option fits no node (or not its planned one)
        return None
    out = [a.to_dict() for a in fixed if not is_checkpoint(a)] + [a.to_dict() for a in placed]
    ms = max([a["end_s"] for a in out] + [0.0])
    return Retimed(assignments=out, makespan_s=ms, switches=switches, source=source)


def choices_from_plan(plan: Optional[dict], state: RunState) -> list[Choice]:
    """A plan's choices in its start order, for the unfinished jobs it covers."""
    if not plan:
        return []
    out = []
    for a in sorted(plan.get("assignments", []), key=lambda a: (a["start_s"], a["job"])):
        js = state.jobs.get(a["job"])
        if js is None or js.status in OFF_GPU or (js.status == STOPPING and js.stop_reason != "switch"):
            continue
        out.append(Choice(a["job"], a["technique"], dict(a.get("knobs") or {}), len(a["gpus"]), a.get("node")))
    return out


def covers(plan_choices: Sequence[Choice], state: RunState, est: Estimator) -> bool:
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
        total = sum(weight(a["job"]) for a in c.assignments)
        return sum(weight(a["job"]) * a["end_s"] for a in c.assignments) / total if total else 0.0

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


# --------------------------------------------------------------------------------- launching
def ready_to_launch(plan: Optional[dict], state: RunState) -> list[dict]:
    """Assignments of pending jobs whose GPUs are free and whose plan predecessors (earlier
    assignments sharing a GPU) are finished."""
    if not plan:
        return []
    busy = state.busy_gpus()
    order = sorted(plan.get("assignments", []), key=lambda a: (a["start_s"], a["job"]))
    out: list[dict] = []
    claimed: set[tuple[str, int]] = set()
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
            if bj is not None and bj.status not in OFF_GPU:  # a finishing job's GPUs are free
                blocked = True
                break
        if not blocked:
            out.append(a)
            claimed |= gpus
    return out
