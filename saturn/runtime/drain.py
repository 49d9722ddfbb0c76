"""Background checkpoint drains: a save returns once its state is copied into host memory, and the
files are written, fsynced and published behind, off the training loop's critical path.

* One process (world size 1): the copy goes into this process's `staging.StagingArea` (buffers
  reused save after save, budgeted per node: when the budget is full the save waits for a drain)
  and a drain thread writes it with DCP without collectives (`no_dist`), so a drain needs no
  process group and survives the end of the job. A warm worker (`set_drain_behind(True)`) lets
  the *final* save of a run drain too: the job returns with `durable: False` while its
  checkpoint is still written, the worker takes the next job, and reports each drain's end
  through `set_drain_listener`. Elsewhere the final save is synchronous (or waited for before
  the process exits), so a run never returns before its result is durable.
* Several processes: DCP `async_save` with its stager (`save_async`); at most one such save in
  flight per process, its collectives on their own gloo group (created once per process group),
  never the training group.
`wait_pending()` waits for every save in flight. A test may slow drains down with
SATURN_TEST_SLOW_DRAIN_S (see `test_drain_delay`). The checkpoint format itself (what a save
writes, how a load reshards) is `saturn.training.checkpoint`; publishing is
`saturn.training.catalog.publish`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
from torch.distributed.checkpoint.filesystem import FileSystemWriter

from saturn.runtime import staging
from saturn.training import catalog
from saturn.training.catalog import CheckpointWarning

DRAIN_THREADS = 4  # writer threads of a drain (DCP FileSystemWriter thread_count)


class Background:
    """This process's save in flight (at most one), its DCP stager and its gloo group."""

    def __init__(self) -> None:
        self.enabled = threading.local()
        self.pending: Optional[Future] = None
        self.pool: Optional[ThreadPoolExecutor] = None
        self.stager: Any = None
        self.group: Any = None
        self.group_of: Any = None
        self.broken = False  # staging failed once in this process: save synchronously

    def stager_for(self) -> Any:
        if self.stager is None:
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            cuda = torch.cuda.is_available()  # pinned host buffers, reused across saves
            self.stager = DefaultStager(StagingOptions(use_pinned_memory=cuda,
                                                       use_shared_memory=False,
                                                       use_async_staging=False,
                                                       use_non_blocking_copy=False))
        return self.stager

    def group_for(self) -> Any:
        """A gloo group for the background thread's collectives (collective to create; one per
        training process group, which warm workers make per job)."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        default = dist.distributed_c10d._get_default_group()
        if self.group_of is not default:
            self.group = dist.new_group(backend="gloo")
            self.group_of = default
        return self.group


BACKGROUND = Background()


class Drains:
    """This process's staged saves being written (world size 1), oldest first, on one thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.futures: dict[str, Future] = {}  # final checkpoint path -> its drain
        self.pool: Optional[ThreadPoolExecutor] = None
        self.area: Optional[staging.StagingArea] = None
        self.behind = False  # warm worker: the final save of a run drains too
        self.listener: Optional[Callable[[dict[str, Any]], None]] = None
        self.last: dict[str, float] = {}  # the newest save's blocking times (block_s, budget_wait_s)

    def staging_area(self) -> staging.StagingArea:
        if self.area is None:
            self.area = staging.StagingArea()
        return self.area

    def notify(self, event: dict[str, Any]) -> None:
        if self.listener is not None:
            try:
                self.listener(event)
            except Exception:  # noqa: BLE001 - a report must never break a save
                pass

    def in_flight(self, ckpt_dir: Optional[str] = None) -> list[tuple[str, Future]]:
        with self.lock:
            return [(p, f) for p, f in self.futures.items() if ckpt_dir is None
                    or os.path.normpath(os.path.dirname(p)) == os.path.normpath(ckpt_dir)]


DRAINS = Drains()


def set_drain_behind(on: bool) -> None:
    """Warm workers: the final save of a run drains in the background too (the job returns with
    `durable: False`; the process must stay up until `wait_pending()`)."""
    DRAINS.behind = bool(on)


def drains_behind() -> bool:
    return DRAINS.behind


def set_drain_listener(fn: Optional[Callable[[dict[str, Any]], None]]) -> None:
    """Called with {"event": "draining", "path"} when a staged save is queued and {"event":
    "drained", "path", "ok", "drain_s", "error"} when it is published (or failed), from the
    saving thread and the drain thread respectively."""
    DRAINS.listener = fn


def draining(ckpt_dir: Optional[str] = None) -> list[str]:
    """Final paths of this process's staged saves not yet published (of `ckpt_dir`, or all)."""
    return [p for p, f in DRAINS.in_flight(ckpt_dir) if not f.done()]


