"""`SimulatedBackend`: a virtual clock; a job progresses at (profiled step time x its noise factor),
after its start-up; stops cost a checkpoint time; early stops, crashes and OOMs can be injected.
Used by tests, what-if planning and `scripts/bench_introspection.py`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from saturn.executor.backends.base import BackendEvent
from saturn.executor.state import JobState


@dataclass
class _SimJob:
    name: str
    launched: float
    start_step: int
    startup: float
    step_time: float
    target: int  # step at which it ends by itself (total, or an early stop)
    early: bool
    stop_at: Optional[float] = None  # stop requested: ends at stop_at + checkpoint
    crash_step: Optional[int] = None
    oom: bool = False
    last_ckpt: int = 0

    def step_at(self, t: float) -> int:
        if t < self.launched + self.startup:
            return self.start_step
        return min(self.target, self.start_step + int((t - self.launched - self.startup) / self.step_time + 1e-9))

    def natural_end(self) -> float:
        return self.launched + self.startup + (self.target - self.start_step) * self.step_time


class SimulatedBackend:
    """Jobs on a virtual clock.

    true_step_time: job -> {(technique, gpus): seconds per step} or a callable(job, technique,
        gpus, knobs) -> seconds; profile x noise in benchmarks.
    startup: callable(job, technique, gpus) -> seconds (default 0).
    stop_after: job -> step at which the job ends by itself (early stop, e.g. by HPO).
    crash_at: job -> step at which its first attempt crashes (a killed worker).
    oom: set of (job, technique, gpus) that fail with OOM shortly after start.
    checkpoint_s: seconds to checkpoint on a stop. checkpoint_every: periodic checkpoints (steps),
        which bound what a crash loses.
    """

    t: float  # the virtual clock (seconds); declared here for subclasses defined inside functions

    def __init__(self, step_time, *, startup=None, stop_after: Optional[dict] = None,
                 crash_at: Optional[dict] = None, oom: Optional[set] = None, checkpoint_s: float = 5.0,
                 checkpoint_every: int = 0, progress: bool = True, start_time: float = 0.0):
        self._step_time = step_time
        self._startup = startup or (lambda job, tech, g: 0.0)
        self.stop_after = dict(stop_after or {})
        self.crash_at = dict(crash_at or {})
        self.oom = set(oom or ())
        self.checkpoint_s = checkpoint_s
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.t = start_time
        self.jobs: dict[str, _SimJob] = {}
        self._reported: dict[str, int] = {}
        self.launches: list[tuple[float, str, str, int, int]] = []  # (t, job, technique, gpus, start)

    def now(self) -> float:
        return self.t

    def _true_step(self, job: str, tech: str, gpus: int, knobs: dict) -> float:
        st = self._step_time
        if callable(st):
            return float(st(job, tech, gpus, knobs))
        return float(st[job][(tech, gpus)])

    def launch(self, job: JobState, assignment: dict, start_step: int, attempt: int) -> Optional[int]:
        tech, g = assignment["technique"], len(assignment["gpus"])
        target = min(job.info.total_steps, self.stop_after.get(job.name, job.info.total_steps))
        crash = self.crash_at.pop(job.name, None)
        sj = _SimJob(job.name, self.t, start_step, float(self._startup(job.name, tech, g)),
                     self._true_step(job.name, tech, g, assignment.get("knobs") or {}), max(target, start_step),
                     target < job.info.total_steps,
                     crash_step=crash if crash is not None and crash > start_step else None,
                     oom=(job.name, tech, g) in self.oom, last_ckpt=start_step)
        self.jobs[job.name] = sj
        self._reported[job.name] = start_step
        self.launches.append((self.t, job.name, tech, g, start_step))
        return None

    def stop(self, job: str) -> None:
        sj = self.jobs.get(job)
        if sj is not None and sj.stop_at is None:
            sj.stop_at = self.t

    def _end(self, sj: _SimJob) -> tuple[float, str, int]:
        """(time, status, step) at which this attempt ends if nothing else happens."""
        if sj.oom:
            return sj.launched + sj.startup, "oom", sj.start_step
        ends = [(sj.natural_end(), "completed", sj.target)]
        if sj.crash_step is not None and sj.crash_step < sj.target:
            tc = sj.launched + sj.startup + (sj.crash_step - sj.start_step) * sj.step_time
            ends.append((tc, "failed", sj.crash_step))
        if sj.stop_at is not None:
            ends.append((sj.stop_at + self.checkpoint_s, "interrupted", sj.step_at(sj.stop_at)))
        return min(ends, key=lambda e: e[0])

    def next_event_time(self) -> float:
        return min((self._end(sj)[0] for sj in self.jobs.values()), default=math.inf)

    def wait(self, timeout_s: float) -> None:
        self.t = max(self.t, min(self.t + max(0.0, timeout_s), self.next_event_time()))

    def poll(self) -> list[BackendEvent]:
        out = []
        for name, sj in list(self.jobs.items()):
            end_t, status, step = self._end(sj)
            if end_t <= self.t + 1e-9:
                ckpt: Optional[str] = f"sim://{name}/step-{step}"
                if status == "failed":  # a crash keeps only the last periodic checkpoint
                    every = self.checkpoint_every
                    step = sj.start_step + ((step - sj.start_step) // every * every if every else 0)
                    ckpt = f"sim://{name}/step-{step}" if step > sj.start_step else None
                if status == "oom":
                    ckpt = None
                out.append(BackendEvent("finished", name, end_t, step=step, status=status, checkpoint=ckpt,
                                        reason=f"simulated {status}" if status in ("failed", "oom") else "",
                                        loss=_sim_loss(step) if status in ("completed", "interrupted") else None))
                del self.jobs[name]
                continue
            if self.progress:
                s = sj.step_at(min(self.t, sj.stop_at) if sj.stop_at is not None else self.t)
                if sj.crash_step is not None:
                    s = min(s, sj.crash_step)
                if s > self._reported.get(name, 0):
                    self._reported[name] = s
                    out.append(BackendEvent("progress", name, self.t, step=s, loss=_sim_loss(s)))
        return sorted(out, key=lambda e: e.t)

    def shutdown(self) -> None:
        pass


def _sim_loss(step: int) -> float:
    return 10.0 / math.sqrt(1.0 + step)
