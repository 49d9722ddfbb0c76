"""Why an attempt failed, from what happened, never from words in a log (#31, #33).

Three typed signals say it:
  * the exception a worker raised: its type (`error_type`), and `status_of_exception` maps it:
    CUDA's `torch.OutOfMemoryError` (raised, or the explicit `__cause__` of what was raised) is
    "oom" (the device ran out), Python's `MemoryError` is "host_oom", anything else "failed". A
    data factory that prints "out of memory" and raises ValueError is a ValueError;
  * the exit signal of a worker that wrote no result (`-SIGKILL`, `-SIGSEGV`, ...);
  * the kernel's OOM kill: a SIGKILL death with typed evidence that memory ran out -- the
    cgroup's `oom_kill` counter rose while the attempt ran, and/or the worker's process tree was
    last seen resident at >= `NEAR_LIMIT` of the memory the node allows it (the host's MemTotal,
    or the cgroup's limit when lower). `MemoryWatch` samples the tree while it runs (psutil:
    resident set, which includes the pinned pages it touched) and gives the verdict.

`SATURN_NODE_HOST_MEMORY_GB` (GiB, as the spilling technique's host check reads it) declares the
node's host memory and overrides the probed limit: for a node whose limit Saturn cannot read, and
as the documented test hook -- set low, a SIGKILLed worker reads as a host OOM kill.

A log's last lines go with a failure as context only: nothing here reads them.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Optional

from saturn.errors import SaturnError

HOST_MEMORY_ENV = "SATURN_NODE_HOST_MEMORY_GB"
NEAR_LIMIT = 0.9  # last sampled resident / limit at or above which a SIGKILL reads as an OOM kill
SAMPLE_EVERY_S = 0.5
_GB = 1e9


def error_type(exc: BaseException) -> str:
    """The exception's type as `module.QualName` (builtins unqualified): the typed cause."""
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def status_of_exception(exc: BaseException) -> str:
    """'oom' (CUDA out of memory), 'host_oom' (MemoryError) or 'failed', from types alone."""
    try:
        import torch

        gpu_oom: tuple = (torch.OutOfMemoryError,)
    except (ImportError, AttributeError):
        gpu_oom = ()
    seen: set[int] = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:  # the raised error and what it was raised from
        seen.add(id(e))
        if gpu_oom and isinstance(e, gpu_oom):
            return "oom"
        if isinstance(e, MemoryError):
            return "host_oom"
        e = e.__cause__
    return "failed"


def exception_result(exc: BaseException) -> dict[str, Any]:
    """A worker's result for an exception it raised (what `launch.collect` reads back)."""
    return {"status": status_of_exception(exc), "error_type": error_type(exc),
            "reason": f"{type(exc).__name__}: {exc}"[:2000]}


# ----------------------------------------------------------------------------- host memory
def _cgroup_dirs() -> list[str]:
    """This process's memory cgroup directories (v2 unified, v1 memory controller)."""
    out: list[str] = []
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if ctrls == "":
            out.append(os.path.join("/sys/fs/cgroup", path.lstrip("/")))
        elif "memory" in ctrls.split(","):
            out.append(os.path.join("/sys/fs/cgroup/memory", path.lstrip("/")))
    return out


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def host_memory_env() -> Optional[float]:
    """SATURN_NODE_HOST_MEMORY_GB in GiB (None when unset; checked like a flag by saturn.env)."""
    from saturn.env import number

    return number(HOST_MEMORY_ENV, lo_open=True)


def host_limit_bytes() -> Optional[int]:
    """The memory this node allows Saturn's processes: SATURN_NODE_HOST_MEMORY_GB, else the lower
    of MemTotal and the cgroup's limit; None when unknown."""
    gib = host_memory_env()
    if gib is not None:
        return int(gib * 2**30)
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for d in _cgroup_dirs():
        for name in ("memory.max", "memory.limit_in_bytes"):
            v = _read_int(os.path.join(d, name))  # "max" (no limit) does not parse: skipped
            if v is not None and 0 < v < 2**60:
                limits.append(v)
    return min(limits) if limits else None


def host_available_bytes() -> Optional[int]:
    """Host memory a new allocation can take now without swapping or an OOM kill: the kernel's
    MemAvailable, or what is left under this process's cgroup limit when lower; None when unknown.
    Why: a background save's staging copy is as big as the job's state, which the job already
    holds once; a budget of half of MemTotal does not see that (issue 33)."""
    out: list[int] = []
    try:
        import psutil

        out.append(int(psutil.virtual_memory().available))
    except Exception:  # noqa: BLE001 - no psutil or no /proc: the cgroup may still say
        pass
    for d in _cgroup_dirs():
        for lim, used in (("memory.max", "memory.current"),
                          ("memory.limit_in_bytes", "memory.usage_in_bytes")):
            v, u = _read_int(os.path.join(d, lim)), _read_int(os.path.join(d, used))
            if v is not None and u is not None and 0 < v < 2**60:
                out.append(max(0, v - u))
    return min(out) if out else None


