"""The orchestrator's executor thread: applies queued commands between executor steps, publishes
job reports, and taps the backend for every intermediate loss.

`ExecutorThread` is a mixin of `Orchestrator` (saturn.api.orchestrator), which owns the state it
uses (`_ex`, `_cmds`, `_held`, `_futures`, `_reports`, `_histories`, locks); only the loop thread
runs these methods, except `_on_loss`, which the backend tap calls from inside `poll`.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from dataclasses import replace
from typing import Any, Callable, Optional

from saturn.api.futures import JobReport

log = logging.getLogger("saturn.api")


class Tap:
    """Wraps a backend: records every progress/finished loss per job (the executor's state only
    keeps the latest), optionally rewriting simulated losses."""

    def __init__(self, inner: Any, on_loss: Callable[[str, int, float], None],
                 sim_loss: Optional[Callable[[str, int], float]] = None):
        self._inner = inner
        self._on_loss = on_loss
        self._sim_loss = sim_loss

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def poll(self) -> list:
        evs = self._inner.poll()
        for ev in evs:
            if self._sim_loss is not None and ev.loss is not None:
                ev.loss = float(self._sim_loss(ev.job, int(ev.step)))
            if ev.kind in ("progress", "checkpoint") and ev.loss is not None:
                self._on_loss(ev.job, int(ev.step), float(ev.loss))
            elif ev.kind == "finished":
                for s, loss in ev.losses or []:  # [(step index, loss)]: steps done = index + 1
                    self._on_loss(ev.job, int(s) + 1, float(loss))
                if not ev.losses and ev.loss is not None and ev.step and ev.step > 0:
                    self._on_loss(ev.job, int(ev.step), float(ev.loss))
        return evs


def paced_simulated_backend(step_time: Callable, startup: Callable, speed: float, **kw: Any) -> Any:
    """A SimulatedBackend whose virtual clock follows the wall clock x `speed`, so that a client
    polling in real time (an HPO loop) sees jobs progress instead of finishing at once."""
    from saturn.executor.backends.simulated import SimulatedBackend

    class PacedSimulatedBackend(SimulatedBackend):
        def __init__(self) -> None:
            super().__init__(step_time, startup=startup, **kw)
            self._w0 = time.monotonic()

        def wait(self, timeout_s: float) -> None:
            time.sleep(max(0.0, min(timeout_s, 0.05)))
            target = (time.monotonic() - self._w0) * speed
            self.t = max(self.t, min(target, self.next_event_time()))

    return PacedSimulatedBackend()



class ExecutorThread:
    """The loop run by the orchestrator's background thread (see the module docstring)."""

    _ex: Any
    _cmds: "queue.Queue[tuple]"
    _held: list
    _futures: dict
    _reports: dict
    _histories: dict
    _lock: Any
    _flock: Any
    _error: Optional[BaseException]
    _last_submit: float
    _wait_s: float
    _early_measured: dict
    _profile_source: dict
    _jobs: dict
    _sig_rows: dict
    _measured_shapes: dict
    _remember: Callable[..., Any]
    backend: Any
    batch_window_s: float
    run_dir: Any

    def _on_loss(self, job: str, step: int, loss: float) -> None:
        h = self._histories.get(job)
        if h is not None and math.isfinite(loss):
            h[step] = loss

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        batch = [x for cmd in held for x in cmd[1]]
        if batch:
            self._apply(("submit", batch))

    def _apply(self, cmd: tuple) -> bool:
        """Apply one queued command to the executor; False on "close"."""
        from saturn.executor.state import TERMINAL

        kind = cmd[0]
        if kind == "close":
            return False
        if kind == "submit":
            for job, rows, fut in cmd[1]:
                try:
                    self._ex.submit(job, profiles=rows)
                    fut._accepted = True
                    early = self._early_measured.pop(job.name, None)
                    if early is not None:  # measured before this submit reached the executor
                        self._apply_measured([job.name], *early)
                except Exception as exc:  # noqa: BLE001 - the job fails, the loop goes on
                    fut._set(JobReport(job.name, "failed", total_steps=int(job.total_steps), reason=str(exc)))
        elif kind == "profiles":  # measurements replace a background-profiled job's estimate
            self._apply_measured(cmd[1], cmd[2], cmd[3])
        elif kind == "cancel":
            name, reason = cmd[1], cmd[2]
            js = self._ex.state.jobs.get(name)
            if js is not None and js.status not in TERMINAL:
                self._ex.cancel(name, reason=reason)
        return True

    def _apply_measured(self, names: list, rows: Any, reason: str) -> None:
        from saturn.api.background_profiling import shape_key
        from saturn.executor.estimates import profile_records
        from saturn.executor.state import PENDING, TERMINAL

        for name in names:
            js = self._ex.state.jobs.get(name)
            if js is None and name in self._futures and not self._futures[name].done():
                self._early_measured[name] = (rows, reason)  # its submit command is still queued
                continue
            if js is None or js.status in TERMINAL:
                continue
            if rows is None:  # pending: it fails with the reason; running on the estimate: it goes on
                if js.status == PENDING:
                    self._ex.fail_job(name, f"profiling failed: {reason}")
                label = self._profile_source.get(name, "estimate")
                self._profile_source[name] = f"{label} (profiling failed: {reason})"
                continue
            mine = rows.drop(columns=["job"], errors="ignore").copy()
            job = self._jobs.get(name)
            if job is not None:
                self._sig_rows[str(job.signature)] = mine.copy()
                self._measured_shapes[shape_key(job)] = (int(job.batch_size), mine.copy())
            mine.insert(0, "job", name)
            mine = self._remember(job, mine) if job is not None else mine
            self._ex.est.rows[name] = []  # the estimate goes; infeasible options stay out
            self._ex.est.add_profiles(mine)
            self._ex.emit("profiles", rows=profile_records(mine))
            self._profile_source[name] = "measured"
            self._ex.replan_needed = True

    def _loop(self) -> None:
        from saturn.executor import ExecutorError
        from saturn.executor.state import ACTIVE

        open_ = True
        try:
            while True:
                with self._lock:
                    while True:
                        try:
                            cmd = self._cmds.get_nowait()
                        except queue.Empty:
                            break
                        if cmd[0] == "submit" and self.batch_window_s > 0:
                            self._held.append(cmd)
                            continue
                        held = {j.name for h in self._held for j, _, _ in h[1]}
                        if held and (cmd[0] != "cancel" or cmd[1] in held):  # keep submit-then-cancel order
                            self._flush_held()
                        open_ = self._apply(cmd) and open_
                    if self._held and (time.monotonic() - self._last_submit >= self.batch_window_s or not open_):
                        self._flush_held()
                    try:
                        self._ex.step()
                    except ExecutorError as exc:  # nothing can be launched: fail what cannot run
                        for js in self._ex.state.unfinished():
                            if js.status not in ACTIVE:
                                self._ex.fail_job(js.name, str(exc))
                    self._publish()
                    with self._flock:
                        busy = any(not f.done() for f in self._futures.values())
                if not open_ and not busy and self._cmds.empty() and not self._held:
                    break
                self.backend.wait(self._wait_s)
        except BaseException as exc:  # noqa: BLE001 - never die silently: fail every future
            self._error = exc
            log.exception("saturn orchestrator loop died")
            for n, f in list(self._futures.items()):
                f._set(replace(self._reports.get(n) or JobReport(n, "failed"), status="failed",
                               reason=f"orchestrator loop died: {exc!r}"))
        finally:
            try:
                self._ex.emit("run_finished", reason="")
            except Exception:  # noqa: BLE001
                pass
            try:
                self.backend.shutdown()
            except Exception:  # noqa: BLE001
                log.exception("backend shutdown failed")
            self._ex.close()  # the run directory's lock (saturn/executor/run_lock.py)

    def _publish(self) -> None:
        """Snapshot every job's state into a JobReport; complete the futures of finished jobs."""
        from saturn.executor.state import TERMINAL

        for name, js in self._ex.state.jobs.items():
            fut = self._futures.get(name)
            if fut is None or fut.done() or not fut._accepted:  # (a re-used name: wait for the new job)
                continue
            seg = js.segments[-1] if js.segments else None
            hist = self._histories.get(name, {})
            old = self._reports.get(name)
            metrics = old.metrics if old is not None and len(old.metrics) == len(hist) else tuple(sorted(hist.items()))
            rep = JobReport(
                name=name, status=js.status, step=max(js.progress_step, js.committed_step),
                total_steps=js.info.total_steps, loss=js.loss, metrics=metrics,
                technique=seg.technique if seg else None, gpus=tuple(seg.gpus) if seg else (),
                node=seg.node if seg else None, attempts=js.attempts, checkpoint=js.checkpoint,
                metrics_path=str(self._ex.job_dir(name) / "metrics.jsonl") if self.run_dir else None,
                reason=js.reason, early_stopped=js.early_stopped,
                profile=self._profile_source.get(name, "measured"))
            with self._flock:
                self._reports[name] = rep
            if js.status in TERMINAL and not fut.done():
                fut._set(rep)