def staged_bytes() -> int:
    """Host bytes this process holds for staging (warm workers leave them out of their leak check)."""
    return DRAINS.area.held_bytes() if DRAINS.area is not None else 0


def last_save_cost() -> dict[str, float]:
    """This process's newest staged save: block_s (what the caller waited), budget_wait_s (the
    part spent waiting for the node's staging budget) and bytes (the staging it needed)."""
    return dict(DRAINS.last)


def prepare_staging(nbytes: int) -> None:
    """Allocate (and page-lock) a staging buffer for saves of `nbytes` bytes in a background
    thread, so the first background save of a process only copies (one process only:
    other saves go through DCP's stager). A buffer that fits already, or a full budget: nothing."""
    if world_size() != 1:
        return

    def run() -> None:
        try:
            area = DRAINS.staging_area()
            buf, _ = area.acquire(int(nbytes), timeout_s=0.0)
            if buf is not None:
                area.release(buf)
        except Exception:  # noqa: BLE001 - an optimization: the save allocates it otherwise
            pass

    threading.Thread(target=run, name="saturn-staging-prepare", daemon=True).start()


def wait_drains(ckpt_dir: Optional[str] = None) -> Optional[str]:
    """Block until this process's drains (of `ckpt_dir`, or all) are published; the newest path
    that was, or None. A failed drain is a warning (the previous checkpoint stays newest)."""
    newest = None
    for path, fut in DRAINS.in_flight(ckpt_dir):
        try:
            fut.result()
            newest = path
        except Exception as exc:  # noqa: BLE001 - reported by the drain itself
            warnings.warn(f"background checkpoint {path} was not written ({type(exc).__name__}: "
                          f"{exc}); the previous checkpoint stays the resume point",
                          CheckpointWarning, stacklevel=2)
        with DRAINS.lock:
            DRAINS.futures.pop(path, None)
    return newest


@contextlib.contextmanager
def in_background() -> Iterator[None]:
    """Saves started inside return once staged; bytes are written and published behind."""
    prev = getattr(BACKGROUND.enabled, "on", False)
    BACKGROUND.enabled.on = True
    try:
        yield
    finally:
        BACKGROUND.enabled.on = prev


def wait_pending() -> Optional[str]:
    """Block until this process's background saves are written and published; the newest path
    (None if none or it failed). A failed background save is reported as a warning (the previous
    checkpoint stays newest)."""
    drained = wait_drains()
    return wait_async() or drained


def wait_async() -> Optional[str]:
    fut, BACKGROUND.pending = BACKGROUND.pending, None
    if fut is None:
        return None
    try:
        return fut.result()
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - a lost periodic save
        # must not kill the run: the previous checkpoint stays the resume point
        warnings.warn(f"background checkpoint save failed ({type(exc).__name__}: {exc}); the "
                      "previous checkpoint stays the resume point", CheckpointWarning, stacklevel=2)
        return None


def release_staging() -> None:
    """End of a job: wait for its DCP save in flight and free that stager's pinned buffers (a
    warm worker must not keep one job's host copies while the next job runs). Staged drains are
    waited for too, unless drains run behind (warm workers), where they outlive the job."""
    wait_async()
    if BACKGROUND.stager is not None:
        BACKGROUND.stager.close()
        BACKGROUND.stager = None
    if not DRAINS.behind:
        wait_drains()
        if DRAINS.area is not None:
            DRAINS.area.close()



def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def background_on() -> bool:
    """Whether saves of this thread run inside `in_background()`."""
    return bool(getattr(BACKGROUND.enabled, "on", False))


def has_dtensor(state: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(t, DTensor) for t in staging.tensors_of(state))


