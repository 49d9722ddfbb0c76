"""`saturn run` never executes a plan on guessed numbers silently.

Before a real run, the options the plan would use are checked for provenance
(`saturn.planner.provenance`): any that rest on extrapolated / simulated / guessed rows are either
measured now -- when the hardware they are for is right here (a local cluster of that GPU type) and
the table comes from the profile store -- or the run is refused with `--require-measured`, or,
when they cannot be measured here, the run goes on with a warning naming them.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import pandas as pd

from saturn.errors import SaturnError

log = logging.getLogger(__name__)


def _rows_guessed(table: pd.DataFrame) -> bool:
    from saturn.planner.provenance import GUESSES, classify

    return any(classify(r) in GUESSES for r in table.to_dict("records")) if len(table) else False


def hardware_here(workload: Any, cluster: Any, gpu_types: set[str]) -> bool:
    """The cluster is this machine (detected, not described or on Ray) and has these GPU types."""
    if getattr(workload.cluster, "nodes", None) or getattr(workload.cluster, "ray", None) is not None:
        return False
    here = {str(n.gpu_type).lower() for n in cluster.nodes}
    return bool(gpu_types) and gpu_types <= here


def measure_guesses(workload: Any, cluster: Any, table: pd.DataFrame, *, require_measured: bool,
                    from_store: bool, reload: Callable[[], pd.DataFrame], time_limit_s: float = 10.0,
                    path: Optional[str] = None, say: Callable[[str], None] = print) -> pd.DataFrame:
    """The table to run with: unchanged when the plan rests on no guess; re-profiled (and
    reloaded) when it does and the hardware is here; SaturnError with --require-measured."""
    if not _rows_guessed(table):
        return table
    from saturn.planner import plan
    from saturn.planner.provenance import annotate, guessed

    g = guessed(annotate(plan(workload.jobs, cluster, table, time_limit_s=time_limit_s), table).assignments)
    if not g:
        return table
    desc = "; ".join(f"{a.job} ({a.technique} on {len(a.gpus)} GPU(s): {a.provenance})" for a in g)
    if require_measured:
        raise SaturnError(f"--require-measured: the plan would rest on numbers nobody measured: {desc}. "
                          f"Measure them with `saturn profile {path or 'WORKLOAD.yaml'}` on that hardware.")
    rows = table[table["job"].astype(str).isin({a.job for a in g})] if "job" in table.columns else table
    types = {str(t).lower() for t in rows.get("gpu_type", pd.Series(dtype=str)).dropna()}
    if not (from_store and hardware_here(workload, cluster, types)):
        say(f"WARNING: running on guessed numbers (not measurable here): {desc}")
        return table
    say(f"measuring guessed options before the run: {desc}")
    from saturn.profiler import profile

    profile(workload.model_copy(update={"jobs": [workload.job(a.job) for a in g]}))
    return reload()
