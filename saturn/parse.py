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
from typing import Any


def num(v: Any, default: float = 0.0) -> float:
    """float(v), or `default` when v is missing (None, NaN) or not a number."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(f) else f


def canonical_knobs(knobs: Any) -> str:
    """Knobs (a dict, JSON text, '' / None / NaN for none) as canonical JSON text."""
    if knobs is None or (isinstance(knobs, float) and math.isnan(knobs)):
        return "{}"
    if isinstance(knobs, str):
        text = knobs.strip()
        knobs = json.loads(text) if text else {}
    return json.dumps(knobs, sort_keys=True, separators=(",", ":"), default=str)
