"""The training loop every technique shares, so that techniques differ only in how one step runs.

A technique's worker builds a `Trainable` (its per-step function plus checkpoint save/load) and
hands it to `train`, which owns everything else and therefore behaves identically for all
techniques: which samples a step reads (the data position is the step number, see
`saturn.zoo.data`), the seeded model init, warm-up and timing, loss reporting, peak memory, and
graceful stop (SIGTERM -> finish the current step -> checkpoint -> status "interrupted").

    trainable = Trainable.for_module(model, optimizer, step_fn, dp_rank=r, dp_world=w)
    result = train(job, trainable, ctx, mode="run", start_step=0, num_steps=100,
                   checkpoint_dir="runs/job/ckpt", technique="ddp")

`worker_entry` is the launch target that ties it together for the built-in techniques: it imports
the payload's `builder` ("pkg.module:function", called as builder(job, knobs, ctx) -> Trainable),
resumes from the newest checkpoint and calls `train`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from saturn.techniques import checkpoint as ckpt

StepFn = Callable[[torch.Tensor, torch.Tensor], Optional[torch.Tensor]]


@dataclass
class Trainable:
    """One technique's model, ready to train on this rank.

    step_fn(inputs, targets): one full optimizer step on this rank's slice of the global batch;
        returns this rank's loss (a detached scalar tensor), or None where the rank has no loss
        (e.g. a middle pipeline stage).
    save(ckpt_dir, step, meta) -> path and load(path) -> meta: technique-neutral checkpointing
        (collective); `for_module` fills them in for modules `get_state_dict` understands.
    dp_rank/dp_world: which slice of the global batch this rank reads (pipeline stages: 0/1).
    loss_weight: this rank's weight in the reported loss, which is sum(weight * loss) over ranks
        (1/dp_world for data parallelism; 1 on the last pipeline stage, 0 elsewhere).
    """

    step_fn: StepFn
    save: Callable[[str, int, dict[str, Any]], str]
    load: Callable[[str], dict[str, Any]]
    device: torch.device
    dp_rank: int = 0
    dp_world: int = 1
    loss_weight: float = 1.0
    dataset: Any = None  # the job's dataset (training.build_dataset); train() reads batches from it

    @classmethod
    def for_module(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step_fn: StepFn,
                   device: torch.device, **kw: Any) -> "Trainable":
        return cls(step_fn=step_fn,
                   save=lambda d, s, meta: ckpt.save_checkpoint(d, s, model, optimizer, meta),
                   load=lambda path: ckpt.load_checkpoint(path, model, optimizer),
                   device=device, **kw)


# ---------------------------------------------------------------- building blocks for techniques
def autocast_dtype(job: Any, device_type: str) -> Optional[torch.dtype]:
    """bf16/fp16 autocast on CUDA. On CPU everything runs fp32: CPU slots exist for tests and
    laptops, and fp32 keeps losses comparable across techniques (bf16 CPU autocast is slow and
    several libraries do not support it)."""
    if device_type != "cuda" or job.precision == "fp32":
        return None
    return torch.bfloat16 if job.precision == "bf16" else torch.float16


def autocast(job: Any, device_type: str) -> contextlib.AbstractContextManager:
    dtype = autocast_dtype(job, device_type)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def grad_scaler(job: Any, device_type: str) -> Optional[torch.amp.GradScaler]:
    """fp16 needs loss scaling; bf16/fp32 do not."""
    if autocast_dtype(job, device_type) == torch.float16:
        return torch.amp.GradScaler(device_type)
    return None


def build_optimizer(job: Any, params: Any) -> torch.optim.Optimizer:
    """The job's optimizer (adamw/adam/sgd with its kwargs) over `params`."""
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    return cls[job.optimizer.name](params, **job.optimizer.kwargs())


def build_model(job: Any) -> torch.nn.Module:
    """The job's model with the seeded init on CPU: every technique, rank and process count starts
    from bit-identical weights, which is what makes their loss curves comparable."""
    from saturn.zoo import build_model as zoo_build

    torch.manual_seed(job.seed)
    return zoo_build(job.model, device=torch.device("cpu"))


