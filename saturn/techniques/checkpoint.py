"""Technique-neutral checkpoints: any technique, any process count, resumes any other's checkpoint.

Why neutral: the executor switches a job between techniques and GPU counts when a re-solved plan is
better, so a checkpoint written by FSDP on 2 processes must load into DDP on 1, a pipeline stage,
ZeRO or spilling. We save with `torch.distributed.checkpoint` (DCP), which stores each tensor once
with its global shape and reshards on load, under canonical names:

    {"model": {"layers.3.attn.c_attn.weight": T, ...},             # names of the plain SequentialModel
     "optim": {"state": {"layers.3.attn.c_attn.weight": {"exp_avg": T, "exp_avg_sq": T, "step": T}},
               "param_groups": [{"lr": ..., "params": ["layers.0.wte.weight", ...]}]}}

plus `meta.json` ({"step", "job", "technique", "loss", ...}) beside the DCP files. `get_state_dict`
produces this layout for plain modules, DDP, FSDP2 and activation-checkpointed modules alike;
techniques that hold parameters elsewhere (ZeRO, spilling shards) build the same two dicts
themselves and call `save_state`/`load_state`.

Layout and durability: a save writes `<dir>/tmp-<step>` (DCP files, fsynced by DCP's writer), then
rank 0 writes `meta.json` (with every file's size), fsyncs the directory, renames it to
`<dir>/step-<step>`, fsyncs `<dir>`, atomically moves `<dir>/latest`, and only then deletes older
steps (the last `keep`, default 2, stay). A checkpoint is a resume point only once published: a
kill at any moment leaves the previous one as the newest intact checkpoint.

Off the critical path: inside `in_background()` a save returns once the state is copied into
(on CUDA, pinned) host memory, which is quick; the files are written and published behind.
* One process (world size 1): the copy goes into this process's `staging.StagingArea` (buffers
  reused save after save, budgeted per node: when the budget is full the save waits for a drain)
  and a drain thread writes it with DCP without collectives (`no_dist`), so a drain needs no
  process group and survives the end of the job. A warm worker (`set_drain_behind(True)`) lets
  the *final* save of a run drain too: the job returns with `durable: False` while its
  checkpoint is still written, the worker takes the next job, and reports each drain's end
  through `set_drain_listener`. Elsewhere the final save is synchronous (or waited for before
  the process exits), so a run never returns before its result is durable.
* Several processes: DCP `async_save` with its stager; at most one such save in flight per
  process, its collectives on their own gloo group (created once per process group), never the
  training group. The final save is synchronous.
`wait_pending()` waits for every save in flight; a load waits for the drains of its directory.
A test may slow drains down with SATURN_TEST_SLOW_DRAIN_S (see `_test_drain_delay`).

Loading trusts nothing: `intact_checkpoints` walks `latest` then the other steps newest-first, skipping
(with a warning) a checkpoint whose `meta.json` is missing or garbled or whose files are missing
or truncated; `load_newest` also falls back when DCP cannot read the data. Given the job's `Owner`
(name, definition hash, total steps), a checkpoint whose meta names another job or definition, or
whose step lies outside [0, total steps], is skipped the same way (#28: a foreign checkpoint
copied into a job's directory, or a meta claiming step 10^9, must neither load nor end the job).

All save/load functions are collective when a process group is initialized (every rank calls them);
without one they work in a single process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from saturn.techniques import staging

_STEP_DIR = re.compile(r"^step-(\d+)$")
META_FILE = "meta.json"
LATEST_FILE = "latest"
DRAIN_THREADS = 4  # writer threads of a drain (DCP FileSystemWriter thread_count)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (garbled meta.json, missing or truncated files)."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older intact one."""


