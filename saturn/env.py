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


def switch(name: str, on: str = "", off: str = "") -> Optional[bool]:
    """The variable as on/off (None when unset or empty); anything else is refused naming it."""
    v = _raw(name)
    if v is None:
        return None
    if v.lower() in _OFF + _ON:
        return v.lower() in _ON
    raise SaturnError(f"${name}={v!r}: must be one of {', '.join(_ON)}{on} or {', '.join(_OFF)}{off}; "
                      "fix or unset it")


def warm() -> Optional[bool]:
    """SATURN_WARM: 0/false/no/off/cold forces cold worker launches; 1/true/yes/on/warm or unset: warm."""
    return switch("SATURN_WARM", " (warm workers)", " (cold launches)")


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


def profiles_dir() -> Optional[Path]:
    """SATURN_PROFILES: the profile store directory (None: unset, the user default)."""
    v = _raw("SATURN_PROFILES")
    return None if v is None else Path(v).expanduser()


def checkpoint_fixed_s() -> Optional[float]:
    """SATURN_CHECKPOINT_FIXED_S: the fixed part of a checkpoint's estimated cost (seconds)."""
    return number("SATURN_CHECKPOINT_FIXED_S")


def checkpoint_gbps() -> Optional[float]:
    """SATURN_CHECKPOINT_GBPS: the write rate a checkpoint's estimated cost assumes (GB/s)."""
    return number("SATURN_CHECKPOINT_GBPS", lo_open=True)


def node_host_memory_gb() -> Optional[float]:
    """SATURN_NODE_HOST_MEMORY_GB: host memory of the nodes spilling is planned for (GB)."""
    return number("SATURN_NODE_HOST_MEMORY_GB", lo_open=True)


def gpu_memory_fraction() -> float:
    """SATURN_GPU_MEMORY_FRACTION: the share of a GPU's memory Saturn may plan for (default 1)."""
    v = number("SATURN_GPU_MEMORY_FRACTION", lo_open=True, hi=1.0)
    return 1.0 if v is None else v


def torch_threads() -> int:
    """SATURN_TORCH_THREADS: torch threads of a CPU worker (default 1)."""
    v = number("SATURN_TORCH_THREADS", lo=1, integer=True)
    return 1 if v is None else int(v)


def spilling_compile() -> Optional[bool]:
    """SATURN_SPILLING_COMPILE: compile spilling's state kernel (None: unset, the engine decides)."""
    return switch("SATURN_SPILLING_COMPILE")


# Set by Saturn for the processes it starts (not user settings): read here all the same, so every
# SATURN_* read goes through this module.
def worker_device_type() -> Optional[str]:
    """SATURN_DEVICE_TYPE: the device type the launcher gave this worker (None: not a worker)."""
    return _raw("SATURN_DEVICE_TYPE")


def launch_time() -> Optional[float]:
    """SATURN_LAUNCH_TIME: when the launcher started this worker (epoch seconds)."""
    return number("SATURN_LAUNCH_TIME")


def staging_ledger() -> Optional[Path]:
    """SATURN_STAGING_LEDGER: another checkpoint-staging ledger file (tests)."""
    v = _raw("SATURN_STAGING_LEDGER")
    return None if v is None else Path(v)


def data_ledger() -> Optional[Path]:
    """SATURN_DATA_LEDGER: another input-pipeline core ledger file (tests)."""
    v = _raw("SATURN_DATA_LEDGER")
    return None if v is None else Path(v)


def warm_preload(name: str) -> list[str]:
    """The warm workers' preload list (`module[:function]`, comma-separated) in variable `name`."""
    return [e.strip() for e in (_raw(name) or "").split(",") if e.strip()]


def test_slow_drains() -> str:
    """SATURN_TEST_SLOW_DRAIN_S: "SECONDS[:FROM_STEP]" slows checkpoint drains down (tests)."""
    return _raw("SATURN_TEST_SLOW_DRAIN_S") or ""


def check_environment() -> None:
    """Read every variable once (SaturnError naming the first bad one); call before any work."""
    staging_budget_gb()
    warm()
    seed_profiles()
    checkpoint_fixed_s()
    checkpoint_gbps()
    node_host_memory_gb()
    gpu_memory_fraction()
    torch_threads()
    spilling_compile()
