"""What every backend offers the executor: `Backend` launches, polls and stops job attempts, and
reports what happened as `BackendEvent`s (the same for simulated and real runs, so the executor
loop is identical for all of them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

from saturn.executor.state import JobState
from saturn.runtime.attempt import RunResult


@dataclass
class BackendEvent:
    """kind: "progress" (step, loss), "checkpoint" (step, checkpoint, loss), "finished"
    (status completed|interrupted|failed|oom|host_oom, step, checkpoint, reason, losses; durable False:
    the checkpoint is still being written, a "durable" event follows) or "durable" (status
    durable|lost; step/checkpoint: the one to resume from when lost; drain_s)."""

    kind: str
    job: str
    t: float
    step: int = 0
    loss: Optional[float] = None
    status: Optional[str] = None
    checkpoint: Optional[str] = None
    reason: str = ""
    losses: list = field(default_factory=list)
    step_time_s: Optional[float] = None  # progress: the step's own time (metrics line), when reported
    durable: bool = True
    phases: dict = field(default_factory=dict)  # the attempt's measured phases (training.train)
    drain_s: Optional[float] = None
    error_type: str = ""  # finished: the typed cause (saturn.runtime.causes), "" when none
    host_peak_gb: Optional[float] = None  # finished: the workers' sampled host memory peak
    host_limit_gb: Optional[float] = None  # finished: the node's host memory limit

    @classmethod
    def finished(cls, job: str, t: float, res: RunResult) -> "BackendEvent":
        """The "finished" event of an attempt's result (the one conversion, for every backend)."""
        losses = res.losses or []
        return cls("finished", job, t, step=int(res.step), status=res.status, checkpoint=res.checkpoint,
                   reason=res.reason, loss=float(losses[-1][1]) if losses else None, losses=losses,
                   durable=bool(res.durable) or not res.checkpoint, phases=dict(res.phases),
                   error_type=res.error_type, host_peak_gb=res.host_peak_gb, host_limit_gb=res.host_limit_gb)


def with_log_context(reason: str, tail: str) -> str:
    """A failure's reason with the attempt log's last lines appended, labelled as context: the
    cause is the typed one before it (saturn.runtime.causes), never read from the log."""
    tail = tail.strip()
    return f"{reason}\nlast lines of the attempt log (context):\n{tail}".strip() if tail else reason


class Backend(Protocol):
    def now(self) -> float: ...

    def launch(self, job: JobState, assignment: dict, start_step: int, attempt: int) -> Optional[int]:
        """Start an attempt of `job` at `start_step`; returns a process id when there is one."""

    def poll(self) -> list[BackendEvent]: ...

    def stop(self, job: str) -> None:
        """Ask the attempt to checkpoint and exit (answered later by a "finished" event)."""

    def wait(self, timeout_s: float) -> None:
        """Block (or advance the virtual clock) until something may have happened."""

    def shutdown(self) -> None: ...
