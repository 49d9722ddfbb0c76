"""Sharded-LRTF: which model's next shard task a free worker runs.

Why a module of its own: this is the whole scheduling policy of SHARP (Hydra's "shard-alternated
training"), and it is pure bookkeeping, testable by hand without torch. A model's training is a
chain of shard tasks (forward/backward of one shard; `saturn.techniques.spilling.engine`), each
depending on the one before, so at most one worker runs a given model at a time. Whenever a
worker is free it takes the next task of the *idle* model with the Longest Remaining Time First:

    remaining(m) = (tasks left in m's current step + tasks of m's remaining steps) * t(m)

where t(m) is m's per-task time: a prior from its profile (spilling step time / tasks per step)
refined by an exponential moving average of measured task durations. Longest-first keeps the
long jobs moving so that all models tend to finish together (the makespan argument of LRTF);
ties go to the model listed first, so runs are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

EMA = 0.3  # weight of a new measurement in the per-task time estimate


@dataclass
class Progress:
    """One model's position: `steps_left` counts the current (unfinished) step."""

    name: str
    steps_left: int
    tasks_per_step: int
    task_time_s: float = 1.0
    tasks_done_in_step: int = 0
    busy: bool = False

    @property
    def finished(self) -> bool:
        return self.steps_left <= 0

    @property
    def tasks_left(self) -> int:
        return max(0, self.steps_left * self.tasks_per_step - self.tasks_done_in_step)

    @property
    def remaining_s(self) -> float:
        return self.tasks_left * self.task_time_s


class ShardedLRTF:
    """The scheduler state for one SHARP group (not thread-safe: the group holds its lock)."""

    def __init__(self, models: Iterable[Progress]):
        self.models = {m.name: m for m in models}
        self.order = list(self.models)

    def pick(self, exclude: Iterable[str] = ()) -> Optional[str]:
        """The idle, unfinished model with the longest remaining time (None if there is none)."""
        skip = set(exclude)
        best: Optional[Progress] = None
        for name in self.order:
            m = self.models[name]
            if m.busy or m.finished or name in skip:
                continue
            if best is None or m.remaining_s > best.remaining_s:
                best = m
        return None if best is None else best.name

    def start(self, name: str) -> None:
        m = self.models[name]
        if m.busy or m.finished:
            raise RuntimeError(f"model {name!r} is {'busy' if m.busy else 'finished'}")
        m.busy = True

    def complete(self, name: str, seconds: Optional[float] = None, step_done: bool = False
                 ) -> None:
        """A task of `name` finished (and with it the step, if `step_done`)."""
        m = self.models[name]
        m.busy = False
        if seconds is not None:
            m.task_time_s = (1 - EMA) * m.task_time_s + EMA * seconds
        if step_done:
            m.steps_left -= 1
            m.tasks_done_in_step = 0
        else:
            m.tasks_done_in_step += 1

    def abort(self, name: str) -> None:
        """The task did not complete (its worker died): the model is free, its task to be re-run."""
        self.models[name].busy = False

    def remove(self, name: str) -> None:
        """The model leaves the group (finished early, or continues with another technique)."""
        self.models[name].steps_left = 0
        self.models[name].busy = False

    @property
    def all_finished(self) -> bool:
        return all(m.finished for m in self.models.values())
