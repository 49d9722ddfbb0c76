"""Handles on submitted jobs: `JobReport` (a job's state as last seen) and `JobFuture`.

The orchestrator's loop thread completes futures (`_set`) and publishes reports; clients read them
from any thread. `OrchestratorError` is what the orchestrator raises for a request it cannot take.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

from saturn.errors import SaturnError

log = logging.getLogger("saturn.api")


class OrchestratorError(SaturnError):
    """The orchestrator cannot take this request (closed, unknown job, no profiles...)."""



@dataclass(frozen=True)
class JobReport:
    """A job's state as the orchestrator last saw it (running metrics, or its final result).

    status: pending | running | stopping | completed | failed | cancelled. step: steps done
    (live while running). loss: the latest loss (the final loss once completed). metrics:
    [(step, loss)] intermediate values, step = steps done when the loss was measured."""

    name: str
    status: str
    step: int = 0
    total_steps: int = 0
    loss: Optional[float] = None
    metrics: tuple = ()
    technique: Optional[str] = None
    gpus: tuple = ()
    node: Optional[str] = None
    attempts: int = 0
    checkpoint: Optional[str] = None
    metrics_path: Optional[str] = None
    reason: str = ""
    early_stopped: bool = False
    profile: str = "measured"  # or "estimate: ..." while its signature is profiled in the background

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    @property
    def final_loss(self) -> Optional[float]:
        return self.loss

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["metrics"], d["gpus"] = [list(m) for m in self.metrics], list(self.gpus)
        return d


class JobFuture:
    """Handle of a submitted job: `result(timeout)`, `done()`, `metrics()`, `report()`, `cancel()`.

    `result()` returns the final `JobReport` whatever the status (check `.status`); it raises
    TimeoutError only if the job is not done within `timeout` seconds."""

    def __init__(self, orchestrator: Any, name: str):  # the Orchestrator that owns the job
        self._orch = orchestrator
        self.name = name
        self._done = threading.Event()
        self._result: Optional[JobReport] = None
        self._callbacks: list[Callable[["JobFuture"], None]] = []
        self._lock = threading.Lock()
        self._accepted = False  # the executor has the job (set by the orchestrator's loop)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: Optional[float] = None) -> JobReport:
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.name!r} not done after {timeout} s")
        assert self._result is not None
        return self._result

    def report(self) -> JobReport:
        return self._result if self._result is not None else self._orch.report(self.name)

    def metrics(self) -> list[tuple[int, float]]:
        """Intermediate values so far: [(step, loss)]."""
        return list(self.report().metrics)

    def cancel(self) -> bool:
        """Ask Saturn to stop the job (it checkpoints and its GPUs are re-planned). False if done."""
        if self.done():
            return False
        self._orch.cancel(self.name)
        return True

    def add_done_callback(self, fn: Callable[["JobFuture"], None]) -> None:
        """Call fn(future) when the job is done (on the orchestrator thread: keep it short)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _set(self, rep: JobReport) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._result = rep
            self._done.set()
            cbs, self._callbacks = self._callbacks, []
        for fn in cbs:
            try:
                fn(self)
            except Exception:  # noqa: BLE001 - a callback must not kill the loop
                log.exception("done callback of job %s failed", self.name)

    def __repr__(self) -> str:
        state = self._result.status if self._result is not None else "running"
        return f"<JobFuture {self.name} {state}>"

