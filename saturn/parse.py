"""Loose values read from profile tables, journals and YAML, each parsed by exactly one rule.

`num`: a float from a table cell (None, NaN, '' or junk -> the default), so a half-filled CSV row
never raises deep inside the planner or the executor. `canonical_knobs`: knob settings as
canonical JSON text (sorted keys, no spaces), the one form in which the profiler stores knobs, the
planner compares them and the executor keys its estimates, so equal knobs are equal strings.
Pure standard library: imported by the planner, which must not import torch.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional


def num(v: Any, default: float = 0.0) -> float:
    """float(v), or `default` when v is missing (None, NaN) or not a number."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(f) else f


def finite_or_none(v: Any) -> Optional[float]:
    """`v` as a finite float, or None when it is missing, not a number, NaN or infinite."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def canonical_knobs(knobs: Any) -> str:
    """Knobs (a dict, JSON text, '' / None / NaN for none) as canonical JSON text."""
    if knobs is None or (isinstance(knobs, float) and math.isnan(knobs)):
        return "{}"
    if isinstance(knobs, str):
        text = knobs.strip()
        knobs = json.loads(text) if text else {}
    return json.dumps(knobs, sort_keys=True, separators=(",", ":"), default=str)


def jsonl_records(path: Any, required: tuple[str, ...] = ()) -> tuple[list[dict], int]:
    """(records, bad lines) of a JSONL file a run writes and a user may damage (#28): lines that
    do not decode (garbage bytes, torn writes), are not JSON objects, lack a `required` key, or
    whose `step`/`attempt` is not a whole number are skipped and counted, never raised. A missing
    or unreadable file is ([], 0)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return [], 0
    out, bad = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # (UnicodeDecodeError included)
            bad += 1
            continue
        if (not isinstance(rec, dict) or any(k not in rec for k in required)
                or any(k in rec and not _whole(rec[k]) for k in ("step", "attempt"))):
            bad += 1
            continue
        out.append(rec)
    return out, bad


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def table_records(table: Any) -> list[dict]:
    """The rows of a profile DataFrame as dicts, column by column: `DataFrame.to_dict("records")`
    takes seconds on the 150,000 rows of a 10,000-job workload (arrow strings are boxed one cell
    at a time); `Series.tolist()` per column is several times faster. Missing values stay
    NaN / None, as there."""
    cols = [str(c) for c in table.columns]
    values = [table[c].tolist() for c in table.columns]
    return [dict(zip(cols, row)) for row in zip(*values)]
