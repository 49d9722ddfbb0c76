"""Host staging memory for background checkpoint saves, budgeted per node.

Why: a background save blocks training only while the state is copied into host memory; the
bytes drain to storage behind (see `saturn.training.checkpoint`), possibly after the job ended
(warm workers). On a GPU the copy goes into *pinned* memory: the device-to-host copy runs at DMA
speed, and pinning is slower than copying, so buffers are kept and reused save after save. Pinned
memory cannot be swapped, so every process of a node draws on one budget:

    SATURN_STAGING_BUDGET_GB   the node's budget (default: half of the host's memory)

Each process keeps its buffers (`StagingArea`) and records the bytes it holds in a ledger, one
JSON file per node and user ({pid: {"bytes", "start"}}, under a file lock; a dead process's entry
is dropped on the next access). "start" is the process's start time (/proc/PID/stat): an entry
counts only if it names a live process that started then, so an entry that is not a Saturn
saver's (a foreign or recycled pid, a non-numeric or negative value) is ignored with a warning
and left in the file, never trusted and never crashing a save (#31). When a save needs more than
the budget has left, it waits until a drain frees a buffer (here or in another process), at most
`WAIT_LIMIT_S`, then the caller saves synchronously: the next save blocks, which is what the
planner assumes for that case (`saturn.planner.inputs.job_phases`). The budget alone does not
know what the job itself holds (a spilled job keeps its whole fp32 state on the host), so a new
buffer is also allocated only if it fits in the memory the host has available now
(`causes.host_available_bytes`) minus `host_margin_bytes()`; otherwise the save is synchronous,
from the tensors as they are (issue 33: a 6.7B spilled job was OOM-killed at its save).

`exact_views(state)` gives DCP tensors it writes without copying: DCP clones every tensor whose
storage is bigger than the tensor (a view into a flat buffer: spilling's masters and moments, a
staging buffer's views), and freed clones stay resident in the allocator's arenas.

    area = StagingArea()
    buf, waited_s = area.acquire(nbytes_of(state))   # blocks while the budget is full
    host = copy_into(state, buf)                     # tensors -> views of buf, others copied
    ... write `host` ...; area.release(buf)
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import torch
from filelock import FileLock

from saturn.runtime.causes import host_available_bytes
from saturn.runtime.process import pid_alive

_ALIGN = 64  # every tensor starts at a 64-byte offset (any dtype's alignment)
_GIB = 2**30
# The longest a save waits for the node's budget before saving synchronously: a drain frees its
# buffer once its bytes are written, minutes at most; waiting longer only stalls training.
WAIT_LIMIT_S = 300.0
log = logging.getLogger(__name__)
_warned: set[str] = set()  # ledger entries already warned about (once per process)


def budget_bytes() -> int:
    """The node's staging budget: SATURN_STAGING_BUDGET_GB, else half of MemTotal."""
    from saturn.env import staging_budget_gb  # checked before the run starts (check_environment)

    gb = staging_budget_gb()
    if gb is not None:
        return int(gb * 1e9)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    return 16 * _GIB


