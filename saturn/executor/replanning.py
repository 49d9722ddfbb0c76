"""Re-planning: when the executor asks the planner again, what it compares, and what it adopts.

Why a module of its own: a re-plan weighs up to three candidates (the current plan retimed, a free
re-plan in which running jobs may move, the plan around the running jobs) and adopts one only if
it pays for its switches (`saturn.executor.candidates`); an adopted plan is journaled and written
to the run directory (`run_files`). That sequence is the executor's one decision, so it reads
top to bottom here. `Replanning` is a part of `saturn.executor.loop.Executor` (its attributes are
the executor's).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Optional

from saturn.errors import SaturnError
from saturn.executor import candidates, planner_inputs
from saturn.executor.config import ExecutorConfig
from saturn.executor.estimates import Estimator, LaunchFacts
from saturn.executor.run_files import write_plan_files
from saturn.executor.state import PENDING, RunState
from saturn.planner import InvalidPlanError

log = logging.getLogger(__name__)


class Replanning:
    """The executor's planning (see the module docstring)."""

    cfg: ExecutorConfig
    state: RunState
    est: Estimator
    backend: Any
    nodes: list
    node_gpus: dict
    run_dir: Any
    decisions: list
    plan_calls: int
    plan_time_s: float
    replan_needed: bool
    _next_replan: float
    emit: Callable[..., None]
    housekeeping: Callable[[], None]

    def _plan_covers(self) -> bool:
        return candidates.covers(candidates.choices_from_plan(self.state.plan, self.state), self.state, self.est)

    def _launch_facts(self) -> None:
        """Refresh what launches cost on this backend (warm workers up or starting, drains behind)
        for the planner; only a one-node local backend reports them."""
        facts = getattr(self.backend, "launch_facts", None)
        if facts is None or len(self.nodes) != 1:
            return
        n = self.nodes[0]
        self.est.launch = LaunchFacts(**facts(n.name, list(range(int(n.gpus)))))

    def _initial_plan(self) -> None:
        from saturn.planner import plan as solve

        self._launch_facts()
        jobs, table = planner_inputs.planner_jobs_and_profiles(self.state, self.est, self.backend.now())
        if not jobs:
            return
        p = self._solve(solve, jobs, table, None,
                        fixed=planner_inputs.worker_start_blocks(self.state, self.est) or None).to_dict()
        p["assignments"] = [a for a in p.get("assignments", []) if not planner_inputs.is_checkpoint(a)]
        self._adopt(p, "initial")

    def _solve(self, solve, jobs, table, warm, fixed=None, time_limit_s=None):
        t0 = time.perf_counter()
        try:
            from saturn.executor import sharp_dispatch  # SHARP group options, where they can run

            return sharp_dispatch.solve(self, solve, jobs, table, time_limit_s=time_limit_s or self.cfg.time_limit_s,
                                        mip_gap=self.cfg.mip_gap, warm_start=warm, fixed=fixed,
                                        objective=self.cfg.objective)
        finally:
            self.plan_calls += 1
            self.plan_time_s += time.perf_counter() - t0

    def replan(self, reason: str = "interval", force: bool = False) -> Optional[candidates.Decision]:
        """Re-solve for the remaining work and adopt the result if it pays (candidates.choose_plan)."""
        from saturn.planner import plan as solve

        self.replan_needed = False
        now = self.backend.now()
        self._next_replan = now + self.cfg.interval_s
        self._launch_facts()
        self.housekeeping()
        if self.state.done():
            return None
        est = self.est
        cur_choices = candidates.choices_from_plan(self.state.plan, self.state)
        cur = None
        if not force and candidates.covers(cur_choices, self.state, est):
            cur = candidates.retime(self.state, est, now, self.node_gpus, cur_choices, "current")
        jobs, table = planner_inputs.planner_jobs_and_profiles(self.state, est, now)
        cands = []
        if jobs:
            warm = cur.to_plan_dict() if cur is not None else None
            try:
                new = self._solve(solve, jobs, table, warm).to_dict()
            except SaturnError as exc:
                log.warning("re-plan failed: %s", exc)
                new = None
            if new is not None:
                # running jobs were free to move in `new`: pin those that keep their option
                c = candidates.retime(self.state, est, now, self.node_gpus,
                                      candidates.choices_from_plan(new, self.state), "replan")
                if c is not None:
                    c.solver, c.lower_bound_s = dict(new.get("solver") or {}), float(new.get("lower_bound_s", 0.0))
                cands.append(c)
            around = self._plan_around_running(solve, now, new or warm)
            if around is not None:
                cands.append(around)
        if force and not cands and cur_choices and candidates.covers(cur_choices, self.state, est):
            cands.append(candidates.retime(self.state, est, now, self.node_gpus, cur_choices, "current"))
        if not jobs:  # only running jobs are left: nothing to decide
            return None
        dec = candidates.choose_plan(cur, cands, min_gain_s=self.cfg.min_gain_s, min_gain_frac=self.cfg.min_gain_frac,
                                 score=candidates.plan_score(self.cfg.objective, self.state))
        self.decisions.append({"t": now, "reason": reason, "adopt": dec.adopt, "current_s": dec.current_s,
                               "best_s": dec.best_s, "why": dec.reason,
                               "switches": list(dec.chosen.switches) if dec.chosen else []})
        if dec.adopt and dec.chosen is not None:
            for name in dec.chosen.switches:
                self.emit("switch", job=name)
                self.emit("stop_requested", job=name, reason="switch")
                self.backend.stop(name)
            self._adopt(dec.chosen.to_plan_dict(), reason if reason != "interval" else "replan",
                        detail=dec.reason)
        elif cur is not None:
            self.emit("replan_rejected", reason=reason, detail=dec.reason, current_s=dec.current_s,
                      best_s=dec.best_s if math.isfinite(dec.best_s) else None)
            if _moves_pending(self.state.plan, cur.to_plan_dict(), self.state):
                # same choices, retimed around what really happened (a crash, an early end): a
                # pending job may now start on GPUs the stored plan kept for someone else (#16)
                self._adopt(cur.to_plan_dict(), "retime", detail="current plan retimed")
        return dec

    def _plan_around_running(self, solve, now: float, warm: Optional[dict]) -> Optional[candidates.Retimed]:
        """The "no job moved" candidate: the planner plans the other jobs around the running ones
        (fixed on their GPUs until their estimated end), warm-started from the free re-plan."""
        jobs, table, fixed = planner_inputs.planner_inputs_around_running(self.state, self.est, now)
        if all(planner_inputs.is_checkpoint(a) for a in fixed):
            return None  # nothing runs: the same problem as the free re-plan
        try:
            p = self._solve(solve, jobs, table, warm, fixed=fixed, time_limit_s=self.cfg.time_limit_s / 2)
        except (SaturnError, InvalidPlanError) as exc:
            log.warning("re-plan around the running jobs failed: %s", exc)
            return None
        return candidates.retimed_from_plan(p, "replan-keep-running")

    def _adopt(self, plan_dict: dict, reason: str, detail: str = "") -> None:
        version = self.state.plan_version + 1
        self.emit("plan", version=version, t0=self.backend.now(), plan=plan_dict, reason=reason, detail=detail)
        if self.run_dir is not None:
            write_plan_files(self.run_dir, version, plan_dict)


def _moves_pending(old: Optional[dict], new: dict, state) -> bool:
    """Whether `new` places a pending job on other GPUs than `old` (so launching follows it)."""
    before = {a["job"]: (a["node"], sorted(a["gpus"])) for a in (old or {}).get("assignments", [])}
    return any(state.jobs.get(a["job"]) is not None and state.jobs[a["job"]].status == PENDING
               and before.get(a["job"]) != (a["node"], sorted(a["gpus"])) for a in new.get("assignments", []))
