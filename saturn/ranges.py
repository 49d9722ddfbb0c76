"""The ranges of every numeric setting, shared by the CLI's flags and the Python API's arguments.

Why here and not in `saturn.cli`: `saturn.run(interval_s=nan)` must be refused like
`saturn run --interval nan`, with the same range and words, and nothing outside `saturn.cli` may
import the CLI. `RANGES` is keyed by flag; `API_ARGS` names the flag of each keyword argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from saturn.errors import SaturnError


@dataclass(frozen=True)
class Range:
    """Closed range [lo, hi] of a numeric flag (lo excluded when `lo_open`), finite values only."""

    lo: float
    hi: float
    unit: str = ""
    integer: bool = False
    lo_open: bool = False

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a finite number"
        unit = f" of {self.unit}" if self.unit else ""
        lo = f"> {_fmt(self.lo)}" if self.lo_open else f">= {_fmt(self.lo)}"
        return f"{kind}{unit} {lo} and <= {_fmt(self.hi)}"

    def contains(self, value: float) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.integer and value != int(value):
            return False
        return (value > self.lo if self.lo_open else value >= self.lo) and value <= self.hi

    def check(self, flag: str, value: Any) -> Any:
        if value is None or self.contains(value):
            return value
        raise SaturnError(f"{flag} must be {self.describe()} (got {value!r})")


def _fmt(x: float) -> str:
    return f"{int(x):,}" if x == int(x) else f"{x:g}"


DAY_S = 86_400.0
RANGES: dict[str, Range] = {
    "--time-limit": Range(0.1, DAY_S, "seconds"),
    "--interval": Range(1.0, 1e9, "seconds"),  # 1e9: re-plan on job ends only
    "--max-retries": Range(0, 1000, integer=True),
    "--checkpoint-every": Range(1, 10**9, "steps", integer=True),
    "--noise": Range(0.0, 3.0),  # sigma of a log-normal: 3 is already a factor of 20 per sigma
    "--seed": Range(0, 2**32 - 1, integer=True),
    "--budget-min": Range(0.0, 7 * 24 * 60.0, "minutes", lo_open=True),
    "--progress-every": Range(0.1, DAY_S, "seconds"),
}
# the Python API's keyword arguments -> the flag whose range they share (sim_speed has no flag)
API_ARGS: dict[str, str] = {"time_limit_s": "--time-limit", "interval_s": "--interval",
                            "max_retries": "--max-retries", "checkpoint_every": "--checkpoint-every",
                            "noise": "--noise", "seed": "--seed", "budget_min": "--budget-min"}
API_ONLY: dict[str, Range] = {"sim_speed": Range(0.0, 1e6, "x real time", lo_open=True)}


def check_args(call: str, **args: Any) -> None:
    """Refuse (SaturnError) an API argument out of its flag's range, naming both, before any work."""
    for name, value in args.items():
        rng = API_ONLY.get(name) or RANGES[API_ARGS[name]]
        flag = f" (like {API_ARGS[name]})" if name in API_ARGS else ""
        if value is not None and not rng.contains(value):
            raise SaturnError(f"{call}: {name}{flag} must be {rng.describe()} (got {value!r})")


def check_path_arg(call: str, name: str, value: Any, *, table: bool = False) -> None:
    """A path argument (str or os.PathLike; a DataFrame too when `table`), or a clear SaturnError."""
    import os

    ok = value is None or isinstance(value, (str, os.PathLike))
    if table and not ok:
        import pandas as pd

        ok = isinstance(value, pd.DataFrame)
    if not ok:
        kinds = "a path (str or os.PathLike)" + (", a pandas DataFrame" if table else "") + " or None"
        raise SaturnError(f"{call}: {name} must be {kinds}, not {type(value).__name__} ({value!r:.60})")