def host_margin_bytes() -> int:
    """Memory a staging buffer leaves free on the host: 5% of it, at least 2 GiB (page cache
    for the drain's writes, data loaders, the allocator's slack)."""
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - unknown size: the floor
        total = 0
    return max(2 * _GIB, total // 20)


def host_fits(nbytes: int) -> bool:
    """Whether a new host allocation of `nbytes` fits in what the host has available now (minus
    `host_margin_bytes()`); True when that is unknown (the budget still applies)."""
    avail = host_available_bytes()
    return avail is None or int(nbytes) <= avail - host_margin_bytes()


def ledger_path() -> Path:
    """One ledger per node and user (SATURN_STAGING_LEDGER overrides: tests)."""
    from saturn.env import staging_ledger

    return staging_ledger() or Path(tempfile.gettempdir()) / f"saturn-staging-{os.getuid()}.json"


class Ledger:
    """Bytes of staging memory each process of this node holds (a JSON file under a file lock)."""

    def __init__(self, path: Optional[Path] = None, budget: Optional[int] = None):
        self.path = Path(path or ledger_path())
        self.budget = budget_bytes() if budget is None else int(budget)
        self.lock = FileLock(str(self.path) + ".lock")

    def _entries(self) -> tuple[dict[str, int], dict[str, Any]]:
        """(Saturn savers' live entries {pid: bytes}, entries kept as they are but not counted).
        A dead process's entry is dropped; one that is not a saver's is ignored with a warning."""
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            raw = {}
        if not isinstance(raw, dict):
            _warn_once(f"{self.path}:top", f"staging ledger {self.path} is not a JSON object; ignoring it")
            raw = {}
        ours: dict[str, int] = {}
        foreign: dict[str, Any] = {}
        for key, entry in raw.items():
            pid = int(key) if str(key).isdigit() else None
            if pid is not None and not pid_alive(pid):
                continue  # a dead process holds nothing
            why = _not_a_saver(pid, entry)
            if why:
                foreign[key] = entry
                _warn_once(f"{self.path}:{key}:{entry!r}", f"staging ledger {self.path}: ignoring entry "
                           f"{key!r}: {entry!r} ({why})")
            else:
                ours[key] = int(entry["bytes"])
        return ours, foreign

    def _read(self) -> dict[str, int]:
        return self._entries()[0]

    def _write(self, held: dict[str, int]) -> None:
        """Our entries (with each process's start time), the foreign ones kept as found."""
        foreign = self._entries()[1]
        out: dict[str, Any] = dict(foreign)
        for key, n in held.items():
            out[key] = {"bytes": int(n), "start": process_start(int(key))}
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(out))
        os.replace(tmp, self.path)

    def held(self) -> int:
        with self.lock:
            return sum(self._read().values())

    def try_reserve(self, nbytes: int, pid: Optional[int] = None) -> bool:
        """Add `nbytes` to this process's entry if the node stays within its budget."""
        key = str(pid or os.getpid())
        with self.lock:
            held = self._read()
            if sum(held.values()) + nbytes > self.budget:
                return False
            held[key] = held.get(key, 0) + int(nbytes)
            self._write(held)
            return True

    def release(self, nbytes: int, pid: Optional[int] = None) -> None:
        key = str(pid or os.getpid())
        with self.lock:
            held = self._read()
            left = held.get(key, 0) - int(nbytes)
            if left > 0:
                held[key] = left
            else:
                held.pop(key, None)
            self._write(held)


def process_start(pid: int) -> Optional[int]:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22); None when
    unknown. With the pid it names one process: a recycled pid has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _not_a_saver(pid: Optional[int], entry: Any) -> str:
    """Why a ledger entry is not a live Saturn saver's ('' when it is)."""
    if pid is None:
        return "not a process id"
    if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int) \
            or isinstance(entry.get("bytes"), bool) or entry["bytes"] < 0:
        return "not a Saturn staging entry ({bytes, start})"
    start = process_start(pid)
    if start is None or entry.get("start") != start:
        return f"process {pid} is not the Saturn process that recorded it"
    return ""


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg)


