"""The interface every parallelism technique implements.

The profiler, planner and executor see techniques only through this interface, so a new technique
(built in or a user's, by import path) is one class in one module. Everything a technique returns is
a plain dataclass: the profiler stores it in a table, the executor journals it.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Optional, Sequence, Union

from saturn.runtime.attempt import RunResult

Devices = Union[int, Sequence[int]]  # a count (feasible/candidates) or concrete device ids


def device_ids(gpus: Devices) -> list[int]:
    """`4` means devices 0..3; a list is taken as the concrete ids."""
    return list(range(gpus)) if isinstance(gpus, int) else [int(g) for g in gpus]


@dataclass
class Feasibility:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass
class TrialResult:
    """Outcome of a short trial. OOM and failures are outcomes, never exceptions."""

    status: str  # "ok" | "oom" (device) | "host_oom" (killed for host memory) | "failed" | "timeout"
    step_time_s: Optional[float] = None  # median of the timed steps (warm-up excluded)
    peak_mem_gb: Optional[float] = None  # max over workers
    startup_s: Optional[float] = None  # process start to first step done
    reason: str = ""
    step_times: list[float] = field(default_factory=list)
    checkpoint_s: Optional[float] = None  # one full checkpoint save, measured (trials)
    checkpoint_stage_s: Optional[float] = None  # its blocking part as a background save
    worker_start_s: Optional[float] = None  # the part of startup_s spent starting a warm worker
    checkpoint_gb: Optional[float] = None  # host staging a background save of this job needs
    host_peak_gb: Optional[float] = None  # the workers' process trees' resident memory, sampled peak
    host_limit_gb: Optional[float] = None  # what the node allowed (host_oom: where it was killed)

    @property
    def feasible(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Technique(abc.ABC):
    """A parallelism technique: a template with knobs, a static feasibility check, and runners.

    Subclasses set `name`, `knob_type` (a `saturn.techniques.knobs.knob_dataclass`: each knob's
    type, default, range and help; `knobs`, knob -> help, is derived from it at `@register`) and
    `requires` (one line for `saturn techniques`), and register themselves with `@register`.
    """

    name: ClassVar[str]
    knob_type: ClassVar[Optional[type]] = None
    knobs: ClassVar[dict[str, str]] = {}
    requires: ClassVar[str] = ""

    @abc.abstractmethod
    def feasible(self, job: Any, gpus: int) -> Feasibility:
        """Cheap static check (no processes, no GPU) with a reason when not feasible."""

    @abc.abstractmethod
    def candidates(self, job: Any, gpus: int) -> list[dict[str, Any]]:
        """The few knob settings worth trying, best guess first."""

    def knob_conflicts(self, job: Any, knobs: dict[str, Any]) -> str:
        """Why the job's own settings (its precision policy, its optimizer) forbid this knob
        setting; '' = allowed. Checked when a job pins knobs, and on candidates after pinning."""
        return ""

    @abc.abstractmethod
    def trial(self, job: Any, gpus: Devices, knobs: dict[str, Any], steps: int,
              timeout_s: float = 600.0, **kwargs: Any) -> TrialResult:
        """Run `steps` steps (plus warm-up) and measure; never raises for OOM or crashes.
        Optional kwargs (see saturn.techniques.common): device_type, log_path, warmup."""

    @abc.abstractmethod
    def run(self, job: Any, gpus: Devices, knobs: dict[str, Any], start_step: int,
            num_steps: int, checkpoint_dir: str, **kwargs: Any) -> RunResult:
        """Train from `start_step` (resuming from `checkpoint_dir` if it holds a checkpoint) and
        save a technique-neutral checkpoint at the end and on SIGTERM. Optional kwargs (see
        saturn.techniques.common): device_type, log_path, timeout_s, stop_event,
        checkpoint_every, grace_s."""
