"""The executor: run a plan, watch progress, re-plan, switch, retry; the same loop for every backend.

    ex = Executor(workload.jobs, workload.cluster.resolved(), profiles, backend, run_dir=run_dir)
    ex.run_until_done()            # or: while ex.step(): backend.wait(...)
    ex.submit(job); ex.cancel("name")   # dynamic workloads (HPO)
    ex.results["name"].final_loss

State changes go through `emit` only: each is journaled (SQLite) and applied with
`journal.apply_event`, which is also what `Executor.resume` replays.

This module holds what a reader follows first: setting a run up, its API, and the loop (`step`).
The loop's parts live in modules named by what they do, each a part of `Executor`:
`events` (what the backend reports), `replanning` (when and what to adopt), `launching` (what
starts now), `resume` (continuing a run from its journal); the decisions they rest on are pure
functions in `estimates`, `planner_inputs` and `candidates`; the run directory's files are
written by `run_files` and `metrics`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Optional, Union

import pandas as pd

from saturn.executor import resume as resume_mod
from saturn.executor.backends.base import Backend
from saturn.executor.config import ExecutorConfig, ExecutorError
from saturn.executor.estimates import Estimator, profile_records
from saturn.executor.events import EventHandling
from saturn.executor.journal import Journal, apply_event, heartbeat, open_journal, record_executor
from saturn.executor.launching import Launching
from saturn.executor.metrics import MetricsLog
from saturn.executor.replanning import Replanning
from saturn.executor.run_files import write_error_file
from saturn.executor.run_lock import RunLock
from saturn.executor.state import (
    ACTIVE,
    FINISHING,
    PENDING,
    RUNNING,
    TERMINAL,
    JobInfo,
    JobResult,
    RunState,
)

log = logging.getLogger(__name__)


def _nodes_of(cluster: Any) -> list[SimpleNamespace]:
    if hasattr(cluster, "resolved"):
        cluster = cluster.resolved()
    if hasattr(cluster, "nodes") and not isinstance(cluster, Mapping):
        cluster = cluster.nodes
    if isinstance(cluster, Mapping):
        return [SimpleNamespace(name=str(k), gpus=int(v), gpu_type=None, gpu_memory_gb=None)
                for k, v in cluster.items()]
    return [SimpleNamespace(name=str(n.name), gpus=int(n.gpus), gpu_type=getattr(n, "gpu_type", None),
                            gpu_memory_gb=getattr(n, "gpu_memory_gb", None)) for n in cluster]


def _jobs_of(jobs: Any) -> list[JobInfo]:
    if hasattr(jobs, "jobs") and not isinstance(jobs, Mapping):
        jobs = jobs.jobs
    if isinstance(jobs, Mapping):
        return [JobInfo(name=str(k), total_steps=int(v)) for k, v in jobs.items()]
    return [JobInfo.from_job(j) for j in jobs]


class Executor(EventHandling, Replanning, Launching):
    """One run: its state, journal and backend, and the loop over them. Its parts (handling events,
    re-planning, launching) are classes of their own modules so that each reads on its own; they
    share this object's attributes, set here."""

    def __init__(self, jobs: Any, cluster: Any, profiles: pd.DataFrame, backend: Backend, *,
                 run_dir: Union[str, Path, None] = None, config: Optional[ExecutorConfig] = None,
                 plan: Union[dict, Any, None] = None, display: Any = None, run_lock: Optional[RunLock] = None,
                 _journal: Optional[Journal] = None, _state: Optional[RunState] = None):
        self.cfg = config or ExecutorConfig()
        self.backend = backend
        self.run_dir = None if run_dir is None else Path(run_dir)
        # one executor per run directory, taken before anything is written there (run_lock.py)
        self.run_lock = run_lock if run_lock is not None or self.run_dir is None else RunLock.acquire(self.run_dir)
        if _state is None and self.run_dir is not None and (self.run_dir / "journal.sqlite").exists():
            if run_lock is None:
                self.close()
            raise ExecutorError(f"{self.run_dir} already holds a run; continue it with "
                                f"`saturn run --resume {self.run_dir}` or pick another run directory")
        try:
            self.nodes = _nodes_of(cluster)
            self.node_gpus = {n.name: n.gpus for n in self.nodes}
            self.est = Estimator(profiles, int(getattr(backend, "checkpoint_every", 0) or 0))
            self.display = display
            self.journal = _journal or open_journal(self.run_dir)
            self.state = _state or RunState()
            self.metrics = MetricsLog(self.run_dir) if self.run_dir is not None else None
            self.decisions: list[dict] = []  # re-plan decisions (for reports/benchmarks)
            # in-run measurement of unmeasured options (saturn.profiles.inrun.RunMeasurer); set by
            # saturn.executor.build for runs whose profile rows come from the store of this machine
            self.measurer: Any = None
            self.plan_calls = 0
            self.plan_time_s = 0.0
            # set by events, new jobs, cancels and the API's profile updates: the loop re-plans
            # at its next turn (saturn.executor.replanning)
            self.replan_needed = False
            self._skipped_ckpts: set[str] = set()  # checkpoints reported as not the job's own
            self._shutdown: Optional[str] = None
            self._resumed = _state is not None
            if _state is None:
                if self.run_dir is not None:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    self.journal.set_meta("nodes", [vars(n) for n in self.nodes])
                    self.journal.set_meta("config", self.cfg.to_dict())
                    record_executor(self.journal, self.run_dir)
                self.emit("run_started", wall=time.time())
                self.emit("profiles", rows=profile_records(profiles))
                for info in _jobs_of(jobs):
                    self.emit("job_added", info=info.to_dict())
                if plan is not None:
                    p = plan.to_dict() if hasattr(plan, "to_dict") else dict(plan)
                    self._adopt(p, "given")
                else:
                    self._initial_plan()
        except BaseException:
            if run_lock is None:  # ours: a failed start leaves the directory free
                self.close()
            raise
        self._next_replan = self.backend.now() + self.cfg.interval_s

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def resume(cls, run_dir: Union[str, Path], backend_factory, *, config: Optional[ExecutorConfig] = None,
               display: Any = None) -> "Executor":
        """Continue a run from its journal: jobs that were running when the executor died are
        resumed from their newest checkpoint on disk (their processes died with it). See
        saturn.executor.resume."""
        return resume_mod.resume_run(cls, run_dir, backend_factory, config=config, display=display)

    def close(self) -> None:
        """Give up the run directory (its lock): another executor may resume it from now on."""
        if self.run_lock is not None:
            self.run_lock.release()

    def job_dir(self, job: str) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "jobs" / job

    # ---------------------------------------------------------------------------------- events
    def emit(self, kind: str, **data: Any) -> None:
        t = self.backend.now()
        self.journal.append(t, kind, data)
        apply_event(self.state, t, kind, data)

    @property
    def now(self) -> float:
        return self.backend.now()

    # ---------------------------------------------------------------------------------- API
    def submit(self, job: Any, profiles: Optional[pd.DataFrame] = None) -> None:
        """Add a job while running (its profile rows, with a `job` column, unless known)."""
        if not (isinstance(job, JobInfo) or (hasattr(job, "name") and hasattr(job, "total_steps"))):
            raise ExecutorError(f"submit(job): job must be a saturn.Job, not {type(job).__name__}")
        info = JobInfo.from_job(job)
        if info.name in self.state.jobs and self.state.jobs[info.name].status not in TERMINAL:
            raise ExecutorError(f"job {info.name!r} is already in this run")
        old = self.state.jobs.get(info.name)
        if old is not None:
            check_same_definition(info.name, old.info.spec, info.spec)
        if profiles is not None and len(profiles):
            self.emit("profiles", rows=profile_records(profiles))
            self.est.add_profiles(profiles)
        if not self.est.rows.get(info.name):
            raise ExecutorError(f"job {info.name!r} has no profile rows; profile it first")
        self.emit("job_added", info=info.to_dict())
        self.replan_needed = True

    def cancel(self, job_name: str, reason: str = "cancelled") -> None:
        js = self.state.jobs.get(job_name)
        if js is None:
            raise ExecutorError(f"no job {job_name!r} in this run")
        if js.status in TERMINAL or js.status == FINISHING:  # finishing: trained, being written
            return
        if js.status in ACTIVE:
            self.emit("stop_requested", job=job_name, reason="cancel")
            self.backend.stop(job_name)
        else:
            self.emit("cancel", job=job_name, reason=reason)
        self.replan_needed = True

    def request_shutdown(self, reason: str = "signal") -> None:
        """Checkpoint every running job and stop (Ctrl-C / SIGTERM)."""
        if self._shutdown is None:
            self._shutdown = reason
            for js in self.state.jobs.values():
                if js.status == RUNNING:
                    self.emit("stop_requested", job=js.name, reason="shutdown")
                    self.backend.stop(js.name)

    @property
    def results(self) -> dict[str, JobResult]:
        out = {}
        for js in self.state.jobs.values():
            mp = str(self.job_dir(js.name) / "metrics.jsonl") if self.run_dir else None
            out[js.name] = JobResult(js.name, js.status, js.committed_step, js.loss, js.checkpoint, mp, js.reason)
        return out

    @property
    def makespan_s(self) -> float:
        return max([s.ended_at or 0.0 for js in self.state.jobs.values() for s in js.segments] + [0.0])

    def step(self) -> bool:
        """One iteration: poll, handle events, re-plan if due, launch. False when the run is over."""
        for ev in self.backend.poll():
            self._on_event(ev)
        if self.metrics is not None:
            for name in self.metrics.missing():  # deleted mid-run: rebuilt from the progress records
                js = self.state.jobs.get(name)
                if js is not None:
                    self._warn(name, f"{self.metrics.path(name)} was deleted during the run; rebuilt from "
                               "the attempts' progress records")
                    self.metrics.rebuild(name, js.segments)
            self.metrics.flush()
            heartbeat(self.run_dir)
        self.housekeeping()
        if self._shutdown is not None:
            if self.display is not None:
                self.display.update(self)
            return any(j.status in ACTIVE + (FINISHING,) for j in self.state.jobs.values())
        now = self.backend.now()
        if self.replan_needed or (self.cfg.introspect and now >= self._next_replan):
            self.replan("event" if self.replan_needed else "interval",
                        force=self.replan_needed and not self._plan_covers())
        self._launch_ready()
        busy = ACTIVE + (FINISHING,)  # a finishing job's drain still ends the run later
        if not self.state.done() and not any(j.status in busy for j in self.state.jobs.values()):
            self.replan("stalled", force=True)  # nothing runs and nothing can start: plan again
            self._launch_ready()
            if not any(j.status in busy for j in self.state.jobs.values()) and not self.state.done():
                raise ExecutorError("no job can be launched: " + ", ".join(
                    f"{j.name} ({j.status})" for j in self.state.unfinished()))
        if self.display is not None:
            self.display.update(self)
        return not self.state.done()

    def run_until_done(self) -> dict[str, JobResult]:
        while self.step():
            now = self.backend.now()
            timeout = self._next_replan - now if self.cfg.introspect else math.inf
            self.backend.wait(max(0.0, min(timeout, self.cfg.poll_s)))
        # a stop that came when every job was already done (during the final drains) stopped nothing
        stopped = self._shutdown is not None and not self.state.done()
        self.emit("run_stopped" if stopped else "run_finished", reason=self._shutdown or "")
        return self.results

    # --------------------------------------------------------------------------------- internals
    def housekeeping(self) -> None:
        """Settle pending jobs that need no process: completed if no steps are left, failed (with
        the reason) if no option can run them. Each turn, and once on resume (executor.resume)."""
        for js in self.state.jobs.values():
            if js.status == PENDING and js.remaining_steps <= 0:
                self.emit("finished", job=js.name, status="completed", step=js.committed_step,
                          checkpoint=js.checkpoint, loss=js.loss, reason="")
            elif js.status == PENDING and not self.est.options(js):
                last = f"; last failure: {js.reason[-2000:]}" if js.reason else ""
                self.fail_job(js.name, self.est.why_no_option(js, max(self.node_gpus.values(), default=0)) + last)

    def fail_job(self, job: str, reason: str) -> None:
        """Fail `job` for good. Its cause goes to the journal and, in a run directory, to
        RUN/jobs/<job>/error.txt (with the attempt logs that exist), whose path is reported."""
        path = write_error_file(self.job_dir(job), job, reason) if self.run_dir is not None else None
        self.emit("job_failed", job=job, reason=reason, log=None if path is None else str(path))

    def _warn(self, job: str, text: str) -> None:
        """A warning in the run's own output: its journal (status/report list it) and the console."""
        self.emit("warning", job=job, text=text)
        log.warning("job %s: %s", job, text)


def check_same_definition(name: str, old_spec: Optional[dict], new_spec: Optional[dict]) -> None:
    """A job re-submitted under a finished job's name resumes that job's checkpoints and extends its
    metrics, so it must be the same definition (saturn.spec.signature.definition_hash); else refused."""
    if not old_spec or not new_spec:
        return
    from saturn.spec.signature import DEFINITION_FIELDS, definition_hash

    if definition_hash(old_spec) != definition_hash(new_spec):
        diff = [k for k in DEFINITION_FIELDS if old_spec.get(k) != new_spec.get(k)]
        raise ExecutorError(f"job {name!r} was already run in this run directory with another definition "
                            f"(differs in: {', '.join(diff) or 'its definition'}); refused, not started -- it "
                            "would resume the old job's checkpoints and extend its metrics. Submit it under a "
                            "new name")

