"""The training loop every technique shares, so that techniques differ only in how one step runs.

A technique's worker builds a `Trainable` (its per-step function plus checkpoint save/load) and
hands it to `train`, which owns everything else and therefore behaves identically for all
techniques: which samples a step reads (the data position is the step number, see
`saturn.zoo.data`), the seeded model init, warm-up and timing, loss reporting, peak memory, and
graceful stop (SIGTERM -> finish the steps up to the next read-back boundary -> checkpoint ->
status "interrupted"). The step path never synchronizes the host with the device; see
`saturn.training.step_io` for the read-back boundaries that replace per-step `.item()`.

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
import os
import resource
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

from saturn.env import worker_device_type
from saturn.runtime import drain
from saturn.training import catalog, step_io
from saturn.training import checkpoint as ckpt

if TYPE_CHECKING:
    from saturn.zoo.models import SequentialModel

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
    state_bytes: Optional[Callable[[], int]] = None  # staging bytes a save needs (None: unknown)

    @classmethod
    def for_module(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step_fn: StepFn,
                   device: torch.device, **kw: Any) -> "Trainable":
        from saturn.runtime import staging

        return cls(step_fn=step_fn,
                   save=lambda d, s, meta: ckpt.save_checkpoint(d, s, model, optimizer, meta),
                   load=lambda path: ckpt.load_checkpoint(path, model, optimizer),
                   device=device, state_bytes=lambda: staging.nbytes_of(
                       {"model": model.state_dict(), "optim": optimizer.state_dict()["state"]}), **kw)


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


def build_model(job: Any, device: Any = None) -> SequentialModel:
    """The job's model on `device` (default CPU; "meta" = unallocated, then
    `saturn.zoo.init.materialize`) with the one seeded init rule of `saturn.zoo.init`: every
    technique, rank and process count starts from the same weights, which is what makes their
    loss curves comparable and their checkpoints interchangeable. Also seeds the global RNG
    (dropout masks)."""
    from saturn.zoo import build_model as zoo_build

    torch.manual_seed(job.seed)
    device = torch.device(device or "cpu")
    gen = None  # a host-resident model (spilling, CPU offload) of a GPU worker: values made on
    if device.type == "cpu" and worker_device_type() == "cuda" \
            and torch.cuda.is_available():  # its GPU, copied per parameter (rule: any device)
        gen = torch.device("cuda", torch.cuda.current_device())
    return zoo_build(job.model, device=device, seed=job.seed, gen_device=gen)


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


def compile_blocks(model: torch.nn.Module, knobs: dict[str, Any], device_type: str) -> bool:
    """The `compile` knob: `torch.compile` each block in place (`Module.compile`, so parameter
    names and checkpoints stay canonical; one compiled graph reused by every identical block).
    Compilation happens lazily in the first step, so its cost lands in the trial's first step and
    start-up, where the planner counts it. CUDA only: on CPU slots (tests, laptops) the knob is
    accepted and the blocks run eager. Returns whether it compiled."""
    if not knobs.get("compile") or device_type != "cuda":
        return False
    for block in model.blocks():
        block.compile()
    return True


# --------------------------------------------------------------------------------- the loop
READBACK_EVERY = 10  # steps between read-back boundaries (at most)
READBACK_S = 2.0  # ... and at least one boundary every ~2 s of steps (slow steps: every step)


def train(job: Any, trainable: Trainable, ctx: Any, *, mode: str = "run", start_step: int = 0,
          num_steps: int = 1, warmup: int = 2, checkpoint_dir: Optional[str] = None,
          checkpoint_every: int = 0, technique: str = "", knobs: Optional[dict] = None,
          dataset: Optional[torch.utils.data.Dataset] = None,
          metrics_path: Optional[str] = None, readback_every: int = READBACK_EVERY,
          readback_s: float = READBACK_S, measure_checkpoint: bool = False) -> dict[str, Any]:
    """Run steps [start_step, start_step + num_steps) ("run") or warm-up + num_steps timed steps
    from step 0 ("trial"). Returns a JSON-able dict (meaningful on rank 0):
    status ("ok" for trials, "completed" | "interrupted" for runs), step (next step to run),
    checkpoint, losses [[step, loss]], step_times, step_time_s (median, warm-up excluded),
    peak_mem_gb (max over ranks), startup_s (process launch -> first step done), first_step_s
    (the first step alone: lazy initialization and compilation show up here); trials with
    `measure_checkpoint` also checkpoint_s and checkpoint_stage_s (see `_measure_checkpoint`).
    Periodic checkpoints are background saves (staged, then written while steps run); in a warm
    worker the final save of a completed one-process run is one too (`durable` False: the
    checkpoint is still draining). Runs also return `phases` (launch_s: launch -> loop start,
    steps_s, checkpoint_block_s: periodic saves' blocking time, save_block_s: the final save's).

    The step path never waits for the device (see `saturn.training.step_io`): losses, times and
    the stop request are read back at boundaries only, after the first step, then every
    `readback_every` steps (fewer when that would exceed ~`readback_s` seconds), at every
    checkpoint step and at the end. A stop request (SIGTERM) is agreed at the next boundary, so
    every rank stops after the same step. With `metrics_path`, rank 0 appends one JSON line per
    step ({"step": next step, "loss", "step_time_s", "wall"}), flushed and fsync'd at every
    boundary (before any checkpoint), so a watcher sees progress within one interval."""
    dataset = dataset if dataset is not None else trainable.dataset
    if dataset is None:
        raise ValueError("train() needs the job's dataset (Trainable.dataset)")
    if readback_every < 1:
        raise ValueError(f"readback_every must be >= 1, got {readback_every}")
    run = mode == "run"
    total = warmup + num_steps if mode == "trial" else num_steps
    single = not step_io.distributed()
    writer = step_io.MetricsWriter(metrics_path if run and ctx.rank == 0 else None)
    batches = _prefetcher(dataset, job, trainable, start_step + total)
    readback = step_io.ReadBack(trainable.device, trainable.loss_weight)
    losses: list[list] = []
    times: list[float] = []
    startup = first_step = None
    waits: list[float] = []  # data-wait phase: host time blocked on the next batch (input-bound steps)
    if metrics_path and ctx.rank == 0 and hasattr(dataset, "attach_job_dir"):  # tuner log (saturn.data)
        dataset.attach_job_dir(os.path.dirname(metrics_path))
    stopped, step, done = False, start_step, 0
    boundary, planned = 1, 1  # boundaries after step 1, then rank 0's agreed interval
    t_start = time.perf_counter()
    launch_s = max(0.0, time.time() - ctx.launch_time)  # launch -> the loop starts (build, load)
    periodic_block = 0.0  # seconds the loop waited for periodic saves (staging + budget)
    clock = step_io.StepClock(trainable.device)
    try:
        while done < total:
            t_wait = time.perf_counter()
            x, y = batches.get(step)
            waits.append(time.perf_counter() - t_wait)
            readback.add(step, trainable.step_fn(x, y))
            clock.mark_step()
            step, done = step + 1, done + 1
            ckpt_due = bool(run and checkpoint_every and step % checkpoint_every == 0 and done < total)
            if done < min(boundary, total) and not ckpt_due and not (run and single and ctx.stop_requested()):
                continue
            # ---- read-back boundary: the only place the step path waits for the device
            values, stop, agreed = readback.sync(run and ctx.stop_requested(),
                                                 planned if ctx.rank == 0 else 0)
            wall, block = time.time(), clock.read()
            if first_step is None:
                first_step, startup = time.perf_counter() - t_start, time.time() - ctx.launch_time
                if run and checkpoint_dir and trainable.state_bytes is not None and drain.world_size() == 1:
                    drain.prepare_staging(trainable.state_bytes())  # ready by the first save
            _record(values, block, wall, losses, times, writer, waits)
            writer.flush()  # before any checkpoint of these steps
            if run and ctx.rank == 0 and values:  # the job's log (log.txt): losses at each boundary
                print(f"step {step}/{start_step + total}  loss {losses[-1][1]:.4g}  "
                      f"{sum(block) / max(1, len(block)):.3g} s/step", flush=True)
            boundary = done + max(1, agreed)
            planned = step_io.next_interval(times[1:] or times, readback_every, readback_s)
            if run and stop:
                stopped = True
                break
            if ckpt_due:
                t_save = time.perf_counter()
                with drain.in_background():  # staged now, written + published while steps run
                    _save(trainable, checkpoint_dir, step, job, technique, knobs, losses[-1][1])
                periodic_block += time.perf_counter() - t_save
    finally:
        writer.flush()
        batches.close()
    loop_s = time.perf_counter() - t_start
    # The final save: in a warm worker, a completed single-process run only stages it and
    # returns (durable: False); the worker drains it while it takes the next job.
    behind = bool(run and checkpoint_dir and not stopped and drain.drains_behind()
                  and drain.world_size() == 1)
    t_save = time.perf_counter()
    with drain.in_background() if behind else contextlib.nullcontext():
        path = _save(trainable, checkpoint_dir, step, job, technique, knobs,
                     losses[-1][1] if losses else None) if run else None
    durable = not (behind and path in drain.draining(checkpoint_dir))
    phases = {"launch_s": round(launch_s, 4), "steps_s": round(loop_s - periodic_block, 4),
              "checkpoint_block_s": round(periodic_block, 4),
              "save_block_s": round(time.perf_counter() - t_save, 4) if path else 0.0}
    ckpt_cost = _measure_checkpoint(trainable, job, ctx, technique, knobs) \
        if mode == "trial" and measure_checkpoint else {}
    timed = times[warmup:] if mode == "trial" else times[1:] or times
    timed_waits = waits[warmup:] if mode == "trial" else waits[1:] or waits
    status = "ok" if mode == "trial" else ("interrupted" if stopped else "completed")
    return {"status": status, "step": step, "checkpoint": path, "losses": losses,
            "step_times": timed, "step_time_s": statistics.median(timed) if timed else None,
            "peak_mem_gb": _peak_mem_gb(ctx), "host_peak_gb": _host_peak_gb(ctx), "startup_s": startup,
            "first_step_s": round(first_step, 6) if first_step is not None else None,
            "data_wait_s": statistics.median(timed_waits) if timed_waits else None, **ckpt_cost,
            **({"durable": durable, "phases": phases} if run else {})}


def _measure_checkpoint(t: Trainable, job: Any, ctx: Any, technique: str,
                        knobs: Optional[dict]) -> dict[str, float]:
    """A trial's checkpoint cost, for the planner: one background save into a scratch directory,
    timed until staged (`checkpoint_stage_s`, what a periodic save blocks; `checkpoint_gb`: its
    staging bytes, one process only) and until published
    (`checkpoint_s`, what the final save costs). {} if the technique cannot save."""
    import atexit
    import shutil
    import tempfile

    scratch = os.path.join(tempfile.gettempdir(), f"saturn-trial-ckpt-{os.getuid()}-"
                           f"{job.name}-{ctx.launch_time!r}")  # same path on every rank
    try:
        t0 = time.perf_counter()
        with drain.in_background():
            _save(t, scratch, 0, job, technique, knobs, None)
        staged = time.perf_counter() - t0
        staged_bytes = drain.last_save_cost().get("bytes") if drain.world_size() == 1 else None
        if drain.wait_pending() is None:
            return {}
        full = time.perf_counter() - t0
        if dist.is_initialized():
            dist.barrier()
        return {"checkpoint_s": round(full, 4), "checkpoint_stage_s": round(staged, 4),
                **({"checkpoint_gb": round(staged_bytes / 1e9, 4)} if staged_bytes else {})}
    except (Exception, CheckpointException):  # noqa: BLE001 - steps first; the save is a bonus
        return {}
    finally:
        if ctx.rank == 0:  # (again at exit: DCP's writer thread may recreate an empty tmp dir)
            shutil.rmtree(scratch, ignore_errors=True)
            atexit.register(shutil.rmtree, scratch, ignore_errors=True)


def _record(values: list[tuple[int, float]], block: list[float], wall: float, losses: list,
            times: list, writer: step_io.MetricsWriter, waits: list[float]) -> None:
    """Per-step results of one read-back block. A step's wall clock is the boundary's minus the
    durations of the steps after it (exact on CPU, event-timed on CUDA). `waits` holds the host
    time each step waited for its batch (index = position since the loop started)."""
    later = 0.0
    walls = []
    for dt in reversed(block):
        walls.append(wall - later)
        later += dt
    for (s, loss), dt, w in zip(values, block, reversed(walls)):
        losses.append([s, loss])
        i = len(times)
        times.append(dt)
        writer.add(s + 1, loss, dt, w, waits[i] if i < len(waits) else 0.0)


def _prefetcher(dataset: Any, job: Any, t: Trainable, end: int) -> step_io.BatchPrefetcher:
    """Batches of this rank ahead of the step: made on the training device when the dataset can
    (the zoo's synthetic data), built on the host and copied otherwise."""
    from saturn.zoo.data import batch_for_step, made_on_device

    on_device = made_on_device(dataset)
    device = t.device if on_device else None
    return step_io.BatchPrefetcher(
        lambda step: batch_for_step(dataset, step, job.batch_size, t.dp_rank, t.dp_world, device=device),
        t.device, end, on_device=on_device)


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


def _host_peak_gb(ctx: Any) -> float:
    """The job's host peak (saturn.profiles.host_memory): the sum over its ranks, which share a node."""
    from saturn.profiles.host_memory import process_tree_peak_gb

    buf = torch.tensor([process_tree_peak_gb()], dtype=torch.float64, device=ctx.device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(buf)
    return round(float(buf[0]), 4)


# ------------------------------------------------------------------------- launch target
def worker_entry(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Launch target for built-in techniques. Payload keys: job (Job.model_dump()), builder
    ("pkg.module:function"), knobs, mode ("trial" | "run"), start_step, num_steps, warmup,
    checkpoint_dir, checkpoint_every, technique, readback_every."""
    from saturn.spec.schema import Job

    job = Job.model_validate(payload["job"])
    knobs = dict(payload.get("knobs") or {})
    module, _, attr = payload["builder"].partition(":")
    trainable = getattr(importlib.import_module(module), attr)(job, knobs, ctx)
    mode = payload.get("mode", "run")
    start, num = int(payload.get("start_step", 0)), int(payload.get("num_steps", 1))
    end = start + num
    ckpt_dir = payload.get("checkpoint_dir") if mode == "run" else None
    # skips damaged ones and other jobs' (or past-the-end) ones, with a warning
    resumed, meta = ckpt.load_newest(ckpt_dir, trainable.load, catalog.Owner.of(job, end) if mode == "run" else None)
    if resumed and meta is not None:
        start = int(meta["step"])
    if mode == "run" and start >= end:
        return {"status": "completed", "step": start, "checkpoint": resumed, "losses": []}
    num = end - start if mode == "run" else num
    try:
        return train(job, trainable, ctx, mode=mode, start_step=start if mode == "run" else 0,
                     num_steps=num, warmup=int(payload.get("warmup", 2)), checkpoint_dir=ckpt_dir,
                     checkpoint_every=int(payload.get("checkpoint_every", 0)),
                     technique=payload.get("technique", ""), knobs=knobs,
                     metrics_path=payload.get("metrics_path"),
                     readback_every=int(payload.get("readback_every", READBACK_EVERY)),
                     measure_checkpoint=bool(payload.get("measure_checkpoint", True)))
    finally:  # a periodic save in flight completes even if a step raised; staging is freed
        drain.release_staging()