def build_dataset(job: Any, model: torch.nn.Module) -> torch.utils.data.Dataset:
    from saturn.zoo.data import build_dataset as zoo_dataset

    return zoo_dataset(job.data, job.seq_len, getattr(model, "config", None), seed=job.seed)


def standard_step(model: torch.nn.Module, loss_of: Callable[[Any, Any], torch.Tensor],
                  optimizer: torch.optim.Optimizer, job: Any, device_type: str) -> StepFn:
    """forward + loss under autocast, backward (scaled for fp16), optimizer step: the plain step
    that single-device, DDP and FSDP share."""
    scaler = grad_scaler(job, device_type)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(job, device_type):
            loss = loss_of(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss.detach()

    return step


def apply_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations in backward. The composable API keeps parameter names
    unchanged (checkpoints stay canonical) and composes with fully_shard."""
    from torch.distributed._composable import checkpoint

    for block in model.blocks():
        checkpoint(block)


# --------------------------------------------------------------------------------- the loop
def train(job: Any, trainable: Trainable, ctx: Any, *, mode: str = "run", start_step: int = 0,
          num_steps: int = 1, warmup: int = 2, checkpoint_dir: Optional[str] = None,
          checkpoint_every: int = 0, technique: str = "", knobs: Optional[dict] = None,
          dataset: Optional[torch.utils.data.Dataset] = None,
          metrics_path: Optional[str] = None) -> dict[str, Any]:
    """Run steps [start_step, start_step + num_steps) ("run") or warm-up + num_steps timed steps
    from step 0 ("trial"). Returns a JSON-able dict (meaningful on rank 0):
    status ("ok" for trials, "completed" | "interrupted" for runs), step (next step to run),
    checkpoint, losses [[step, loss]], step_times, step_time_s (median, warm-up excluded),
    peak_mem_gb (max over ranks), startup_s (process launch -> first step done).
    With `metrics_path`, rank 0 appends one JSON line per step ({"step": next step, "loss",
    "step_time_s", "wall"}) so a watcher (the executor, an HPO pruner) sees progress live."""
    dataset = dataset if dataset is not None else trainable.dataset
    if dataset is None:
        raise ValueError("train() needs the job's dataset (Trainable.dataset)")
    total = warmup + num_steps if mode == "trial" else num_steps
    losses, times, startup, stopped = [], [], None, False
    waits: list[float] = []  # data-wait phase: time blocked on the next batch (input-bound steps)
    if metrics_path and ctx.rank == 0 and hasattr(dataset, "attach_job_dir"):  # tuner log (saturn.data)
        dataset.attach_job_dir(os.path.dirname(metrics_path))
    step = start_step
    with ThreadPoolExecutor(1) as pool:  # prefetch the next batch while this step computes
        fetch = lambda s: pool.submit(_batch, dataset, job, s, trainable)  # noqa: E731
        nxt = fetch(step)
        for i in range(total):
            t0 = time.perf_counter()
            x, y = nxt.result()
            waits.append(time.perf_counter() - t0)
            if i + 1 < total:
                nxt = fetch(step + 1)
            loss, stop = _reduce(trainable.step_fn(x, y), trainable, ctx)
            times.append(time.perf_counter() - t0)
            startup = startup if startup is not None else time.time() - ctx.launch_time
            losses.append([step, loss])
            step += 1
            if metrics_path and mode == "run" and ctx.rank == 0:
                _append_metrics(metrics_path, step, loss, times[-1], waits[-1])
            if mode == "run" and checkpoint_every and step % checkpoint_every == 0 and i + 1 < total:
                _save(trainable, checkpoint_dir, step, job, technique, knobs, loss)
            if stop and mode == "run":
                stopped = True
                break
    path = _save(trainable, checkpoint_dir, step, job, technique, knobs,
                 losses[-1][1] if losses else None) if mode == "run" else None
    timed = times[warmup:] if mode == "trial" else times[1:] or times
    timed_waits = waits[warmup:] if mode == "trial" else waits[1:] or waits
    status = "ok" if mode == "trial" else ("interrupted" if stopped else "completed")
    return {"status": status, "step": step, "checkpoint": path, "losses": losses,
            "step_times": timed, "step_time_s": statistics.median(timed) if timed else None,
            "peak_mem_gb": _peak_mem_gb(ctx), "startup_s": startup,
            "data_wait_s": statistics.median(timed_waits) if timed_waits else None}


def _append_metrics(path: str, step: int, loss: float, step_time_s: float, data_wait_s: float = 0.0) -> None:
    """One line per step, flushed at once; O_APPEND keeps concurrent lines whole. data_wait_s: the
    part of step_time_s spent waiting for the batch (the goodput breakdown's data-wait phase)."""
    line = json.dumps({"step": step, "loss": loss, "step_time_s": round(step_time_s, 6),
                       "data_wait_s": round(data_wait_s, 6), "wall": time.time()}) + "\n"
    with open(path, "a") as f:
        f.write(line)


def _batch(dataset: Any, job: Any, step: int, t: Trainable) -> tuple[torch.Tensor, torch.Tensor]:
    from saturn.zoo.data import batch_for_step

    x, y = batch_for_step(dataset, step, job.batch_size, t.dp_rank, t.dp_world)
    return x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)


def _reduce(local: Optional[torch.Tensor], t: Trainable, ctx: Any) -> tuple[float, bool]:
    """One all-reduce per step gives the global-batch loss and whether any rank got SIGTERM (all
    ranks must stop after the same step, or the stopped ones would leave the others hanging)."""
    value = float(local.float().item()) * t.loss_weight if local is not None else 0.0
    buf = torch.tensor([value, 1.0 if ctx.stop_requested() else 0.0], dtype=torch.float64,
                       device=t.device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(buf)
    return float(buf[0]), bool(buf[1] > 0)


def _save(t: Trainable, ckpt_dir: Optional[str], step: int, job: Any, technique: str,
          knobs: Optional[dict], loss: Optional[float]) -> Optional[str]:
    if not ckpt_dir:
        return None
    meta = {"job": job.model_dump(mode="json"), "technique": technique, "knobs": knobs or {},
            "loss": loss, "world_size": dist.get_world_size() if dist.is_initialized() else 1}
    return t.save(ckpt_dir, step, meta)


def _peak_mem_gb(ctx: Any) -> float:
    """Peak CUDA memory allocated (GPU) or peak RSS (CPU) of this rank, max over ranks."""
    if ctx.device_type == "cuda":
        gb = torch.cuda.max_memory_allocated(ctx.device) / 2**30
    else:
        gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    buf = torch.tensor([gb], dtype=torch.float64, device=ctx.device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return round(float(buf[0]), 4)


# ------------------------------------------------------------------------- launch target
def worker_entry(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Launch target for built-in techniques. Payload keys: job (Job.model_dump()), builder
    ("pkg.module:function"), knobs, mode ("trial" | "run"), start_step, num_steps, warmup,
    checkpoint_dir, checkpoint_every, technique."""
    from saturn.spec.schema import Job

    job = Job.model_validate(payload["job"])
    knobs = dict(payload.get("knobs") or {})
    module, _, attr = payload["builder"].partition(":")
    trainable = getattr(importlib.import_module(module), attr)(job, knobs, ctx)
    mode = payload.get("mode", "run")
    start, num = int(payload.get("start_step", 0)), int(payload.get("num_steps", 1))
    end = start + num
    ckpt_dir = payload.get("checkpoint_dir") if mode == "run" else None
    resumed = ckpt.latest_checkpoint(ckpt_dir)
    if resumed:
        start = int(trainable.load(resumed)["step"])
    if mode == "run" and start >= end:
        return {"status": "completed", "step": start, "checkpoint": resumed, "losses": []}
    num = end - start if mode == "run" else num
    return train(job, trainable, ctx, mode=mode, start_step=start if mode == "run" else 0,
                 num_steps=num, warmup=int(payload.get("warmup", 2)), checkpoint_dir=ckpt_dir,
                 checkpoint_every=int(payload.get("checkpoint_every", 0)),
                 technique=payload.get("technique", ""), knobs=knobs,
                 metrics_path=payload.get("metrics_path"))
