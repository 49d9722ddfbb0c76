"""The executor's state: plain dataclasses, no I/O.

Every field here is rebuilt from the journal on `--resume` (see `journal.replay`), so nothing in the
state may depend on a live process. Times are on the executor's run clock (`Backend.now()`: seconds
since the run started; virtual in simulation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

# Job lifecycle. pending -> running -> (stopping ->) pending | completed | failed | cancelled;
# running -> finishing -> completed (its final checkpoint written) | pending (the write was lost:
# it resumes from its last durable checkpoint). A finishing job holds no GPU.
PENDING, RUNNING, STOPPING, FINISHING = "pending", "running", "stopping", "finishing"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
TERMINAL = (COMPLETED, FAILED, CANCELLED)
ACTIVE = (RUNNING, STOPPING)
OFF_GPU = TERMINAL + (FINISHING,)  # done with its GPUs (plan successors may start)


@dataclass
class JobInfo:
    """What the executor must know about a job. `spec` is the full `Job.model_dump()` (needed to
    run it for real; None in pure simulations)."""

    name: str
    total_steps: int
    techniques: Optional[list[str]] = None
    gpus: Optional[list[int]] = None
    spec: Optional[dict] = None

    @classmethod
    def from_job(cls, job: Any) -> "JobInfo":
        if isinstance(job, JobInfo):
            return job
        spec = job.model_dump(mode="json") if hasattr(job, "model_dump") else None
        return cls(name=str(job.name), total_steps=int(job.total_steps),
                   techniques=list(job.techniques) if getattr(job, "techniques", None) else None,
                   gpus=list(job.gpus) if getattr(job, "gpus", None) else None, spec=spec)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Segment:
    """One launch of a job: [start_step, end_step) trained with one technique on some GPUs."""

    attempt: int
    technique: str
    knobs: dict
    node: str
    gpus: list[int]
    start_step: int
    launched_at: float
    end_step: Optional[int] = None  # step of the checkpoint it ended at (None while running)
    ended_at: Optional[float] = None
    status: Optional[str] = None  # RunResult status, or "lost" (executor crashed meanwhile)
    first_progress: Optional[tuple[float, int]] = None  # (time, step) at the first progress report
    last_progress: Optional[tuple[float, int]] = None
    stop_requested_at: Optional[float] = None
    startup_s: Optional[float] = None  # measured launch -> first step
    pid: Optional[int] = None  # the job runner's process id (real runs)
    progress_offset: Optional[int] = None  # size of the job's progress.jsonl at launch (metrics reconcile)
    phases: dict = field(default_factory=dict)  # measured by the attempt: launch_s, steps_s, *_block_s
    durable_at: Optional[float] = None  # its final checkpoint was published (drained behind)
    drain_s: Optional[float] = None  # how long that background write took


@dataclass
class JobState:
    info: JobInfo
    status: str = PENDING
    committed_step: int = 0  # step of the newest checkpoint: what a relaunch resumes from
    progress_step: int = 0  # live progress (>= committed_step while running)
    checkpoint: Optional[str] = None
    loss: Optional[float] = None
    failures: int = 0  # crashes, minus one per checkpoint committed past the committed step (retry rule)
    reason: str = ""
    log: Optional[str] = None  # a failed job: the file holding its cause (RUN/jobs/<job>/error.txt)
    segments: list[Segment] = field(default_factory=list)
    # step-time observations: (technique, gpus) -> (seconds, steps) of measured stepping
    observed: dict[str, tuple[float, int]] = field(default_factory=dict)
    startup_obs: list[float] = field(default_factory=list)  # launch -> first step, measured
    checkpoint_obs: list[float] = field(default_factory=list)  # stop request -> exit, measured
    infeasible: set[str] = field(default_factory=set)  # "technique|gpus" ruled out at run time
    infeasible_why: dict[str, str] = field(default_factory=dict)  # ... and the typed cause of each
    stop_reason: str = ""  # why a stop was requested: "switch" | "cancel" | "shutdown"
    early_stopped: bool = False  # completed before total_steps (e.g. stopped by an HPO algorithm)
    pending_checkpoint: Optional[str] = None  # finishing: the final checkpoint being written
    pending_step: int = 0  # ... and its step

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def remaining_steps(self) -> int:
        return max(0, self.info.total_steps - self.committed_step)

    @property
    def live_remaining_steps(self) -> int:
        return max(0, self.info.total_steps - max(self.progress_step, self.committed_step))

    @property
    def current(self) -> Optional[Segment]:
        return self.segments[-1] if self.segments and self.segments[-1].ended_at is None else None

    @property
    def attempts(self) -> int:
        return len(self.segments)

    def observe(self, technique: str, gpus: int, seconds: float, steps: int) -> None:
        if steps <= 0 or seconds <= 0:
            return
        key = option_key(technique, gpus)
        s, n = self.observed.get(key, (0.0, 0))
        self.observed[key] = (s + seconds, n + steps)

    def observed_step_time(self, technique: str, gpus: int) -> Optional[float]:
        s, n = self.observed.get(option_key(technique, gpus), (0.0, 0))
        return s / n if n > 0 else None

    def live_step_time(self) -> Optional[float]:
        """Step time of the running segment from its progress reports (first -> last)."""
        seg = self.current
        if seg is None or seg.first_progress is None or seg.last_progress is None:
            return None
        (t0, s0), (t1, s1) = seg.first_progress, seg.last_progress
        return (t1 - t0) / (s1 - s0) if s1 > s0 and t1 > t0 else None


def option_key(technique: str, gpus: int) -> str:
    return f"{technique}|{int(gpus)}"


@dataclass
class JobResult:
    """What a finished job left behind (the HPO integration reads these)."""

    name: str
    status: str
    steps: int
    final_loss: Optional[float]
    checkpoint: Optional[str]
    metrics_path: Optional[str]
    reason: str = ""


@dataclass
class RunState:
    jobs: dict[str, JobState] = field(default_factory=dict)
    plan: Optional[dict] = None  # current plan (Plan.to_dict()), times relative to plan_t0
    plan_t0: float = 0.0
    plan_version: int = 0
    replans: int = 0
    switches: int = 0
    started_wall: float = 0.0
    clock_offset: float = 0.0  # run-clock time already spent before this process (resume)

    def finishing(self) -> list[JobState]:
        return [j for j in self.jobs.values() if j.status == FINISHING]

    def busy_gpus(self) -> dict[tuple[str, int], str]:
        """(node, gpu) -> job for every running/stopping job."""
        out = {}
        for js in self.jobs.values():
            seg = js.current
            if js.status in ACTIVE and seg is not None:
                for g in seg.gpus:
                    out[(seg.node, g)] = js.name
        return out

    def unfinished(self) -> list[JobState]:
        return [j for j in self.jobs.values() if j.status not in TERMINAL]

    def done(self) -> bool:
        return all(j.status in TERMINAL for j in self.jobs.values())