@dataclass(frozen=True)
class Owner:
    """The job a checkpoint directory belongs to: only its checkpoints are resumed."""

    name: str
    definition: Optional[str] = None  # saturn.spec.signature.definition_hash; None: not checked
    total_steps: Optional[int] = None  # None: not checked

    @classmethod
    def of(cls, job: Any, total_steps: Optional[int] = None) -> "Owner":
        """The owner for a Job or its `model_dump(mode="json")` (total_steps: the job's, by default)."""
        from saturn.spec.signature import definition_hash

        d = job.model_dump(mode="json") if hasattr(job, "model_dump") else dict(job)
        if total_steps is None:
            total_steps = int(job.total_steps) if hasattr(job, "total_steps") else d.get("steps")
        return cls(str(d["name"]), definition_hash(d), None if total_steps is None else int(total_steps))

    def refusal(self, meta: dict[str, Any]) -> Optional[str]:
        """Why a checkpoint with this meta is not this job's (None: it is)."""
        from saturn.spec.signature import definition_hash

        job = meta.get("job")
        name = job.get("name") if isinstance(job, dict) else job
        if name is not None and str(name) != self.name:
            return f"it belongs to job {name!r}, not {self.name!r}"
        if self.definition is not None:
            theirs = meta.get("definition")
            if theirs is None and isinstance(job, dict):
                try:
                    theirs = definition_hash(job)
                except Exception:  # noqa: BLE001 - an unreadable job dump: not comparable
                    theirs = None
            if theirs is not None and theirs != self.definition:
                return (f"it was written by another definition of job {self.name!r} (definition hash "
                        f"{theirs}, this job's is {self.definition})")
        step = int(meta["step"])
        if self.total_steps is not None and step > self.total_steps:
            return f"its step {step} is past the job's {self.total_steps} steps"
        return None


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def canonical_state(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer]
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model, optimizer) state dicts under canonical FQNs, sharded as they live (DTensors stay
    DTensors, so nothing is gathered). A fresh optimizer's state is materialized (zeros)."""
    opts = StateDictOptions(full_state_dict=False)
    optims = [optimizer] if optimizer is not None else []
    model_sd, optim_sd = get_state_dict(model, optims, options=opts)
    return model_sd, (optim_sd if optimizer is not None else {})


# ------------------------------------------------------------ background (async) saves
class _Background:
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


_BG = _Background()


class _Drains:
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


_DR = _Drains()


def set_drain_behind(on: bool) -> None:
    """Warm workers: the final save of a run drains in the background too (the job returns with
    `durable: False`; the process must stay up until `wait_pending()`)."""
    _DR.behind = bool(on)


def drains_behind() -> bool:
    return _DR.behind


def set_drain_listener(fn: Optional[Callable[[dict[str, Any]], None]]) -> None:
    """Called with {"event": "draining", "path"} when a staged save is queued and {"event":
    "drained", "path", "ok", "drain_s", "error"} when it is published (or failed), from the
    saving thread and the drain thread respectively."""
    _DR.listener = fn


def draining(ckpt_dir: Optional[str] = None) -> list[str]:
    """Final paths of this process's staged saves not yet published (of `ckpt_dir`, or all)."""
    return [p for p, f in _DR.in_flight(ckpt_dir) if not f.done()]


def staged_bytes() -> int:
    """Host bytes this process holds for staging (warm workers leave them out of their leak check)."""
    return _DR.area.held_bytes() if _DR.area is not None else 0


def last_save_cost() -> dict[str, float]:
    """This process's newest staged save: block_s (what the caller waited), budget_wait_s (the
    part spent waiting for the node's staging budget) and bytes (the staging it needed)."""
    return dict(_DR.last)


def prepare_staging(nbytes: int) -> None:
    """Allocate (and page-lock) a staging buffer for saves of `nbytes` bytes in a background
    thread, so the first background save of a process only copies (one process only:
    other saves go through DCP's stager). A buffer that fits already, or a full budget: nothing."""
    if world_size() != 1:
        return

    def run() -> None:
        try:
            area = _DR.staging_area()
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
    for path, fut in _DR.in_flight(ckpt_dir):
        try:
            fut.result()
            newest = path
        except Exception as exc:  # noqa: BLE001 - reported by the drain itself
            warnings.warn(f"background checkpoint {path} was not written ({type(exc).__name__}: "
                          f"{exc}); the previous checkpoint stays the resume point",
                          CheckpointWarning, stacklevel=2)
        with _DR.lock:
            _DR.futures.pop(path, None)
    return newest


@contextlib.contextmanager
def in_background() -> Iterator[None]:
    """Saves started inside return once staged; bytes are written and published behind."""
    prev = getattr(_BG.enabled, "on", False)
    _BG.enabled.on = True
    try:
        yield
    finally:
        _BG.enabled.on = prev


def wait_pending() -> Optional[str]:
    """Block until this process's background saves are written and published; the newest path
    (None if none or it failed). A failed background save is reported as a warning (the previous
    checkpoint stays newest)."""
    drained = wait_drains()
    return _wait_async() or drained


def _wait_async() -> Optional[str]:
    fut, _BG.pending = _BG.pending, None
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
    _wait_async()
    if _BG.stager is not None:
        _BG.stager.close()
        _BG.stager = None
    if not _DR.behind:
        wait_drains()
        if _DR.area is not None:
            _DR.area.close()


