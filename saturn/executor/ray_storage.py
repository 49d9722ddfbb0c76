"""Checkpoint storage every Ray node can read: a shared path, or an fsspec URL (s3://, gs://...).

Uploads are ordered so that a reader never trusts a partial checkpoint: files, then `meta.json`,
then the `latest` pointer. Used by the per-attempt code on the nodes (`ray_actor`) and by the
driver (`ray_backend`) to find the newest checkpoint of a lost attempt.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from saturn.executor.backends.process import latest_checkpoint_step


def is_url(path: Optional[str]) -> bool:
    return bool(path) and "://" in str(path)


def join_url(root: str, *parts: str) -> str:
    if is_url(root):
        return "/".join([root.rstrip("/")] + [p.strip("/") for p in parts])
    return str(Path(root, *parts))


def _fs(url: str):
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise RuntimeError(f"checkpoint_root {url!r} is a URL: pip install fsspec (and its s3fs/gcsfs...)") from exc
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def latest_in_store(ckpt: str) -> tuple[Optional[int], Optional[str]]:
    """(step, path) of the newest complete checkpoint under `ckpt` (a path or an fsspec URL)."""
    if not is_url(ckpt):
        return latest_checkpoint_step(Path(ckpt))
    try:
        fs, root = _fs(ckpt)
        name = None
        if fs.exists(f"{root}/latest"):
            name = fs.cat_file(f"{root}/latest").decode().strip()
            if not (name and fs.exists(f"{root}/{name}/meta.json")):
                name = None
        if name is None:
            steps = []
            for p in fs.ls(root, detail=False) if fs.exists(root) else []:
                base = p.rstrip("/").rsplit("/", 1)[-1]
                if base.startswith("step-") and base[5:].isdigit() and fs.exists(f"{p}/meta.json"):
                    steps.append(int(base[5:]))
            name = f"step-{max(steps)}" if steps else None
        if name is None:
            return None, None
        meta = json.loads(fs.cat_file(f"{root}/{name}/meta.json"))
        return int(meta["step"]), join_url(ckpt, name)
    except (OSError, ValueError, KeyError):
        return None, None


def download_latest(url: str, local_dir: str) -> Optional[int]:
    """Copy the newest checkpoint at `url` into `local_dir` (as step-N + `latest`); its step."""
    step, src = latest_in_store(url)
    if step is None:
        return None
    assert src is not None  # a step always comes with its path
    fs, _ = _fs(url)
    name = src.rstrip("/").rsplit("/", 1)[-1]
    os.makedirs(local_dir, exist_ok=True)
    dst = os.path.join(local_dir, name)
    shutil.rmtree(dst, ignore_errors=True)
    fs.get(_fs(src)[1].rstrip("/") + "/", dst + "/", recursive=True)
    with open(os.path.join(local_dir, "latest"), "w") as f:
        f.write(name)
    return step


def upload_checkpoint(local_path: str, url: str, keep: int = 2) -> str:
    """Upload one local `step-N` directory under `url`; meta.json last, then the `latest` pointer
    (what `latest_checkpoint` trusts), so readers never see a partial checkpoint. Returns its URL."""
    fs, root = _fs(url)
    name = os.path.basename(local_path.rstrip("/"))
    dst = f"{root}/{name}"
    files = sorted(str(p.relative_to(local_path)) for p in Path(local_path).rglob("*") if p.is_file())
    for rel in sorted(files, key=lambda r: r == "meta.json"):
        fs.makedirs(os.path.dirname(f"{dst}/{rel}"), exist_ok=True)
        fs.put_file(os.path.join(local_path, rel), f"{dst}/{rel}")
    fs.pipe_file(f"{root}/latest", name.encode())
    try:  # prune older remote checkpoints
        olds = sorted(int(p.rstrip("/").rsplit("-", 1)[-1]) for p in fs.ls(root, detail=False)
                      if p.rstrip("/").rsplit("/", 1)[-1].startswith("step-")
                      and p.rstrip("/").rsplit("-", 1)[-1].isdigit())
        for s in olds[:-keep] if keep > 0 else []:
            if f"step-{s}" != name:
                fs.rm(f"{root}/step-{s}", recursive=True)
    except OSError:
        pass
    return join_url(url, name)
