"""What an executor is told (`ExecutorConfig`) and how it refuses (`ExecutorError`).

Why a module of its own: the executor's parts (the loop, resume, re-planning) all read the
config and raise the error, so both live below them; nothing here imports another executor part.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from saturn.errors import SaturnError
from saturn.executor import defaults


class ExecutorError(SaturnError):
    """The run cannot continue (bad run directory, nothing can be scheduled...)."""


@dataclass
class ExecutorConfig:
    interval_s: float = defaults.INTERVAL_S  # re-plan every interval (run clock)
    introspect: bool = True  # False: execute the first plan as is (the static baseline)
    replan_on_events: bool = True  # also re-plan when a job finishes, fails, or is added/cancelled
    max_retries: int = defaults.MAX_RETRIES  # relaunches of a crashed job from its checkpoint before it is failed
    time_limit_s: float = defaults.TIME_LIMIT_S  # planner limit per re-plan (+ half of it around running jobs)
    mip_gap: float = 0.02
    min_gain_s: float = 0.0  # adopt a new plan only if it saves more than this ...
    min_gain_frac: float = 0.02  # ... and more than this fraction of the remaining makespan
    objective: str = "makespan"  # or mean_completion / weighted_completion (planner/objectives.py)
    poll_s: float = 0.5  # real backends: how often to poll processes (simulation: inf)
    shutdown_timeout_s: float = 600.0

    def to_dict(self) -> dict:
        return asdict(self)