def oom_kill_count() -> Optional[int]:
    """The cgroup's count of processes the kernel's OOM killer killed (None when unreadable)."""
    for d in _cgroup_dirs():
        for name in ("memory.events", "memory.oom_control"):
            try:
                with open(os.path.join(d, name)) as f:
                    for line in f:
                        k, _, v = line.partition(" ")
                        if k == "oom_kill":
                            return int(v)
            except (OSError, ValueError):
                continue
    return None


def tree_resident_bytes(pid: int) -> Optional[int]:
    """Resident bytes of process `pid` and its descendants (None when it is gone)."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            continue
    return total


@dataclass(frozen=True)
class Death:
    """How a worker that wrote no result died: its exit signal and the memory evidence."""

    rank: int
    signal: Optional[int]  # the signal that ended it (None: it exited with a code)
    exit_code: Optional[int]
    resident_gb: Optional[float]  # its process tree's last sampled resident memory
    peak_gb: Optional[float]  # the highest sampled
    limit_gb: Optional[float]  # what the node allows (host or cgroup)
    oom_kills: int  # the cgroup's oom_kill counter's rise while it ran

    @property
    def host_oom(self) -> bool:
        """Killed by the kernel for memory: SIGKILL plus an OOM kill counted or memory at the limit."""
        if self.signal != signal.SIGKILL:
            return False
        seen = self.peak_gb if self.peak_gb is not None else self.resident_gb
        near = seen is not None and self.limit_gb is not None and seen >= NEAR_LIMIT * self.limit_gb
        return self.oom_kills > 0 or near

    @property
    def status(self) -> str:
        return "host_oom" if self.host_oom else "failed"

    def describe(self) -> str:
        if self.host_oom:
            seen = self.peak_gb if self.peak_gb is not None else self.resident_gb
            at = f"{seen:.1f} GB" if seen is not None else "an unknown size"
            node = f"{self.limit_gb:.1f} GB" if self.limit_gb is not None else "an unknown amount"
            why = "the kernel's OOM killer" if self.oom_kills > 0 else "SIGKILL at the memory limit"
            return f"host out of memory: killed at {at} resident, the node has {node} (rank {self.rank}, {why})"
        if self.signal is not None:
            name = signal.Signals(self.signal).name if self.signal in signal.Signals._value2member_map_ \
                else str(self.signal)
            mem = f", {self.resident_gb:.1f} GB resident when last seen" if self.resident_gb is not None else ""
            return f"rank {self.rank} was killed by {name} (not by Saturn){mem}"
        return f"rank {self.rank} exited with code {self.exit_code} without a result"


class MemoryWatch:
    """Samples the resident memory of each rank's process tree while an attempt runs (at most
    every `SAMPLE_EVERY_S`), and the cgroup's OOM-kill counter at start, to judge a death."""

    def __init__(self, pids: list[Optional[int]]):
        self.pids = list(pids)
        self.last: list[Optional[int]] = [None] * len(self.pids)
        self.peak: list[Optional[int]] = [None] * len(self.pids)
        self.kills_at_start = oom_kill_count()
        try:
            self.limit = host_limit_bytes()
        except SaturnError:  # a malformed override: refused where Saturn starts; judge without it
            self.limit = None
        self._next = 0.0

    def sample(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + SAMPLE_EVERY_S
        for r, pid in enumerate(self.pids):
            if pid is None:
                continue
            b = tree_resident_bytes(pid)
            if b is None:
                continue
            self.last[r] = b
            self.peak[r] = max(b, self.peak[r] or 0)

    def peak_gb(self) -> Optional[float]:
        """The highest resident memory sampled, summed over ranks at their peaks (GB)."""
        vals = [p for p in self.peak if p is not None]
        return round(sum(vals) / _GB, 3) if vals else None

    def death(self, rank: int, returncode: Optional[int]) -> Death:
        kills = oom_kill_count()
        rise = (kills - self.kills_at_start) if kills is not None and self.kills_at_start is not None else 0
        sig = -returncode if returncode is not None and returncode < 0 else None
        last, peak = self.last[rank], self.peak[rank]
        return Death(rank, sig, returncode if sig is None else None,
                     None if last is None else round(last / _GB, 3),
                     None if peak is None else round(peak / _GB, 3),
                     None if self.limit is None else round(self.limit / _GB, 3), max(0, rise))
