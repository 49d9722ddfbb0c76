"""Checks of profile tables before the planner reads them: a value it would misread is refused
with its file, line and column (`validate_table`), and `cluster_check` holds a workload's rows to
the registry's technique names and the cluster's device memory.

Apart from `store` (reading and writing the files) so that each stays a few hundred lines; pure
pandas (the planner side never imports torch). The caller passes the registry's names.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Collection, Mapping, Optional

import pandas as pd

from saturn.errors import SaturnError
from saturn.parse import finite_or_none

NUMBER_COLUMNS = ("step_time_s", "peak_mem_gb", "startup_s", "launch_s", "worker_start_s", "checkpoint_s",
                  "checkpoint_gb", "first_step_s", "trial_s", "gpu_memory_gb", "host_peak_gb", "host_mem_gb",
                  "host_memory_gb")  # host memory: measured peak, estimate, the node's (profiles.host_memory)
# Limits far beyond any real measurement and far below what breaks the planner (a 1e299 s step gave
# a plan with no makespan): a value past one is a damaged or hand-edited row, refused by name.
MAX_STEP_TIME_S = 86_400.0  # one optimizer step: a day
MAX_FIXED_S = 7 * 86_400.0  # start-up, launch, checkpoint, trial: a week
MAX_MEMORY_GB = 100_000.0  # peak or device memory of one GPU: 100 TB
LIMITS = {"step_time_s": MAX_STEP_TIME_S, "peak_mem_gb": MAX_MEMORY_GB, "gpu_memory_gb": MAX_MEMORY_GB,
          "host_peak_gb": MAX_MEMORY_GB, "host_mem_gb": MAX_MEMORY_GB, "host_memory_gb": MAX_MEMORY_GB}
BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "1.0": True,
             "0.0": False}


class ProfileTableError(SaturnError):
    """A profile table has a value the planner cannot use (names file, row and column)."""


def where(path: Any, i: int, col: str, first_line: Optional[int]) -> str:
    row = f"line {first_line + i}" if first_line is not None else f"row {i + 1}"
    return f"profile file {path}, {row} (data row {i + 1}), column {col!r}"


def validate_table(df: pd.DataFrame, path: Any = "<table>", *, first_line: Optional[int] = 2) -> None:
    """Refuse a table the planner would misread: missing key columns, non-integer or non-positive
    GPU counts, non-JSON knobs, and number cells that are text, NaN on a feasible row, infinite or
    negative. `first_line` is the file line of data row 1 (CSV), None for parquet."""
    if "signature" not in df.columns and "job" not in df.columns:
        raise ProfileTableError(f"profile file {path} has neither a 'signature' nor a 'job' column "
                                f"(columns: {', '.join(map(str, df.columns))})")
    for col in ("technique", "gpus"):
        if col not in df.columns:
            columns = ", ".join(map(str, df.columns))
            raise ProfileTableError(f"profile file {path} has no column {col!r} (columns: {columns})")
    from saturn.parse import table_records

    # rows as dicts, column by column: DataFrame.iterrows builds a Series per row (a minute for
    # the 150,000 rows of a 10,000-job table)
    for i, r in enumerate(table_records(df)):
        g = r["gpus"]
        try:
            ok = float(g) == int(float(g)) and int(float(g)) >= 1
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ProfileTableError(f"{where(path, i, 'gpus', first_line)}: {g!r} is not a positive whole GPU count")
        if "knobs" in df.columns:
            k = r["knobs"]
            if isinstance(k, str) and k.strip():
                try:
                    if not isinstance(json.loads(k), dict):
                        raise ValueError("not an object")
                except ValueError:
                    raise ProfileTableError(f"{where(path, i, 'knobs', first_line)}: {k!r} is not a JSON object "
                                            "like {\"activation_checkpointing\": false}") from None
        fv = r.get("feasible", True)
        if not boolean_cell(fv):
            raise ProfileTableError(f"{where(path, i, 'feasible', first_line)}: {fv!r} is not a boolean; write True "
                                    "or False (a row is measured feasible or it is not)")
        if isinstance(fv, str):
            is_feasible = fv.strip().lower() in ("true", "1", "yes")
        else:
            is_feasible = fv is None or fv == fv and bool(fv)
        st = r.get("status")
        if isinstance(st, str) and st.strip() and st.strip().lower() != "ok":
            is_feasible = False
        for col in NUMBER_COLUMNS:
            if col not in df.columns:
                continue
            v = r[col]
            if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
                if col == "step_time_s" and is_feasible:
                    raise ProfileTableError(f"{where(path, i, col, first_line)}: empty or NaN on a feasible row "
                                            "(mark the row feasible=False or re-profile it)")
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise ProfileTableError(f"{where(path, i, col, first_line)}: {v!r} is not a number") from None
            if not math.isfinite(f) or f < 0 or (col == "step_time_s" and is_feasible and f == 0):
                need = "a positive finite number of seconds" if col == "step_time_s" else "a finite number >= 0"
                raise ProfileTableError(f"{where(path, i, col, first_line)}: {v!r} must be {need}")
            limit = LIMITS.get(col, MAX_FIXED_S)
            if f > limit:
                unit = "GB" if col.endswith("_gb") else "s"
                raise ProfileTableError(f"{where(path, i, col, first_line)}: {v!r} is over the limit of {limit:,.0f} "
                                        f"{unit} for {col}; a damaged or hand-edited row? Fix it or re-profile")
        if is_feasible and "peak_mem_gb" in df.columns and "gpu_memory_gb" in df.columns and not cpu_row(r):
            peak, dev = finite_or_none(r["peak_mem_gb"]), finite_or_none(r["gpu_memory_gb"])
            if peak is not None and dev is not None and dev > 0 and peak > dev:
                raise ProfileTableError(f"{where(path, i, 'peak_mem_gb', first_line)}: {peak:g} GB on a feasible row "
                                        f"is above its device's {dev:g} GB (gpu_memory_gb); mark it feasible=False "
                                        "or re-profile")


def cpu_row(r: Any) -> bool:
    """CPU slots: `peak_mem_gb` is the process's peak RSS and their memory size nominal, so the two
    are not compared."""
    return str(r.get("gpu_type", "")).strip().lower() == "cpu"


def boolean_cell(v: Any) -> bool:
    """True/False, 1/0, yes/no (any case) or empty: what `feasible` may hold."""
    if v is None or isinstance(v, bool) or (isinstance(v, float) and math.isnan(v)):
        return True
    if isinstance(v, str):
        return not v.strip() or v.strip().lower() in BOOL_TEXT
    try:
        return float(v) in (0.0, 1.0)
    except (TypeError, ValueError):
        return False


TableCheck = Callable[[pd.DataFrame, Any, Optional[int]], None]


def cluster_check(*, techniques: Collection[str], memory_gb: Mapping[str, float], signatures: Collection[str],
                  jobs: Collection[str]) -> TableCheck:
    """A check of each table file against what the plan will use, for `read_table`/`load_store`:
    every row of this workload's jobs (by `job` or `signature`) names a registered technique (or a
    'pkg.module:Class' path), and a feasible row for a GPU type of the cluster needs no more memory
    than that type's device has there (`memory_gb`: GPU type, lower case -> GB; CPU slots, whose
    memory is nominal, are not held to it). The caller passes
    the registry's names, so this module stays free of torch."""
    known = set(techniques)
    sigs, names = set(map(str, signatures)), set(map(str, jobs))

    def check(df: pd.DataFrame, path: Any, first_line: Optional[int]) -> None:
        from saturn.parse import table_records

        for i, r in enumerate(table_records(df)):  # to_dict("records") is slow on 150,000 rows
            mine = str(r.get("job")) in names if "job" in df.columns else str(r.get("signature")) in sigs
            if not mine:
                continue
            t = str(r.get("technique"))
            if t not in known and ":" not in t:
                raise ProfileTableError(f"{where(path, i, 'technique', first_line)}: unknown technique {t!r}; "
                                        f"registered: {', '.join(sorted(known))} (`saturn techniques` lists them)")
            fv = r.get("feasible", True)
            if isinstance(fv, str):
                feasible = BOOL_TEXT.get(fv.strip().lower(), False)
            else:
                feasible = fv is None or fv == fv and bool(fv)
            dev = memory_gb.get(str(r.get("gpu_type", "")).lower())
            peak = finite_or_none(r.get("peak_mem_gb"))
            if feasible and dev is not None and peak is not None and peak > dev and not cpu_row(r):
                own = finite_or_none(r.get("gpu_memory_gb"))
                if own is None or own <= dev:  # a row measured on a larger device of the type is not this one's
                    raise ProfileTableError(
                        f"{where(path, i, 'peak_mem_gb', first_line)}: {peak:g} GB on a feasible row is above the "
                        f"{dev:g} GB of the cluster's {r.get('gpu_type')} devices; mark it feasible=False, "
                        "re-profile, or fix the cluster's gpu_memory_gb")
    return check
