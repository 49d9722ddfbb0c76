"""Every environment variable Saturn reads, typed and checked like a flag (issue 31, item 9).

Why one module: a bad value (`SATURN_STAGING_BUDGET_GB=lots`, `SATURN_WARM=maybe`, a
`SATURN_SEED_PROFILES` that names no directory) used to crash a run half-way (after its journal was
written) or be silently ignored. `check_environment()` reads them all once, before any work, and
raises a SaturnError (exit 2) naming the variable, its value and the fix; the accessors are what
the rest of Saturn reads, so the check and the use cannot disagree.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

from saturn.errors import SaturnError

_OFF = ("0", "false", "no", "off", "cold")
_ON = ("1", "true", "yes", "on", "warm")
_NONE = ("", "0", "none", "off")


def _raw(name: str) -> Optional[str]:
    v = os.environ.get(name)
    return None if v is None or not v.strip() else v.strip()


def number(name: str, *, lo: float = 0.0, lo_open: bool = False, hi: float = math.inf,
           integer: bool = False) -> Optional[float]:
    """The variable as a finite number in its range, None when unset or empty."""
    v = _raw(name)
    if v is None:
        return None
    try:
        x = int(v) if integer else float(v)
    except ValueError:
        x = math.nan
    ok = math.isfinite(x) and (x > lo if lo_open else x >= lo) and x <= hi
    if not ok:
        kind = "a whole number" if integer else "a finite number"
        bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
        top = f" and <= {hi:g}" if math.isfinite(hi) else ""
        raise SaturnError(f"${name}={v!r}: must be {kind} {bound}{top}; fix or unset it (unset {name})")
    return x


def staging_budget_gb() -> Optional[float]:
    """SATURN_STAGING_BUDGET_GB: host memory (GB) a node's checkpoint staging may hold."""
    return number("SATURN_STAGING_BUDGET_GB")


def warm() -> Optional[bool]:
    """SATURN_WARM: 0/false/no/off/cold forces cold worker launches; 1/true/yes/on/warm or unset: warm."""
    v = _raw("SATURN_WARM")
    if v is None:
        return None
    if v.lower() in _OFF + _ON:
        return v.lower() in _ON
    raise SaturnError(f"$SATURN_WARM={v!r}: must be one of {', '.join(_ON)} (warm workers) or "
                      f"{', '.join(_OFF)} (cold launches); fix or unset it")


def seed_profiles() -> tuple[bool, Optional[Path]]:
    """SATURN_SEED_PROFILES: (set?, the seed directory; None: no seeds). A path must be a directory."""
    v = os.environ.get("SATURN_SEED_PROFILES")
    if v is None:
        return False, None
    if v.strip().lower() in _NONE:
        return True, None
    path = Path(v.strip()).expanduser()
    if not path.is_dir():
        raise SaturnError(f"$SATURN_SEED_PROFILES={v!r}: no such directory; point it at a directory of seed "
                          "profile tables, set it to 'none' for no seeds, or unset it")
    return True, path


def check_environment() -> None:
    """Read every variable once (SaturnError naming the first bad one); call before any work."""
    staging_budget_gb()
    warm()
    seed_profiles()
    number("SATURN_CHECKPOINT_FIXED_S")
    number("SATURN_CHECKPOINT_GBPS", lo_open=True)
    number("SATURN_NODE_HOST_MEMORY_GB", lo_open=True)
    number("SATURN_GPU_MEMORY_FRACTION", lo_open=True, hi=1.0)
    number("SATURN_TORCH_THREADS", lo=1, integer=True)
