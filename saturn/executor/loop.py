"""The executor: run a plan, watch progress, re-plan, switch, retry; the same loop for every backend.

    ex = Executor(workload.jobs, workload.cluster.resolved(), profiles, backend, run_dir=run_dir)
    ex.run_until_done()            # or: while ex.step(): backend.wait(...)
    ex.submit(job); ex.cancel("name")   # dynamic workloads (HPO)
    ex.results["name"].final_loss

State changes go through `emit` only: each is journaled (SQLite) and applied with
`journal.apply_event`, which is also what `Executor.resume` replays.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Optional, Union

import pandas as pd

from saturn.errors import SaturnError
from saturn.executor import defaults, policy
from saturn.executor.backends.base import Backend, BackendEvent
from saturn.executor.backends.process import latest_checkpoint_step
from saturn.executor.journal import Journal, JournalError, apply_event, heartbeat, open_journal, record_executor, replay
from saturn.executor.metrics import PROGRESS_FILE, MetricsLog
from saturn.executor.run_lock import RunLock
from saturn.executor.state import (
    ACTIVE,
    CANCELLED,
    FAILED,
    FINISHING,
    PENDING,
    RUNNING,
    TERMINAL,
    JobInfo,
    JobResult,
    RunState,
    option_key,
)
from saturn.planner import InvalidPlanError
from saturn.runtime.job_runner import RUNNER_MARKER
from saturn.runtime.process import kill_stale

log = logging.getLogger(__name__)


class ExecutorError(SaturnError):
    """The run cannot continue (bad run directory, nothing can be scheduled...)."""


@dataclass
class ExecutorConfig:
    interval_s: float = defaults.INTERVAL_S  # re-plan every interval (run clock)
    introspect: bool = True  # False: execute the first plan as is (the static baseline)
    replan_on_events: bool = True  # also re-plan when a job finishes, fails, or is added/cancelled
    max_retries: int = defaults.MAX_RETRIES  # relaunches of a crashed job from its checkpoint before it is failed
    time_limit_s: float = defaults.TIME_LIMIT_S  # planner limit per re-plan (+ half of it around running jobs)
    mip_gap: float = 0.02
    min_gain_s: float = 0.0  # adopt a new plan only if it saves more than this ...
    min_gain_frac: float = 0.02  # ... and more than this fraction of the remaining makespan
    objective: str = "makespan"  # or mean_completion / weighted_completion (planner/objectives.py)
    poll_s: float = 0.5  # real backends: how often to poll processes (simulation: inf)
    shutdown_timeout_s: float = 600.0

    def to_dict(self) -> dict:
        return asdict(self)


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


class Executor:
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
            self.est = policy.Estimator(profiles, int(getattr(backend, "checkpoint_every", 0) or 0))
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
            self._replan_needed = False
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
                self.emit("profiles", rows=_records(profiles))
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
        resumed from their newest checkpoint on disk (their processes died with it)."""
        run_dir = Path(run_dir)
        path = run_dir / "journal.sqlite"
        if not path.exists():
            raise ExecutorError(f"{run_dir} is not a run directory (no journal.sqlite); "
                                "start a run with `saturn run WORKLOAD.yaml --run-dir DIR`")
        lock = RunLock.acquire(run_dir, create_dir=False)  # before anything is written (run_lock.py)
        try:
            return cls._resume_locked(run_dir, path, lock, backend_factory, config, display)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _resume_locked(cls, run_dir: Path, path: Path, lock: RunLock, backend_factory,
                       config: Optional[ExecutorConfig], display: Any) -> "Executor":
        journal = Journal(path)
        if not any(kind == "run_started" for _, kind, _ in journal.events()):
            raise JournalError(f"run journal {path} holds no run (no events): it was cut before the run "
                               "started, so nothing can be resumed; start the run again with a new --run-dir")
        state = replay(journal)
        record_executor(journal, run_dir)
        cfg = config or ExecutorConfig(**{k: v for k, v in (journal.get_meta("config") or {}).items()
                                          if k in ExecutorConfig.__dataclass_fields__})
        nodes = journal.get_meta("nodes") or []
        rows = [r for _, kind, d in journal.events() if kind == "profiles" for r in d["rows"]]
        backend = backend_factory(state.clock_offset)
        ex = cls([], [SimpleNamespace(**n) for n in nodes], pd.DataFrame(rows), backend, run_dir=run_dir,
                 config=cfg, display=display, run_lock=lock, _journal=journal, _state=state)
        ex.emit("resumed", wall=time.time())
        for js in list(state.jobs.values()):
            seg = js.current
            if js.status in ACTIVE and seg is not None:
                kill_stale(seg.pid, RUNNER_MARKER)  # a runner that outlived its executor
                ex._check_checkpoints(js)
                step, ckpt = latest_checkpoint_step(ex.job_dir(js.name) / "ckpt", js.info.spec,
                                                    js.info.total_steps) if ex.run_dir else (None, None)
                if step is None or step < js.committed_step:
                    step, ckpt = js.committed_step, js.checkpoint
                ex.emit("finished", job=js.name, status="lost", step=step, checkpoint=ckpt,
                        reason="the executor stopped while this attempt ran")
        for js in list(state.jobs.values()):  # its drain died with the executor, or finished
            if js.status == FINISHING:
                ex._settle_drain(js, None, "the executor stopped while this job's final checkpoint "
                                           "was being written")
        for js in state.jobs.values():  # steps logged after the executor's last read
            if ex.metrics is not None and js.segments:
                ex.metrics.reconcile(js.name, js.segments)
        ex._housekeeping()
        if not state.done():
            ex.replan("resume", force=True)
        return ex

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
            self.emit("profiles", rows=_records(profiles))
            self.est.add_profiles(profiles)
        if not self.est.rows.get(info.name):
            raise ExecutorError(f"job {info.name!r} has no profile rows; profile it first")
        self.emit("job_added", info=info.to_dict())
        self._replan_needed = True

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
        self._replan_needed = True

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
        self._housekeeping()
        if self._shutdown is not None:
            if self.display is not None:
                self.display.update(self)
            return any(j.status in ACTIVE + (FINISHING,) for j in self.state.jobs.values())
        now = self.backend.now()
        if self._replan_needed or (self.cfg.introspect and now >= self._next_replan):
            self.replan("event" if self._replan_needed else "interval",
                        force=self._replan_needed and not self._plan_covers())
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
        self.emit("run_finished" if self._shutdown is None else "run_stopped", reason=self._shutdown or "")
        return self.results

    # --------------------------------------------------------------------------------- internals
    def _plan_covers(self) -> bool:
        return policy.covers(policy.choices_from_plan(self.state.plan, self.state), self.state, self.est)

    def _on_event(self, ev: BackendEvent) -> None:
        js = self.state.jobs.get(ev.job)
        if js is None:
            return
        if ev.kind == "progress":
            if not 0 <= int(ev.step) <= js.info.total_steps:
                return
            if self.metrics is not None and js.current is not None:
                self.metrics.record_progress(ev.job, js.current, ev.step, ev.loss)
            self.journal.append(ev.t, "progress", {"job": ev.job, "step": ev.step, "loss": ev.loss})
            apply_event(self.state, ev.t, "progress", {"job": ev.job, "step": ev.step, "loss": ev.loss})
            if self.measurer is not None and ev.step_time_s is not None and js.current is not None:
                self._measured(lambda: self.measurer.on_steps(ev.job, [(ev.step, ev.step_time_s)],
                                                              launch_s=js.current.startup_s))
            return
        if ev.kind == "checkpoint":
            if not 0 <= int(ev.step) <= js.info.total_steps:  # (runners skip such checkpoints too)
                self._warn(js.name, f"ignored a checkpoint report at step {ev.step}, outside the job's "
                           f"0..{js.info.total_steps} steps: {ev.checkpoint}")
                return
            for kind in ("progress", "checkpoint"):
                d = {"job": ev.job, "step": ev.step, "loss": ev.loss, "checkpoint": ev.checkpoint}
                self.journal.append(ev.t, kind, d)
                apply_event(self.state, ev.t, kind, d)
            return
        if ev.kind == "durable":
            if js.status == FINISHING:
                d = {"job": ev.job, "ok": ev.status == "durable", "step": ev.step,
                     "checkpoint": ev.checkpoint, "drain_s": ev.drain_s, "reason": ev.reason}
                self.journal.append(ev.t, "durable", d)
                apply_event(self.state, ev.t, "durable", d)
                if js.status == PENDING:  # lost: it runs again from its last durable checkpoint
                    log.warning("job %s: %s", js.name, ev.reason)
                    if self.metrics is not None:
                        self.metrics.settle(js.name, js.segments)
                    self._replan_needed = True
            return
        seg = js.current
        step = ev.step if ev.step is not None and ev.step >= 0 else js.committed_step
        if step > js.info.total_steps:  # never let a bogus step complete a job
            self._warn(js.name, f"attempt reported step {step}, past the job's {js.info.total_steps} steps; "
                       f"kept step {js.committed_step}")
            ev.status, ev.checkpoint, step = "failed", None, js.committed_step
            ev.reason = f"reported step {ev.step}, past the job's {js.info.total_steps} steps. {ev.reason or ''}"
        if self.metrics is not None and ev.losses and seg is not None:
            for s, loss in ev.losses:
                self.metrics.record(js.name, seg, int(s), loss)
        d = {"job": ev.job, "status": ev.status, "step": step, "checkpoint": ev.checkpoint, "loss": ev.loss,
             "reason": ev.reason[-4000:] if ev.reason else ""}
        if ev.phases:
            d["phases"] = dict(ev.phases)
        if not ev.durable and ev.status == "completed":
            d["durable"] = False
        self.journal.append(ev.t, "finished", d)
        apply_event(self.state, ev.t, "finished", d)
        if self.metrics is not None:
            self.metrics.settle(js.name, js.segments)  # steps past its checkpoint: superseded
        if self.measurer is not None:
            self._measured(lambda: self.measurer.on_end(ev.job, str(ev.status), ev.reason or "",
                                                        host_peak_gb=ev.host_peak_gb, host_limit_gb=ev.host_limit_gb))
        if ev.status in ("oom", "host_oom") and seg is not None:  # a host OOM says so (causes.Death)
            why = ev.reason.splitlines()[0] if ev.status == "host_oom" and ev.reason else ""
            self.emit("infeasible", job=ev.job, technique=seg.technique, gpus=len(seg.gpus), reason=why)
            self._replan_needed = True
        elif ev.status == "failed" and js.status == PENDING:
            if js.failures > self.cfg.max_retries:
                times = f"{js.failures} time" + ("s" if js.failures != 1 else "")
                self.fail_job(ev.job, f"failed {times}; last: {ev.reason[-2000:]}")
                self._replan_needed = True
            else:  # a retry re-plans (#16): the crashed job's GPUs are free for any job meanwhile
                self._replan_needed = True
        elif ev.status == "completed" or js.status in (CANCELLED, FAILED):
            if self.cfg.introspect and self.cfg.replan_on_events:
                self._replan_needed = True
            elif not self._plan_covers():
                self._replan_needed = True

    def _measured(self, measure: Any) -> None:
        """A job's own steps measured its option (saturn.profiles.inrun): every job of its
        signature uses the measurement from now on, and the plan is redone on the first one. A
        store that cannot be written (disk full, lock timeout) costs the measurement, not the run."""
        try:
            m = measure()
        except (OSError, SaturnError, TimeoutError) as exc:
            log.warning("in-run measurement not recorded: %s", exc)
            return
        if m is None:
            return
        self.emit("measured", job=m.jobs[0] if m.jobs else "", signature=m.signature, technique=m.technique,
                  knobs=m.knobs, gpus=m.gpus, feasible=m.feasible, step_time_s=m.step_time_s, steps=m.steps,
                  jobs=list(m.jobs), source=m.source, first=m.first, reason=m.reason, stored=m.stored)
        if m.feasible:
            self.emit("profiles", rows=_records(m.rows))
            self.est.add_profiles(m.rows)
        else:  # out of memory, or a crash before any measurement: no job of the signature uses it again
            key = option_key(m.technique, m.gpus)
            for name in m.jobs:
                other = self.state.jobs.get(name)
                if other is None or key in other.infeasible:
                    continue
                # a crash drops the option only where another is left (else retries decide)
                if m.stored or any(option_key(o.technique, o.gpus) != key for o in self.est.options(other)):
                    self.emit("infeasible", job=name, technique=m.technique, gpus=m.gpus, reason=m.reason)
        if m.first or not m.feasible:
            self._replan_needed = True

    def _settle_drain(self, js: Any, ok: Optional[bool], reason: str) -> None:
        """Decide a finishing job from its checkpoint directory (on resume, its drain's process is
        gone): durable if the pending checkpoint was published, else back to its newest durable."""
        path = js.pending_checkpoint
        step, ckpt = latest_checkpoint_step(self.job_dir(js.name) / "ckpt") if self.run_dir else (None, None)
        if ok is None:
            ok = bool(path) and ckpt is not None and os.path.normpath(ckpt) == os.path.normpath(path)
        if ok:
            self.emit("durable", job=js.name, ok=True, step=js.pending_step, checkpoint=path, drain_s=None,
                      reason="")
            return
        step, ckpt = (step, ckpt) if step is not None else (js.committed_step, js.checkpoint)
        self.emit("durable", job=js.name, ok=False, step=step, checkpoint=ckpt, drain_s=None,
                  reason=f"{reason}; its final checkpoint {path} was not written, so it resumes from "
                         f"{ckpt or 'the start'} (step {step})")
        if self.metrics is not None:
            self.metrics.settle(js.name, js.segments)
        self._replan_needed = True

    def _housekeeping(self) -> None:
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
        path = None
        if self.run_dir is not None:
            d = self.job_dir(job)
            logs = [str(p) for p in (d / "log.txt", d / "runner.txt") if p.exists()]
            try:
                d.mkdir(parents=True, exist_ok=True)
                path = d / "error.txt"
                tmp = d / ".error.txt.tmp"
                tmp.write_text(f"job {job} failed: {reason}\n" + "".join(f"attempt log: {p}\n" for p in logs))
                os.replace(tmp, path)
            except OSError:
                path = None
        self.emit("job_failed", job=job, reason=reason, log=None if path is None else str(path))

    def _warn(self, job: str, text: str) -> None:
        """A warning in the run's own output: its journal (status/report list it) and the console."""
        self.emit("warning", job=job, text=text)
        log.warning("job %s: %s", job, text)

    def _check_checkpoints(self, js: Any) -> None:
        """Report (once each) checkpoints in the job's directory that its runner will skip: another
        job's, another definition's, past the job's end, or damaged (saturn.training.checkpoint)."""
        if self.run_dir is None or js.info.spec is None:
            return
        d = self.job_dir(js.name) / "ckpt"
        if not d.is_dir():
            return
        try:
            from saturn.training.catalog import Owner, refused_checkpoints
        except ImportError:  # torch-less installs: the runners still check
            return
        for path, why in refused_checkpoints(str(d), Owner.of(js.info.spec, js.info.total_steps)):
            if path not in self._skipped_ckpts:
                self._skipped_ckpts.add(path)
                self._warn(js.name, f"skipping checkpoint {path}: {why}; the previous valid one is used")

    def _launch_ready(self) -> None:
        if self._shutdown is not None:
            return
        from saturn.executor import sharp_dispatch

        for a in policy.ready_to_launch(self.state.plan, self.state):
            if sharp_dispatch.launch(self, a):  # a SHARP group member: the group starts as one attempt
                continue
            js = self.state.jobs[a["job"]]
            self._check_checkpoints(js)
            prog = self.job_dir(js.name) / PROGRESS_FILE if self.run_dir is not None else None
            self.emit("launch", job=js.name, technique=a["technique"], knobs=a.get("knobs") or {},
                      node=a["node"], gpus=list(a["gpus"]), start_step=js.committed_step,
                      progress_offset=prog.stat().st_size if prog is not None and prog.exists() else 0)
            if self.measurer is not None:
                self.measurer.on_launch(js.name, a["technique"], a.get("knobs") or {}, len(a["gpus"]),
                                        js.committed_step)
            pid = self.backend.launch(js, a, js.committed_step, js.attempts)
            if pid is not None:
                assert js.current is not None  # the launch event above opened the segment
                js.current.pid = pid
                self.emit("spawned", job=js.name, pid=pid)

    def _launch_facts(self) -> None:
        """Refresh what launches cost on this backend (warm workers up or starting, drains behind)
        for the planner; only a one-node local backend reports them."""
        facts = getattr(self.backend, "launch_facts", None)
        if facts is None or len(self.nodes) != 1:
            return
        n = self.nodes[0]
        self.est.launch = policy.LaunchFacts(**facts(n.name, list(range(int(n.gpus)))))

    def _initial_plan(self) -> None:
        from saturn.planner import plan as solve

        self._launch_facts()
        jobs, table = policy.planner_jobs_and_profiles(self.state, self.est, self.backend.now())
        if not jobs:
            return
        p = self._solve(solve, jobs, table, None,
                        fixed=policy.worker_start_blocks(self.state, self.est) or None).to_dict()
        p["assignments"] = [a for a in p.get("assignments", []) if not policy.is_checkpoint(a)]
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

    def replan(self, reason: str = "interval", force: bool = False) -> Optional[policy.Decision]:
        """Re-solve for the remaining work and adopt the result if it pays (see policy)."""
        from saturn.planner import plan as solve

        self._replan_needed = False
        now = self.backend.now()
        self._next_replan = now + self.cfg.interval_s
        self._launch_facts()
        self._housekeeping()
        if self.state.done():
            return None
        est = self.est
        cur_choices = policy.choices_from_plan(self.state.plan, self.state)
        cur = None
        if not force and policy.covers(cur_choices, self.state, est):
            cur = policy.retime(self.state, est, now, self.node_gpus, cur_choices, "current")
        jobs, table = policy.planner_jobs_and_profiles(self.state, est, now)
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
                c = policy.retime(self.state, est, now, self.node_gpus, policy.choices_from_plan(new, self.state),
                                  "replan")
                if c is not None:
                    c.solver, c.lower_bound_s = dict(new.get("solver") or {}), float(new.get("lower_bound_s", 0.0))
                cands.append(c)
            around = self._plan_around_running(solve, now, new or warm)
            if around is not None:
                cands.append(around)
        if force and not cands and cur_choices and policy.covers(cur_choices, self.state, est):
            cands.append(policy.retime(self.state, est, now, self.node_gpus, cur_choices, "current"))
        if not jobs:  # only running jobs are left: nothing to decide
            return None
        dec = policy.choose_plan(cur, cands, min_gain_s=self.cfg.min_gain_s, min_gain_frac=self.cfg.min_gain_frac,
                                 score=policy.plan_score(self.cfg.objective, self.state))
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

    def _plan_around_running(self, solve, now: float, warm: Optional[dict]) -> Optional[policy.Retimed]:
        """The "no job moved" candidate: the planner plans the other jobs around the running ones
        (fixed on their GPUs until their estimated end), warm-started from the free re-plan."""
        jobs, table, fixed = policy.planner_inputs_around_running(self.state, self.est, now)
        if all(policy.is_checkpoint(a) for a in fixed):
            return None  # nothing runs: the same problem as the free re-plan
        try:
            p = self._solve(solve, jobs, table, warm, fixed=fixed, time_limit_s=self.cfg.time_limit_s / 2)
        except (SaturnError, InvalidPlanError) as exc:
            log.warning("re-plan around the running jobs failed: %s", exc)
            return None
        return policy.retimed_from_plan(p, "replan-keep-running")

    def _adopt(self, plan_dict: dict, reason: str, detail: str = "") -> None:
        version = self.state.plan_version + 1
        self.emit("plan", version=version, t0=self.backend.now(), plan=plan_dict, reason=reason, detail=detail)
        if self.run_dir is not None:
            d = self.run_dir / "plans"
            d.mkdir(parents=True, exist_ok=True)
            text = json.dumps(plan_dict, indent=1)
            (d / f"plan-v{version}.json").write_text(text)
            tmp = self.run_dir / ".plan.json.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.run_dir / "plan.json")


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


def _records(df: pd.DataFrame) -> list[dict]:
    cols = [c for c in ("job", "technique", "knobs", "gpus", "step_time_s", "startup_s", "checkpoint_s",
                        "feasible", "gpu_type", "status", "reason") if c in df.columns]
    out = []
    for r in df[cols].to_dict("records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return json.loads(json.dumps(out, default=str))


def _moves_pending(old: Optional[dict], new: dict, state) -> bool:
    """Whether `new` places a pending job on other GPUs than `old` (so launching follows it)."""
    before = {a["job"]: (a["node"], sorted(a["gpus"])) for a in (old or {}).get("assignments", [])}
    return any(state.jobs.get(a["job"]) is not None and state.jobs[a["job"]].status == PENDING
               and before.get(a["job"]) != (a["node"], sorted(a["gpus"])) for a in new.get("assignments", []))