def save_state(ckpt_dir: str, step: int, model_sd: dict[str, Any], optim_sd: dict[str, Any],
               meta: dict[str, Any], keep: int = 2) -> str:
    """Write {"model", "optim"} + meta.json as `<ckpt_dir>/step-<step>` and publish it
    (collective). Inside `in_background()` returns once the state is staged, before it is
    durable; otherwise returns once published. Returns the checkpoint's final path."""
    _wait_async()
    tmp = os.path.join(ckpt_dir, f"tmp-{step}")
    final = os.path.join(ckpt_dir, f"step-{step}")
    state: dict[str, Any] = {"model": model_sd}
    if optim_sd:
        state["optim"] = optim_sd
    if getattr(_BG.enabled, "on", False) and world_size() == 1 and not _has_dtensor(state):
        staged = _save_staged(state, tmp, final, ckpt_dir, {**meta, "step": int(step)}, keep)
        if staged is not None:
            return staged
    wait_drains(ckpt_dir)  # a synchronous save publishes after the staged ones of its directory
    if _rank() == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    meta = {**meta, "step": int(step)}
    if getattr(_BG.enabled, "on", False) and not _BG.broken:
        group = _BG.group_for()
        try:
            written: Any = dcp.async_save(state, checkpoint_id=tmp, process_group=group,
                                          async_stager=_BG.stager_for())
        except Exception as exc:  # noqa: BLE001 - staging failed: save synchronously instead
            # Seen on an H200 (torch 2.11): DefaultStager's deep copy raised KeyError(<class 'type'>)
            # on a later save of a job. A periodic save must never fail the job: this process
            # saves synchronously from now on (slower, equally durable).
            warnings.warn(f"background checkpoint staging failed ({type(exc).__name__}: {exc}); "
                          "saving synchronously from now on", CheckpointWarning, stacklevel=2)
            _BG.broken = True
            release_staging()
            return save_state(ckpt_dir, step, model_sd, optim_sd, meta, keep)
        upload: Future = getattr(written, "upload_completion", written)  # response or Future
        if _BG.pool is None:
            _BG.pool = ThreadPoolExecutor(1, thread_name_prefix="saturn-ckpt")
        rank0 = _rank() == 0
        _BG.pending = _BG.pool.submit(_finish, upload, tmp, final, ckpt_dir, meta, keep, rank0)
        return final
    dcp.save(state, checkpoint_id=tmp)
    _barrier()
    if _rank() == 0:
        _publish(tmp, final, ckpt_dir, meta, keep)
    _barrier()
    return final


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _has_dtensor(state: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(t, DTensor) for t in staging.tensors_of(state))


def _save_staged(state: dict[str, Any], tmp: str, final: str, ckpt_dir: str, meta: dict[str, Any],
                 keep: int) -> Optional[str]:
    """Copy `state` into a staging buffer (waiting while the node's budget is full) and queue its
    drain; the final path, or None when it cannot be staged (bigger than the whole budget)."""
    t0 = time.perf_counter()
    area = _DR.staging_area()
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
    _DR.last = {"block_s": round(block, 6), "budget_wait_s": round(waited, 6), "bytes": float(need)}
    meta = {**meta, "save_block_s": round(block, 6), "budget_wait_s": round(waited, 6)}
    _DR.notify({"event": "draining", "path": final})
    if _DR.pool is None:
        _DR.pool = ThreadPoolExecutor(1, thread_name_prefix="saturn-drain")
    with _DR.lock:
        for p in [p for p, f in _DR.futures.items() if f.done() and f.exception() is None]:
            del _DR.futures[p]  # published (a failed one stays, for wait_drains to report)
        _DR.futures[final] = _DR.pool.submit(_drain, host, buf, tmp, final, ckpt_dir, meta, keep)
    return final