class StagingArea:
    """This process's staging buffers (flat byte tensors, pinned on a GPU host), reused by size."""

    def __init__(self, ledger: Optional[Ledger] = None, poll_s: float = 0.05):
        self.ledger = ledger or Ledger()
        self.poll_s = poll_s
        self.pin = torch.cuda.is_available()
        self._free: list[torch.Tensor] = []
        self._busy: list[torch.Tensor] = []
        self._registered: set[int] = set()  # data pointers page-locked with cudaHostRegister
        self._cond = threading.Condition()

    def held_bytes(self) -> int:
        """Bytes of buffers this process holds (free for reuse or in use by a drain)."""
        with self._cond:
            return sum(int(b.numel()) for b in self._free + self._busy)

    def acquire(self, nbytes: int, timeout_s: Optional[float] = None) -> tuple[Optional[torch.Tensor], float]:
        """A buffer of at least `nbytes`, and the seconds waited for the budget. Waits while the
        node's budget is full (at most `timeout_s`, default `WAIT_LIMIT_S`); None when `nbytes`
        exceeds the whole budget or what the host has available, or the wait timed out (the
        caller then saves synchronously)."""
        timeout_s = WAIT_LIMIT_S if timeout_s is None else timeout_s
        t0 = time.perf_counter()
        if nbytes > self.ledger.budget:
            return None, 0.0
        while True:
            with self._cond:
                fits = [b for b in self._free if b.numel() >= nbytes]
                if fits:
                    buf = min(fits, key=lambda b: b.numel())
                    # by identity: list.remove compares tensors with ==, elementwise
                    self._free = [b for b in self._free if b is not buf]
                    self._busy.append(buf)
                    return buf, time.perf_counter() - t0
                # too small to reuse: give them back to the budget before reserving a bigger one
                for b in self._free:
                    self._free_buffer(b)
                self._free.clear()
                if not host_fits(nbytes):  # the job holds the host's memory: save synchronously
                    return None, time.perf_counter() - t0
                if self.ledger.try_reserve(nbytes):
                    break
                if time.perf_counter() - t0 > timeout_s:
                    return None, time.perf_counter() - t0
                self._cond.wait(self.poll_s)  # a drain here releases, or another process does
        try:
            buf = self._allocate(int(nbytes))
        except BaseException:
            self.ledger.release(nbytes)
            raise
        with self._cond:
            self._busy.append(buf)
        return buf, time.perf_counter() - t0

    def _allocate(self, nbytes: int) -> torch.Tensor:
        """A host buffer of exactly `nbytes`, page-locked on a GPU host. cudaHostRegister on a
        plain allocation rather than `pin_memory=True`: torch's pinned allocator rounds every
        block up to a power of two (10 GB would pin 16 GiB)."""
        buf = torch.empty(nbytes, dtype=torch.uint8)
        if self.pin and nbytes:
            try:
                err = torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), nbytes, 0)
                ok = int(getattr(err, "value", err)) == 0
            except (AttributeError, RuntimeError, TypeError):
                ok = False
            if ok:
                self._registered.add(buf.data_ptr())
            else:  # e.g. a locked-memory limit: torch's allocator (rounded up) still pins it
                buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        elif nbytes:
            buf.zero_()  # fault the pages in now, not during the first save's copy
        return buf

    def _free_buffer(self, buf: torch.Tensor) -> None:
        if buf.data_ptr() in self._registered:
            self._registered.discard(buf.data_ptr())
            torch.cuda.cudart().cudaHostUnregister(buf.data_ptr())
        self.ledger.release(int(buf.numel()))

    def release(self, buf: torch.Tensor) -> None:
        """A drain is done with `buf`: keep it for the next save."""
        with self._cond:
            self._busy = [b for b in self._busy if b is not buf]
            self._free.append(buf)
            self._cond.notify_all()

    def close(self) -> None:
        """Free the buffers no drain uses (their bytes go back to the node's budget)."""
        with self._cond:
            for b in self._free:
                self._free_buffer(b)
            self._free.clear()


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def tensors_of(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a nested dict/list/tuple state."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors_of(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors_of(v)]
    return []


def nbytes_of(state: Any) -> int:
    """Staging bytes `state` needs (each tensor aligned)."""
    return sum(_aligned(t.numel() * t.element_size()) for t in tensors_of(state))


def copy_into(state: Any, buf: torch.Tensor) -> Any:
    """A host copy of `state` whose tensors are views of `buf` (non-tensors deep-copied). Returns
    once every copy is complete: training may change the originals right after."""
    offset = [0]
    cuda = False

    def walk(obj: Any) -> Any:
        nonlocal cuda
        if isinstance(obj, torch.Tensor):
            n = obj.numel() * obj.element_size()
            dst = buf[offset[0]:offset[0] + n].view(obj.dtype).view(obj.shape)
            offset[0] += _aligned(n)
            src = obj.detach()
            cuda = cuda or src.is_cuda
            dst.copy_(src, non_blocking=src.is_cuda)
            return dst
        return map_state(obj, walk, copy.deepcopy)

    out = walk(state)
    if cuda:
        torch.cuda.synchronize()
    return out


def exact_views(state: Any) -> Any:
    """`state` with each plain contiguous CPU tensor that views a bigger storage replaced by a
    tensor over the same memory whose storage is exactly its bytes (no copy), so DCP's writer
    does not clone it (`_SerialCpuLoader`/`_OverlappingCpuLoader` clone such views: a model-sized
    copy of a spilled job's flat buffers). Others (DTensors, GPU tensors) stay as they are."""
    def walk(obj: Any) -> Any:
        if type(obj) is torch.Tensor and obj.device.type == "cpu" and obj.is_contiguous() \
                and obj.untyped_storage().nbytes() != obj.numel() * obj.element_size() and obj.numel():
            t = obj.detach()
            as_int = {torch.bfloat16: torch.int16, torch.float16: torch.int16}.get(t.dtype)
            try:
                arr = (t.view(as_int) if as_int else t).numpy()
            except (TypeError, RuntimeError):  # a dtype numpy lacks: DCP copies it
                return obj
            out = torch.from_numpy(arr)  # the same memory (contiguous), 0-dim stays 0-dim
            return (out.view(t.dtype) if as_int else out).view(t.shape)
        return obj if isinstance(obj, torch.Tensor) else map_state(obj, walk, lambda v: v)

    return walk(state)


def map_state(obj: Any, walk: Any, leaf: Any) -> Any:
    """`obj` with `walk` applied to each value of a dict/list/tuple, `leaf(obj)` otherwise."""
    if isinstance(obj, dict):
        return {k: walk(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [walk(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(walk(v) for v in obj)
    return leaf(obj)
