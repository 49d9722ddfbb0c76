"""The state one spilling step carries between its tasks.

Why a module of its own: SHARP (`saturn.sharp`) holds many models' steps in flight at once and
moves them between workers task by task, so the step's state is a plain record apart from the
engine that advances it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepState:
    """Everything one step carries between its tasks (boundary activations, the gradient flowing
    back, RNG states, the loss) and which task is next."""

    targets: Any
    boundary: list[Any]
    on_host: list[Any]
    rng: list[Any]
    compute_only: bool = False
    next: int = 0
    grad_out: Any = None
    loss: Any = None
    tasks: list[tuple[int, str]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.next >= len(self.tasks)