def _drain(host: dict[str, Any], buf: Any, tmp: str, final: str, ckpt_dir: str, meta: dict[str, Any],
           keep: int) -> str:
    """Write a staged save, fsync and publish it; free its buffer; tell the listener."""
    t0 = time.perf_counter()
    ok, error = False, ""
    try:
        time.sleep(_test_drain_delay(int(meta.get("step", 0))))
        os.makedirs(ckpt_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        writer = FileSystemWriter(tmp, thread_count=DRAIN_THREADS)  # several files in parallel
        dcp.save(host, storage_writer=writer, no_dist=True)
        _publish(tmp, final, ckpt_dir, {**meta, "drain_s": round(time.perf_counter() - t0, 6)}, keep)
        ok = True
        return final
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        del host
        _DR.staging_area().release(buf)
        _DR.notify({"event": "drained", "path": final, "ok": ok, "error": error,
                    "drain_s": round(time.perf_counter() - t0, 6)})


def _test_drain_delay(step: int) -> float:
    """SATURN_TEST_SLOW_DRAIN_S="SECONDS" or "SECONDS:FROM_STEP": tests slow drains down (all, or
    those of checkpoints at step >= FROM_STEP) to watch what happens while one is written."""
    raw = os.environ.get("SATURN_TEST_SLOW_DRAIN_S", "").strip()
    if not raw:
        return 0.0
    secs, _, from_step = raw.partition(":")
    return float(secs) if step >= int(from_step or 0) else 0.0


def _finish(written: Future, tmp: str, final: str, ckpt_dir: str, meta: dict[str, Any],
            keep: int, rank0: bool) -> str:
    written.result()  # rank 0's DCP save ends after every rank's files and the metadata are in
    if rank0:
        _publish(tmp, final, ckpt_dir, meta, keep)
    return final


def _publish(tmp: str, final: str, ckpt_dir: str, meta: dict[str, Any], keep: int) -> None:
    """meta.json (with file sizes) -> fsync dir -> rename -> fsync parent -> move latest ->
    prune: a crash between any two leaves the previous checkpoint the newest intact one."""
    files = {n: os.path.getsize(os.path.join(tmp, n)) for n in sorted(os.listdir(tmp))}
    for name in files:
        _fsync_path(os.path.join(tmp, name))
    _write_json(os.path.join(tmp, META_FILE), {**meta, "files": files})
    _fsync_path(tmp)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_path(ckpt_dir)
    _atomic_write(os.path.join(ckpt_dir, LATEST_FILE), f"{os.path.basename(final)}\n")
    _prune(ckpt_dir, keep, protect=os.path.basename(final),
           busy={os.path.basename(p).replace("step-", "tmp-") for p in draining(ckpt_dir)})


def save_checkpoint(ckpt_dir: str, step: int, model: torch.nn.Module,
                    optimizer: Optional[torch.optim.Optimizer], meta: dict[str, Any],
                    keep: int = 2) -> str:
    """Checkpoint a plain / DDP / FSDP2 / pipeline-stage model and its optimizer (collective).

    `step` is the next step to run (the data position), so resuming continues exactly there."""
    model_sd, optim_sd = canonical_state(model, optimizer)
    return save_state(ckpt_dir, step, model_sd, optim_sd, meta, keep)


# --------------------------------------------------------------------------------- loading
def load_state(path: str, model_sd: dict[str, Any], optim_sd: Optional[dict[str, Any]]) -> dict:
    """Fill `model_sd`/`optim_sd` in place from checkpoint `path` (DCP reshards to their layout:
    pass DTensors to get shards, plain tensors to get full tensors, a subset of keys to get only
    those). Returns the meta dict."""
    _wait_async()
    wait_drains(os.path.dirname(os.path.normpath(path)))
    meta = read_meta(path)
    state: dict[str, Any] = {"model": model_sd}
    if optim_sd:  # per-parameter state only: param_groups (hyperparameters, and which FQNs this
        # rank holds) stay those of the live optimizer, so a pipeline stage or a differently
        # sharded optimizer never receives another rank's parameter list
        state["optim"] = {"state": optim_sd.get("state", {})}
    dcp.load(state, checkpoint_id=path)
    if optim_sd:
        optim_sd["state"] = state["optim"]["state"]
    return meta


def load_checkpoint(path: str, model: torch.nn.Module,
                    optimizer: Optional[torch.optim.Optimizer]) -> dict[str, Any]:
    """Load checkpoint `path` into a plain / DDP / FSDP2 / pipeline-stage model and optimizer
    (collective). Returns its meta; `meta["step"]` is the step to resume at."""
    model_sd, optim_sd = canonical_state(model, optimizer)
    meta = load_state(path, model_sd, optim_sd)
    optims = [optimizer] if optimizer is not None else []
    set_state_dict(model, optims, model_state_dict=model_sd,
                   optim_state_dict=optim_sd if optimizer is not None else {},
                   options=StateDictOptions(full_state_dict=False))
    return meta


def load_newest(ckpt_dir: Optional[str], load: Callable[[str], dict[str, Any]], owner: Optional[Owner] = None
                ) -> tuple[Optional[str], Optional[dict[str, Any]]]:
    """Load the newest checkpoint of `owner` that loads: (path, meta), or (None, None) when there is
    none. A damaged one is skipped with a CheckpointWarning (collective: DCP raises on every rank)."""
    if ckpt_dir:
        wait_drains(ckpt_dir)  # this process's saves of the directory are published first
    for path in intact_checkpoints(ckpt_dir, owner):
        try:
            return path, load(path)
        except (Exception, CheckpointException) as exc:  # noqa: BLE001 - unreadable: try older
            warnings.warn(f"checkpoint {path} cannot be loaded ({type(exc).__name__}: "
                          f"{str(exc)[:300]}); falling back to an older one", CheckpointWarning,
                          stacklevel=2)
    return None, None


def latest_checkpoint(ckpt_dir: Optional[str], owner: Optional[Owner] = None) -> Optional[str]:
    """Path of the newest intact checkpoint of `owner` in `ckpt_dir` (see `intact_checkpoints`), or None."""
    for path in intact_checkpoints(ckpt_dir, owner):
        return path
    return None


def refused_checkpoints(ckpt_dir: Optional[str], owner: Owner) -> list[tuple[str, str]]:
    """[(path, why)] of the published checkpoints in `ckpt_dir` that are not `owner`'s, or damaged
    (what `intact_checkpoints` skips), for the executor to report in the run's own output."""
    out: list[tuple[str, str]] = []
    for path in _published(ckpt_dir):
        try:
            why = owner.refusal(check_intact(path))
        except CheckpointError as exc:
            why = f"damaged: {exc}"
        if why:
            out.append((path, why))
    return out


def _published(ckpt_dir: Optional[str]) -> list[str]:
    """`step-N` directories of `ckpt_dir`, the `latest` target first, then by decreasing N."""
    if not ckpt_dir or not os.path.isdir(ckpt_dir):
        return []
    names: list[str] = []
    try:
        with open(os.path.join(ckpt_dir, LATEST_FILE)) as f:
            pointed = f.read().strip()
        if _STEP_DIR.match(pointed):
            names.append(pointed)
    except OSError:
        pass
    steps = sorted((int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(ckpt_dir)) if m),
                   reverse=True)
    names += [f"step-{s}" for s in steps if f"step-{s}" not in names]
    return [os.path.join(ckpt_dir, n) for n in names if os.path.isdir(os.path.join(ckpt_dir, n))]


