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
    (status completed|interrupted|failed|oom, step, checkpoint, reason, losses; durable False:
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

    @classmethod
    def finished(cls, job: str, t: float, res: RunResult) -> "BackendEvent":
        """The "finished" event of an attempt's result (the one conversion, for every backend)."""
        losses = res.losses or []
        return cls("finished", job, t, step=int(res.step), status=res.status, checkpoint=res.checkpoint,
                   reason=res.reason, loss=float(losses[-1][1]) if losses else None, losses=losses,
                   durable=bool(res.durable) or not res.checkpoint, phases=dict(res.phases))


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
