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

Off the critical path: inside `in_background()` a save is started with DCP `async_save`: tensors
are staged synchronously into (on CUDA, pinned) host memory, which is quick, and the files are
written and published by a background thread while training continues. At most one save is in
flight per process; the next save, a load and `wait_pending()` wait for it. The final save of a
run is synchronous, so a run never returns before its result is durable. Background collectives
use their own gloo group (created once per process group), never the training group.

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
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

_STEP_DIR = re.compile(r"^step-(\d+)$")
META_FILE = "meta.json"
LATEST_FILE = "latest"


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
    """Block until this process's background save (if any) is written and published; its path.
    A failed background save is reported as a warning (the previous checkpoint stays newest)."""
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
    """Wait for the save in flight, then free the pinned staging buffers (end of a job: a warm
    worker must not keep one job's host copies while the next job runs)."""
    wait_pending()
    if _BG.stager is not None:
        _BG.stager.close()
        _BG.stager = None


def save_state(ckpt_dir: str, step: int, model_sd: dict[str, Any], optim_sd: dict[str, Any],
               meta: dict[str, Any], keep: int = 2) -> str:
    """Write {"model", "optim"} + meta.json as `<ckpt_dir>/step-<step>` and publish it
    (collective). Inside `in_background()` returns once the state is staged, before it is
    durable; otherwise returns once published. Returns the checkpoint's final path."""
    wait_pending()
    tmp = os.path.join(ckpt_dir, f"tmp-{step}")
    final = os.path.join(ckpt_dir, f"step-{step}")
    if _rank() == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    state: dict[str, Any] = {"model": model_sd}
    if optim_sd:
        state["optim"] = optim_sd
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
    _prune(ckpt_dir, keep, protect=os.path.basename(final))


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
    wait_pending()
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


def _prune(ckpt_dir: str, keep: int, protect: str = "") -> None:
    steps = sorted(int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(ckpt_dir)) if m)
    for step in steps[:-keep] if keep > 0 else []:
        if f"step-{step}" != protect:
            shutil.rmtree(os.path.join(ckpt_dir, f"step-{step}"), ignore_errors=True)
    for name in os.listdir(ckpt_dir):  # leftovers of crashed saves
        if name.startswith("tmp-"):
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