def intact_checkpoints(ckpt_dir: Optional[str], owner: Optional[Owner] = None) -> Iterator[str]:
    """Published checkpoints that look intact, newest first: the `latest` target, then every
    `step-N` by decreasing N. Damaged ones, and with `owner` those not its own, are skipped with a
    CheckpointWarning."""
    for path in _published(ckpt_dir):
        try:
            meta = check_intact(path)
        except CheckpointError as exc:
            warnings.warn(f"skipping damaged checkpoint: {exc}", CheckpointWarning, stacklevel=2)
            continue
        why = owner.refusal(meta) if owner is not None else None
        if why:
            warnings.warn(f"skipping checkpoint {path}: {why}", CheckpointWarning, stacklevel=2)
            continue
        yield path


def check_intact(path: str) -> dict[str, Any]:
    """meta.json parses to an object with an integer step, and every file it lists is there with
    its recorded size (checkpoints written before sizes were recorded: not checked). Its meta."""
    meta = read_meta(path)
    for name, size in (meta.get("files") or {}).items():
        fpath = os.path.join(path, name)
        if not os.path.exists(fpath):
            raise CheckpointError(f"{path}: file {name} is missing")
        if os.path.getsize(fpath) != int(size):
            raise CheckpointError(f"{path}: file {name} has {os.path.getsize(fpath)} bytes, "
                                  f"{size} were written (truncated or overwritten)")
    return meta


def read_meta(path: str) -> dict[str, Any]:
    """The checkpoint's meta.json; CheckpointError (naming the file) if missing or garbled."""
    fpath = os.path.join(path, META_FILE)
    try:
        with open(fpath) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{fpath} is missing (an unpublished checkpoint)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{fpath} is not readable JSON ({exc}); the checkpoint is "
                              "skipped, delete the directory to silence this") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or meta["step"] < 0:
        raise CheckpointError(f"{fpath} has no non-negative integer 'step'; the checkpoint is "
                              "skipped, delete the directory to silence this")
    return meta


def _prune(ckpt_dir: str, keep: int, protect: str = "", busy: frozenset | set = frozenset()) -> None:
    steps = sorted(int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(ckpt_dir)) if m)
    for step in steps[:-keep] if keep > 0 else []:
        if f"step-{step}" != protect:
            shutil.rmtree(os.path.join(ckpt_dir, f"step-{step}"), ignore_errors=True)
    for name in os.listdir(ckpt_dir):  # leftovers of crashed saves (not the drains queued here)
        if name.startswith("tmp-") and name not in busy:
            shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    _fsync_path(os.path.dirname(path) or ".")


def _write_json(path: str, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, indent=1, default=str))
