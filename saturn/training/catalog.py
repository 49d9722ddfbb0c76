"""The checkpoint catalog: which checkpoints a directory holds, whose they are, which is newest and
intact, and how one is published. Torch-free, so the executor, the job runner and reports read
checkpoints without importing torch; writing and reading the tensors is `saturn.training.checkpoint`.

Layout and durability: a save writes `<dir>/tmp-<step>`, then `publish` writes `meta.json` (with
every file's size), fsyncs the directory, renames it to `<dir>/step-<step>`, fsyncs `<dir>`,
atomically moves `<dir>/latest`, and only then deletes older steps (the last `keep` stay). A
checkpoint is a resume point only once published: a kill at any moment leaves the previous one as
the newest intact checkpoint.

Reading trusts nothing: `intact_checkpoints` walks `latest` then the other steps newest-first,
skipping (with a warning) a checkpoint whose `meta.json` is missing or garbled or whose files are
missing or truncated. Given the job's `Owner` (name, definition hash, total steps), a checkpoint
whose meta names another job or definition, or whose step lies outside [0, total steps], is skipped
the same way (#28: a foreign checkpoint copied into a job's directory, or a meta claiming step 10^9,
must neither load nor end the job).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Optional

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
        if name is None:  # a meta must name its job positively: no name is not "this job" (#31)
            return "its meta names no job"
        if str(name) != self.name:
            return f"it belongs to job {name!r}, not {self.name!r}"
        if self.definition is not None:
            theirs = meta.get("definition")
            if theirs is None and isinstance(job, dict):
                try:
                    theirs = definition_hash(job)
                except Exception:  # noqa: BLE001 - an unreadable job dump: not comparable
                    theirs = None
            if theirs is None:
                return f"its meta names no definition of job {self.name!r}"
            if theirs != self.definition:
                return (f"it was written by another definition of job {self.name!r} (definition hash "
                        f"{theirs}, this job's is {self.definition})")
        step = int(meta["step"])
        if self.total_steps is not None and step > self.total_steps:
            return f"its step {step} is past the job's {self.total_steps} steps"
        return None



def latest_checkpoint(ckpt_dir: Optional[str], owner: Optional[Owner] = None) -> Optional[str]:
    """Path of the newest intact checkpoint of `owner` in `ckpt_dir` (see `intact_checkpoints`), or None."""
    for path in intact_checkpoints(ckpt_dir, owner):
        return path
    return None


def refused_checkpoints(ckpt_dir: Optional[str], owner: Owner) -> list[tuple[str, str]]:
    """[(path, why)] of the published checkpoints in `ckpt_dir` that are not `owner`'s, or damaged
    (what `intact_checkpoints` skips), for the executor to report in the run's own output."""
    out: list[tuple[str, str]] = []
    for path in published(ckpt_dir):
        try:
            why = owner.refusal(check_intact(path))
        except CheckpointError as exc:
            why = f"damaged: {exc}"
        if why:
            out.append((path, why))
    return out


def published(ckpt_dir: Optional[str]) -> list[str]:
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
    for path in published(ckpt_dir):
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


def prune(ckpt_dir: str, keep: int, protect: str = "", busy: frozenset | set = frozenset()) -> None:
    steps = sorted(int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(ckpt_dir)) if m)
    for step in steps[:-keep] if keep > 0 else []:
        if f"step-{step}" != protect:
            shutil.rmtree(os.path.join(ckpt_dir, f"step-{step}"), ignore_errors=True)
    for name in os.listdir(ckpt_dir):  # leftovers of crashed saves (not the drains queued here)
        if name.startswith("tmp-") and name not in busy:
            shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    fsync_path(os.path.dirname(path) or ".")


def write_json(path: str, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, default=str))


def publish(tmp: str, final: str, ckpt_dir: str, meta: dict[str, Any], keep: int,
            busy: frozenset | set = frozenset()) -> None:
    """meta.json (with file sizes) -> fsync dir -> rename -> fsync parent -> move latest ->
    prune: a crash between any two leaves the previous checkpoint the newest intact one.
    `busy`: `tmp-N` names of saves still being written, which pruning leaves alone."""
    files = {n: os.path.getsize(os.path.join(tmp, n)) for n in sorted(os.listdir(tmp))}
    for name in files:
        fsync_path(os.path.join(tmp, name))
    write_json(os.path.join(tmp, META_FILE), {**meta, "files": files})
    fsync_path(tmp)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(ckpt_dir)
    atomic_write(os.path.join(ckpt_dir, LATEST_FILE), f"{os.path.basename(final)}\n")
    prune(ckpt_dir, keep, protect=os.path.basename(final), busy=busy)