def async_fits(state: dict[str, Any]) -> bool:
    """Whether DCP's stager may copy `state` (this rank's shards, times the ranks of this node)
    into host memory: only if the host has it available now (`staging.host_fits`). Collective:
    every rank gets the same answer (all stage, or all save synchronously)."""
    from torch.distributed.tensor import DTensor

    local = [t.to_local() if isinstance(t, DTensor) else t for t in staging.tensors_of(state)]
    need = sum(t.numel() * t.element_size() for t in local)
    ok = staging.host_fits(need * max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([1 if ok else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=BACKGROUND.group_for())
        ok = bool(flag.item())
    return ok


def publish(tmp: str, final: str, ckpt_dir: str, meta: dict[str, Any], keep: int) -> None:
    """`catalog.publish`, leaving alone the `tmp-N` directories of this process's drains."""
    catalog.publish(tmp, final, ckpt_dir, meta, keep,
                    busy={os.path.basename(p).replace("step-", "tmp-") for p in draining(ckpt_dir)})


def save_async(state: dict[str, Any], tmp: str, final: str, ckpt_dir: str, meta: dict[str, Any],
               keep: int) -> Optional[str]:
    """Start a DCP `async_save` of `state` (collective; `tmp` exists on every rank) and publish it
    behind; the final path, or None when staging failed (this process then saves synchronously
    from now on: the caller saves again, synchronously)."""
    group = BACKGROUND.group_for()
    try:
        written: Any = dcp.async_save(state, checkpoint_id=tmp, process_group=group,
                                      async_stager=BACKGROUND.stager_for())
    except Exception as exc:  # noqa: BLE001 - staging failed: save synchronously instead
        # Seen on an H200 (torch 2.11): DefaultStager's deep copy raised KeyError(<class 'type'>)
        # on a later save of a job. A periodic save must never fail the job: this process
        # saves synchronously from now on (slower, equally durable).
        warnings.warn(f"background checkpoint staging failed ({type(exc).__name__}: {exc}); "
                      "saving synchronously from now on", CheckpointWarning, stacklevel=3)
        BACKGROUND.broken = True
        release_staging()
        return None
    upload: Future = getattr(written, "upload_completion", written)  # response or Future
    if BACKGROUND.pool is None:
        BACKGROUND.pool = ThreadPoolExecutor(1, thread_name_prefix="saturn-ckpt")
    BACKGROUND.pending = BACKGROUND.pool.submit(_finish, upload, tmp, final, ckpt_dir, meta, keep,
                                                rank() == 0)
    return final


def save_staged(state: dict[str, Any], tmp: str, final: str, ckpt_dir: str, meta: dict[str, Any],
                 keep: int) -> Optional[str]:
    """Copy `state` into a staging buffer (waiting while the node's budget is full) and queue its
    drain; the final path, or None when it cannot be staged (bigger than the whole budget)."""
    t0 = time.perf_counter()
    area = DRAINS.staging_area()
    need = staging.nbytes_of(state)
    buf, waited = area.acquire(need)
    if buf is None:
        return None
    try:
        host = staging.copy_into(state, buf)
    except BaseException:
        area.release(buf)
        raise
    block = time.perf_counter() - t0
    DRAINS.last = {"block_s": round(block, 6), "budget_wait_s": round(waited, 6), "bytes": float(need)}
    meta = {**meta, "save_block_s": round(block, 6), "budget_wait_s": round(waited, 6)}
    DRAINS.notify({"event": "draining", "path": final})
    if DRAINS.pool is None:
        DRAINS.pool = ThreadPoolExecutor(1, thread_name_prefix="saturn-drain")
    with DRAINS.lock:
        for p in [p for p, f in DRAINS.futures.items() if f.done() and f.exception() is None]:
            del DRAINS.futures[p]  # published (a failed one stays, for wait_drains to report)
        DRAINS.futures[final] = DRAINS.pool.submit(_drain, host, buf, tmp, final, ckpt_dir, meta, keep)
    return final


def _drain(host: dict[str, Any], buf: Any, tmp: str, final: str, ckpt_dir: str, meta: dict[str, Any],
           keep: int) -> str:
    """Write a staged save, fsync and publish it; free its buffer; tell the listener."""
    t0 = time.perf_counter()
    ok, error = False, ""
    try:
        time.sleep(test_drain_delay(int(meta.get("step", 0))))
        os.makedirs(ckpt_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        writer = FileSystemWriter(tmp, thread_count=DRAIN_THREADS)  # several files in parallel
        dcp.save(staging.exact_views(host), storage_writer=writer, no_dist=True)
        publish(tmp, final, ckpt_dir, {**meta, "drain_s": round(time.perf_counter() - t0, 6)}, keep)
        ok = True
        return final
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        del host
        DRAINS.staging_area().release(buf)
        DRAINS.notify({"event": "drained", "path": final, "ok": ok, "error": error,
                       "drain_s": round(time.perf_counter() - t0, 6)})


def test_drain_delay(step: int) -> float:
    """SATURN_TEST_SLOW_DRAIN_S="SECONDS" or "SECONDS:FROM_STEP": tests slow drains down (all, or
    those of checkpoints at step >= FROM_STEP) to watch what happens while one is written."""
    from saturn.env import test_slow_drains

    raw = test_slow_drains()
    if not raw:
        return 0.0
    secs, _, from_step = raw.partition(":")
    return float(secs) if step >= int(from_step or 0) else 0.0


def _finish(written: Future, tmp: str, final: str, ckpt_dir: str, meta: dict[str, Any],
            keep: int, rank0: bool) -> str:
    written.result()  # rank 0's DCP save ends after every rank's files and the metadata are in
    if rank0:
        publish(tmp, final, ckpt_dir, meta, keep)
    return final

