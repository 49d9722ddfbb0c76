"""The empirical profiler: a few real training steps per (job signature, technique, GPU count).

    from saturn.profiler import profile, estimate_runtime_s
    rows = profile("configs/examples/tiny-cpu.yaml", budget_min=10)   # one row per job x option
    estimate_runtime_s(rows.iloc[0], steps=1000)                       # seconds

Modules: `search` (which trials can still win: pure), `runner` (devices, threads, timeouts),
`table` (row columns, the store adapter, the runtime estimate), `hardware` (the hardware key),
`cells` (a job's options: techniques, GPU counts, candidate knobs; shared with `saturn.prior`),
`session` (`profile()` tying them together). Names are imported lazily, so a trial process that
imports `saturn.profiler.runner` does not pay for pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Hardware": "hardware", "hardware_for_cluster": "hardware", "local_hardware": "hardware",
    "CellInput": "search", "Search": "search", "Skip": "search", "TrialSpec": "search",
    "knob_tier": "search",
    "ProfileReport": "session", "profile": "session", "workload_rows": "session",
    "COLUMNS": "table", "KEY_COLUMNS": "table", "ProfileStore": "table",
    "checkpoint_cost_s": "table", "estimate_runtime_s": "table",
}
__all__ = ["COLUMNS", "CellInput", "Hardware", "KEY_COLUMNS", "ProfileReport", "ProfileStore", "Search",
           "Skip", "TrialSpec", "checkpoint_cost_s", "estimate_runtime_s", "hardware_for_cluster",
           "knob_tier", "local_hardware", "profile", "workload_rows"]  # = sorted(_EXPORTS), as plain strings


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"saturn.profiler.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'saturn.profiler' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
