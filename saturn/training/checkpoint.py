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

The directory layout, publishing and the checks a load trusts nothing without are the torch-free
`saturn.training.catalog`; saves that return before they are durable (`in_background()`) are the
runtime's background drains, `saturn.runtime.drain`. A load waits for the drains of its directory
first; `load_newest` also falls back to an older checkpoint when DCP cannot read the data.

All save/load functions are collective when a process group is initialized (every rank calls them);
without one they work in a single process.
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from saturn.runtime import drain, staging
from saturn.training.catalog import CheckpointWarning, Owner, intact_checkpoints, read_meta


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
    """Write {"model", "optim"} + meta.json as `<ckpt_dir>/step-<step>` and publish it
    (collective). Inside `drain.in_background()` returns once the state is staged, before it is
    durable; otherwise returns once published. Returns the checkpoint's final path."""
    drain.wait_async()
    tmp = os.path.join(ckpt_dir, f"tmp-{step}")
    final = os.path.join(ckpt_dir, f"step-{step}")
    state: dict[str, Any] = {"model": model_sd}
    if optim_sd:
        state["optim"] = optim_sd
    background = drain.background_on()
    if background and drain.world_size() == 1 and not drain.has_dtensor(state):
        staged = drain.save_staged(state, tmp, final, ckpt_dir, {**meta, "step": int(step)}, keep)
        if staged is not None:
            return staged
        # No room to stage (the node's budget or the host's available memory): write from the
        # tensors as they are. Never DCP's stager here: its copy is unbudgeted (issue 33).
        background = False
    drain.wait_drains(ckpt_dir)  # a synchronous save publishes after the staged ones of its directory
    if drain.rank() == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    meta = {**meta, "step": int(step)}
    if background and not drain.BACKGROUND.broken and drain.async_fits(state):
        started = drain.save_async(state, tmp, final, ckpt_dir, meta, keep)
        return started if started is not None else save_state(ckpt_dir, step, model_sd, optim_sd,
                                                               meta, keep)
    dcp.save(staging.exact_views(state), checkpoint_id=tmp)  # views written without a copy
    _barrier()
    if drain.rank() == 0:
        drain.publish(tmp, final, ckpt_dir, meta, keep)
    _barrier()
    return final


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
    drain.wait_async()
    drain.wait_drains(os.path.dirname(os.path.normpath(path)))
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
        drain.wait_drains(ckpt_dir)  # this process's saves of the directory are published first
    for path in intact_checkpoints(ckpt_dir, owner):
        try:
            return path, load(path)
        except (Exception, CheckpointException) as exc:  # noqa: BLE001 - unreadable: try older
            warnings.warn(f"checkpoint {path} cannot be loaded ({type(exc).__name__}: "
                          f"{str(exc)[:300]}); falling back to an older one", CheckpointWarning,
                          stacklevel=2)
    return None, None

