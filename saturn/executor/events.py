"""How the executor takes what its backend reports: progress, checkpoints, ends, drains, and the
in-run measurements they carry.

Why a module of its own: every report changes the run state, and the rules for trusting one (a
step outside the job's range, a bogus end, a failed drain) decide what the journal and the
metrics files say; they are read here in one place. `EventHandling` is a part of
`saturn.executor.loop.Executor` (its attributes are the executor's).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional

from saturn.errors import SaturnError
from saturn.executor.backends.base import BackendEvent
from saturn.executor.backends.process import latest_checkpoint_step
from saturn.executor.config import ExecutorConfig
from saturn.executor.estimates import Estimator, profile_records
from saturn.executor.journal import Journal, apply_event
from saturn.executor.state import CANCELLED, FAILED, FINISHING, PENDING, RunState, option_key

log = logging.getLogger(__name__)


class EventHandling:
    """The executor's handling of backend events (see the module docstring)."""

    cfg: ExecutorConfig
    state: RunState
    journal: Journal
    est: Estimator
    metrics: Any
    measurer: Any
    run_dir: Any
    replan_needed: bool
    emit: Callable[..., None]
    job_dir: Callable[[str], Any]
    fail_job: Callable[[str, str], None]
    _warn: Callable[[str, str], None]
    _plan_covers: Callable[[], bool]

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
                    self.replan_needed = True
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
            self.replan_needed = True
        elif ev.status == "failed" and js.status == PENDING:
            if js.failures > self.cfg.max_retries:
                times = f"{js.failures} time" + ("s" if js.failures != 1 else "")
                self.fail_job(ev.job, f"failed {times}; last: {ev.reason[-2000:]}")
                self.replan_needed = True
            else:  # a retry re-plans (#16): the crashed job's GPUs are free for any job meanwhile
                self.replan_needed = True
        elif ev.status == "completed" or js.status in (CANCELLED, FAILED):
            if self.cfg.introspect and self.cfg.replan_on_events:
                self.replan_needed = True
            elif not self._plan_covers():
                self.replan_needed = True

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
            self.emit("profiles", rows=profile_records(m.rows))
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
            self.replan_needed = True

    def settle_drain(self, js: Any, ok: Optional[bool], reason: str) -> None:
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
        self.replan_needed = True
