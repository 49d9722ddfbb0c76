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

Layout (atomic): write `<dir>/tmp-<step>`, rename to `<dir>/step-<step>`, then point `<dir>/latest`
at it (write-then-rename). A crash at any moment leaves the previous checkpoint loadable. The last
`keep` (default 2) checkpoints are kept.

All save/load functions are collective when a process group is initialized (every rank calls them);
without one they work in a single process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                     set_state_dict)

_STEP_DIR = re.compile(r"^step-(\d+)$")
META_FILE = "meta.json"
LATEST_FILE = "latest"


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


def save_state(ckpt_dir: str, step: int, model_sd: dict[str, Any], optim_sd: dict[str, Any],
               meta: dict[str, Any], keep: int = 2) -> str:
    """Write {"model", "optim"} + meta.json atomically as `<ckpt_dir>/step-<step>`; its path."""
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
    dcp.save(state, checkpoint_id=tmp)
    _barrier()
    if _rank() == 0:
        _write_json(os.path.join(tmp, META_FILE), {**meta, "step": int(step)})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _atomic_write(os.path.join(ckpt_dir, LATEST_FILE), f"step-{step}\n")
        _prune(ckpt_dir, keep)
    _barrier()
    return final


def save_checkpoint(ckpt_dir: str, step: int, model: torch.nn.Module,
                    optimizer: Optional[torch.optim.Optimizer], meta: dict[str, Any],
                    keep: int = 2) -> str:
    """Checkpoint a plain / DDP / FSDP2 / pipeline-stage model and its optimizer (collective).

    `step` is the next step to run (the data position), so resuming continues exactly there."""
    model_sd, optim_sd = canonical_state(model, optimizer)
    return save_state(ckpt_dir, step, model_sd, optim_sd, meta, keep)


def load_state(path: str, model_sd: dict[str, Any], optim_sd: Optional[dict[str, Any]]) -> dict:
    """Fill `model_sd`/`optim_sd` in place from checkpoint `path` (DCP reshards to their layout:
    pass DTensors to get shards, plain tensors to get full tensors, a subset of keys to get only
    those). Returns the meta dict."""
    state: dict[str, Any] = {"model": model_sd}
    if optim_sd:  # per-parameter state only: param_groups (hyperparameters, and which FQNs this
        # rank holds) stay those of the live optimizer, so a pipeline stage or a differently
        # sharded optimizer never receives another rank's parameter list
        state["optim"] = {"state": optim_sd.get("state", {})}
    dcp.load(state, checkpoint_id=path)
    if optim_sd:
        optim_sd["state"] = state["optim"]["state"]
    return read_meta(path)


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


def latest_checkpoint(ckpt_dir: Optional[str]) -> Optional[str]:
    """Path of the newest complete checkpoint in `ckpt_dir`, or None. Trusts the `latest` pointer,
    falling back to the highest complete `step-N` (one with meta.json) if the pointer is stale."""
    if not ckpt_dir or not os.path.isdir(ckpt_dir):
        return None
    try:
        with open(os.path.join(ckpt_dir, LATEST_FILE)) as f:
            name = f.read().strip()
        if name and os.path.exists(os.path.join(ckpt_dir, name, META_FILE)):
            return os.path.join(ckpt_dir, name)
    except OSError:
        pass
    steps = sorted(_complete_steps(ckpt_dir))
    return os.path.join(ckpt_dir, f"step-{steps[-1]}") if steps else None


def read_meta(path: str) -> dict[str, Any]:
    with open(os.path.join(path, META_FILE)) as f:
        return json.load(f)


def _complete_steps(ckpt_dir: str) -> list[int]:
    out = []
    for name in os.listdir(ckpt_dir):
        m = _STEP_DIR.match(name)
        if m and os.path.exists(os.path.join(ckpt_dir, name, META_FILE)):
            out.append(int(m.group(1)))
    return out


def _prune(ckpt_dir: str, keep: int) -> None:
    for step in sorted(_complete_steps(ckpt_dir))[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(ckpt_dir, f"step-{step}"), ignore_errors=True)
    for name in os.listdir(ckpt_dir):  # leftovers of crashed saves
        if name.startswith("tmp-"):
            shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)


def _atomic_write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def _write_json(path: str, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, indent=1, default=str))
