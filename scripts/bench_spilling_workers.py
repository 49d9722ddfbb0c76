"""The measurements of scripts/bench_spilling.py, one per subprocess (`--worker NAME`).

Why a module of its own: every measurement runs in its own process with a timeout (the parent,
bench_spilling.py), so a hang, an OOM or a crash in one (DeepSpeed's JIT build, fairscale at a
cap where it does not fit) is recorded with its cause and the run goes on. A worker reads its
spec (JSON), writes its result JSON after every part it finishes (write-then-rename), so a
worker killed at its timeout still leaves the parts it measured.

Workers: `spilling` (the engine under each knob setting, its compute and transfer bounds, the
host optimizer alone), `deepspeed` (ZeRO-3, parameters and optimizer offloaded to the CPU,
DeepSpeedCPUAdam), `fsdp2` (fully_shard with CPUOffloadPolicy, as Saturn's fsdp technique builds
it), `fairscale` (OffloadModel), `sharp` (SHARP of several models vs the same models spilled one
after another). All use the same model, batch, GPU memory cap and host.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import socket
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------ shared helpers
def write_atomic(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[int], Any], steps: int, warmup: int, device: Any) -> dict[str, Any]:
    """Median seconds of `steps` calls after `warmup` calls (device synchronized around each)."""
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        fn(i)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"status": "ok", "step_time_s": statistics.median(times), "step_times": times}


def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; OOM and crashes become results (with their cause), not a crash."""
    import torch

    print(f"--- {name}", flush=True)
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001
        from saturn.runtime.causes import exception_result

        traceback.print_exc()  # the cause from the exception's type, never its words (#31)
        out = exception_result(exc)
        out["reason"] = out["reason"][:600]
    out["measured_in_s"] = round(time.perf_counter() - t0, 2)  # build included; not a result
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"    {json.dumps({k: v for k, v in out.items() if k != 'step_times'}, default=str)}",
          flush=True)
    return out


def cap_memory(device: Any, cap_gb: Optional[float]) -> None:
    """Cap this process's GPU memory at `cap_gb` (None/0: the whole device)."""
    import torch

    if device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    frac = min(1.0, cap_gb / total) if cap_gb else 1.0
    torch.cuda.set_per_process_memory_fraction(frac, device)


def peak_gb(device: Any) -> Optional[float]:
    import torch

    return (round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
            if device.type == "cuda" else None)


def reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def release_host_cache() -> None:
    """Give cached pinned host blocks back (the next engine's buffers may not reuse them)."""
    import torch

    gc.collect()
    if torch.cuda.is_available() and hasattr(torch._C, "_host_emptyCache"):
        torch._C._host_emptyCache()


def make_job(spec: dict[str, Any], **over: Any) -> Any:
    from saturn.spec.schema import Job

    kw = dict(name="bench", model={"name": spec["model"], "overrides": spec.get("overrides") or {}},
              data="synthetic-tokens", batch_size=spec["batch_size"], seq_len=spec["seq_len"],
              steps=1000, precision=spec["precision"],
              optimizer={"name": "adamw", "lr": 1e-4, "weight_decay": 0.01})
    kw.update(over)
    return Job(**kw)


def batches_for(job: Any, model: Any, device: Any, n: int = 4) -> list[Any]:
    from saturn.training import loop
    from saturn.zoo.data import batch_for_step

    ds = loop.build_dataset(job, model)
    out = [batch_for_step(ds, s, job.batch_size) for s in range(n)]
    if device.type == "cuda":
        out = [(x.pin_memory(), y.pin_memory()) for x, y in out]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_single_process_group(device: Any) -> None:
    """A world of one (DeepSpeed and FSDP2 need a process group even on one GPU)."""
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def host_bytes_per_param(state: str, wire_bf16: bool) -> int:
    """Host memory bytes one host-stepped parameter's optimizer step must read + write.

    fp32 state (torch fused AdamW): param, grad, exp_avg, exp_avg_sq read (16) + param and both
    moments written (12); with a bf16 wire, the gradient upcast before (2 read + 4 write). bf16
    state (one fused pass): fp32 param read + write (8), gradient read (2 bf16 / 4 fp32), both
    bf16 moments read + write (8)."""
    # lean engine (spilling/pool.py): a bf16 wire copy is cast from the masters at each send,
    # twice per step (forward and backward: 2 x (4 read + 2 write)); no refresh after the step
    sends = 12 if wire_bf16 else 0
    if state == "bf16":
        return 8 + (2 if wire_bf16 else 4) + 8 + sends
    return 28 + (6 if wire_bf16 else 0) + sends


# ------------------------------------------------------------------------------ spilling
def worker_spilling(spec: dict[str, Any], out: dict[str, Any], save: Callable[[], None]) -> None:
    """The engine under each knob variant (same model object, re-pointed by each engine), then
    the compute and transfer bounds with the first variant's shards, and the host optimizer
    alone for each state dtype."""
    import torch

    from saturn.techniques.spilling import SpillingEngine, engine_kwargs
    from saturn.training import loop

    device = torch.device(spec["device"], 0) if spec["device"] == "cuda" else torch.device("cpu")
    job = make_job(spec)
    t0 = time.perf_counter()
    model = loop.build_model(job)
    out["build_model_s"] = round(time.perf_counter() - t0, 2)
    out["params"] = sum(p.numel() for p in model.parameters())
    batches = batches_for(job, model, device)
    steps, warmup = spec["steps"], spec["warmup"]
    variants: dict[str, Any] = out.setdefault("variants", {})
    first: dict[str, Any] = {}
    for name, knobs in spec["variants"].items():
        cap_memory(device, spec.get("cap_gb"))
        if knobs.get("optimizer_state") == "bf16" and device.type == "cuda":
            from saturn.techniques.spilling.states import warm_compiled_kernel

            if not warm_compiled_kernel():  # its eager fallback would eat the whole timeout
                variants[name] = {"status": "skipped", "reason": "torch.compile (inductor, C++) "
                                  "failed on this host: the bf16-state update would run as "
                                  "eager ops (several passes), not measured"}
                save()
                continue

        def run(knobs: dict[str, Any] = knobs) -> dict[str, Any]:
            t0 = time.perf_counter()
            eng = SpillingEngine(model, device, **engine_kwargs(job, knobs))
            setup = time.perf_counter() - t0
            for k in eng.timings:
                eng.timings[k] = 0.0
            reset_peak(device)

            def step(i: int) -> None:
                eng.train_step(*batches[i % len(batches)])
                eng.synchronize()  # the last shard's host step is part of the step

            r = timed(step, steps, warmup, device)
            n = steps + warmup
            host_params = sum(p.numel() for k, sh in enumerate(eng.shards)
                              if k not in eng.device_shards for p in sh.params)
            t = eng.transfers
            r.update(setup_s=round(setup, 2), knobs=knobs, shards=len(eng.ranges),
                     ranges=[list(x) for x in eng.ranges], device_shards=list(eng.device_shards),
                     host_stepped_params=host_params, peak_gpu_gb=peak_gb(device),
                     wire_dtype=str(eng.wire_dtype or "fp32"),
                     optimizer_state=eng.optimizer_state,
                     cpu_optimizer_s_per_step=eng.timings["cpu_optimizer_s"] / n,
                     grad_wait_s_per_step=eng.timings["grad_wait_s"] / n,
                     gb_in_per_step=t.bytes_in / max(1, eng.step_count) / 2**30,
                     gb_out_per_step=t.bytes_out / max(1, eng.step_count) / 2**30,
                     compiled_state_kernel=bool(getattr(eng.shards[-1].optimizer, "compiled",
                                                        False)))
            r["host_optimizer_alone"] = host_optimizer_alone(eng)
            r["host_bytes_per_step"] = host_params * host_bytes_per_param(
                eng.optimizer_state, eng.wire_dtype is not None)
            if "compute" not in out:  # the first variant that runs also gives the bounds
                first["engine"] = eng
            else:
                eng.close()
                del eng
                release_host_cache()
            return r

        variants[name] = guarded(f"spilling {name}", run)
        save()
        if first.get("engine") is not None and "compute" not in out:
            cap_memory(device, None)  # the compute bound keeps every shard resident: uncapped
            out["compute"] = guarded("compute bound", functools.partial(
                compute_bound, first["engine"], batches, spec, device))
            save()
            out["transfer"] = guarded("transfer bound", functools.partial(
                transfer_bound, first["engine"], spec, device))
            save()
            first.pop("engine").close()  # its pinned buffers go back before the next variant
            release_host_cache()
    if "compute" not in out:
        out["compute"] = {"status": "failed", "reason": "no spilling variant ran"}


def host_optimizer_alone(eng: Any) -> dict[str, Any]:
    """Seconds for every host-stepped shard's optimizer step back to back, nothing else running
    (the steps as the optimizer thread runs them: land + step + refresh, or one fused pass)."""
    import torch

    eng.synchronize()
    shards = [sh for k, sh in enumerate(eng.shards) if k not in eng.device_shards]

    def once() -> None:
        for sh in shards:
            if sh.pool is not None:  # lean: as the optimizer thread steps it (pool.py)
                sh.grad_landing()
                sh.land_grads()
                sh.optimizer.step()
                sh.done_grads()
            elif getattr(sh.optimizer, "fuses_wire", False):
                sh.optimizer.step()
            else:
                sh.land_grads()
                sh.optimizer.step()
                sh.refresh_wire()

    with torch.no_grad():
        once()
        times = []
        t0 = time.perf_counter()  # one timed pass after one warm pass (time budget)
        once()
        times.append(time.perf_counter() - t0)
    return {"s_per_step": min(times), "threads": torch.get_num_threads()}


def compute_bound(eng: Any, batches: list, spec: dict[str, Any], device: Any) -> dict[str, Any]:
    reset_peak(device)
    eng.train_step(*batches[0], compute_only=True)  # brings every shard in once
    r = timed(lambda i: eng.train_step(*batches[i % len(batches)], compute_only=True),
              spec["steps"], spec["warmup"], device)
    r["peak_gpu_gb"] = peak_gb(device)
    eng.release_kept()
    return r


def transfer_bound(eng: Any, spec: dict[str, Any], device: Any) -> dict[str, Any]:
    """The bytes one spilling step moves, as the engine moves them, one copy after another:
    each streamed shard in once per use (a shard among the next two tasks is kept), every
    streamed shard's gradients out once."""
    import torch

    streamed = [k for k in range(len(eng.shards)) if k not in eng.device_shards]
    uses = [k for k, _ in eng.tasks() if k in streamed]
    uses = [k for i, k in enumerate(uses) if k not in uses[max(0, i - 2):i]]
    def host(k: int) -> list[Any]:  # pinned buffers shaped as what crosses the link for shard k
        sh = eng.shards[k]
        return [torch.empty(g.total, dtype=g.wire, pin_memory=device.type == "cuda") for g in sh.groups]

    bufs = {k: host(k) for k in set(uses) | set(streamed)}
    dev = {k: [torch.empty_like(f, device=device) for f in bufs[k]] for k in bufs}
    in_b = sum(f.numel() * f.element_size() for k in uses for f in bufs[k])
    out_b = sum(f.numel() * f.element_size() for k in streamed for f in bufs[k])

    def h2d() -> None:
        for k in uses:
            for d, h in zip(dev[k], bufs[k]):
                d.copy_(h, non_blocking=True)

    def d2h() -> None:
        for k in streamed:
            for d, h in zip(dev[k], bufs[k]):
                h.copy_(d, non_blocking=True)

    t_in = timed(lambda i: h2d(), spec["steps"], 1, device)["step_time_s"]
    t_out = timed(lambda i: d2h(), spec["steps"], 1, device)["step_time_s"]
    dev.clear()
    bufs.clear()
    return {"status": "ok", "step_time_s": t_in + t_out, "h2d_s": t_in, "d2h_s": t_out,
            "gb_in": in_b / 2**30, "gb_out": out_b / 2**30, "copies_in": len(uses),
            "h2d_gb_s": in_b / 1e9 / t_in, "d2h_gb_s": out_b / 1e9 / t_out}


# ------------------------------------------------------------------------------ baselines
def worker_deepspeed(spec: dict[str, Any], out: dict[str, Any], save: Callable[[], None]) -> None:
    """DeepSpeed ZeRO-3 with parameters and optimizer offloaded to the CPU (DeepSpeedCPUAdam,
    which DeepSpeed builds for an offloaded 'AdamW'), bf16, activation checkpointing per block.
    DeepSpeed without zero.Init first moves the whole (bf16) module to the GPU and partitions it
    after: initialize runs uncapped, the cap is set before the first step (recorded)."""
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # its parser fails on "9.0a"
    import torch

    device = torch.device(spec["device"], 0)

    def run() -> dict[str, Any]:
        torch.cuda.set_device(device)
        init_single_process_group(device)  # inside: a failure here is recorded with its cause
        import deepspeed

        from saturn.training import loop

        job = make_job(spec)
        t0 = time.perf_counter()
        from deepspeed.ops.op_builder import CPUAdamBuilder

        CPUAdamBuilder().load()  # the JIT build, outside the timed steps
        build_s = time.perf_counter() - t0
        model = loop.build_model(job)
        checkpoint_blocks(model)
        batches = batches_for(job, model, device)
        cfg = {"train_batch_size": job.batch_size, "train_micro_batch_size_per_gpu": job.batch_size,
               "gradient_accumulation_steps": 1, "bf16": {"enabled": job.precision == "bf16"},
               "gradient_clipping": 0.0, "steps_per_print": 1 << 30,
               "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.01}},
               "zero_optimization": {
                   "stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                   "offload_param": {"device": "cpu", "pin_memory": True},
                   "offload_optimizer": {"device": "cpu", "pin_memory": True}}}
        engine, opt, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                               config=cfg)
        torch.cuda.empty_cache()
        cap_memory(device, spec.get("cap_gb"))
        reset_peak(device)

        def step(i: int) -> None:
            x, y = batches[i % len(batches)]
            loss = model.loss(engine(x.to(device)), y.to(device))
            engine.backward(loss)
            engine.step()

        r = timed(step, spec["steps"], spec["warmup"], device)
        inner = getattr(opt, "optimizer", opt)  # ZeRO-3 wraps the basic (CPU Adam) optimizer
        r.update(peak_gpu_gb=peak_gb(device), optimizer=type(inner).__name__,
                 cpu_adam_build_s=round(build_s, 1), deepspeed=deepspeed.__version__,
                 cap_set="after deepspeed.initialize (it stages the whole bf16 module on the GPU)",
                 activation_checkpointing=True)
        return r

    out["result"] = guarded("DeepSpeed ZeRO-3 offload", run)
    save()


def checkpoint_blocks(model: Any) -> None:
    """Recompute each block in backward (torch.utils.checkpoint, non-reentrant): what a user
    does to fit activations, and what spilling does per shard."""
    import torch.utils.checkpoint as ck

    for block in model.blocks():
        fwd = block.forward

        def wrapped(*a: Any, _fwd: Any = fwd, **kw: Any) -> Any:
            return ck.checkpoint(_fwd, *a, use_reentrant=False, **kw)

        block.forward = wrapped


def worker_fsdp2(spec: dict[str, Any], out: dict[str, Any], save: Callable[[], None]) -> None:
    """FSDP2 with CPUOffloadPolicy, built by Saturn's fsdp technique (fully_shard per block and
    root, bf16 mixed-precision policy, activation checkpointing), capped from the start."""
    import torch

    from saturn.runtime.worker import WorkerContext
    from saturn.techniques import fsdp

    device = torch.device(spec["device"], 0)

    def run() -> dict[str, Any]:
        torch.cuda.set_device(device)
        init_single_process_group(device)
        cap_memory(device, spec.get("cap_gb"))
        job = make_job(spec)
        ctx = WorkerContext(rank=0, world_size=1, local_rank=0, device_type="cuda",
                            launch_time=time.time())
        knobs = {"cpu_offload": True, "activation_checkpointing": True,
                 "mixed_precision": "policy", "reshard_after_forward": True}
        tr = fsdp.build(job, knobs, ctx)
        from saturn.zoo.data import batch_for_step

        batches = [batch_for_step(tr.dataset, s, job.batch_size) for s in range(4)]
        reset_peak(device)
        r = timed(lambda i: float(tr.step_fn(*(t.to(device) for t in batches[i % 4]))),
                  spec["steps"], spec["warmup"], device)
        r.update(peak_gpu_gb=peak_gb(device), knobs=knobs)
        return r

    out["result"] = guarded("FSDP2 CPU offload", run)
    save()


def worker_fairscale(spec: dict[str, Any], out: dict[str, Any], save: Callable[[], None]) -> None:
    """fairscale OffloadModel over the same layers (num_slices = spilling's shard count,
    checkpoint_activation), the job's optimizer on its CPU parameters, capped."""
    import warnings

    import torch

    from saturn.training import loop

    device = torch.device(spec["device"], 0)
    cap_memory(device, spec.get("cap_gb"))

    def run() -> dict[str, Any]:
        warnings.filterwarnings("ignore", category=FutureWarning)
        from fairscale.experimental.nn.offload import OffloadModel

        job = make_job(spec)
        model = loop.build_model(job)
        batches = batches_for(job, model, device)
        slices = int(spec.get("slices") or 8)
        om = OffloadModel(model=torch.nn.Sequential(*model.layers), device=device,
                          offload_device=torch.device("cpu"), num_slices=slices,
                          checkpoint_activation=True, num_microbatches=1)
        opt = loop.build_optimizer(job, om.parameters())

        def step(i: int) -> None:
            x, y = batches[i % len(batches)]
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=job.precision == "bf16"):
                loss = model.loss(om(x.to(device)), y.to(device))
            loss.backward()
            opt.step()

        reset_peak(device)
        r = timed(step, spec["steps"], spec["warmup"], device)
        r.update(peak_gpu_gb=peak_gb(device), num_slices=slices)
        return r

    out["result"] = guarded("fairscale OffloadModel", run)
    save()


# ------------------------------------------------------------------------------ SHARP
def worker_sharp(spec: dict[str, Any], out: dict[str, Any], save: Callable[[], None]) -> None:
    """SHARP of `sharp_models` models vs the same models spilled one after another (the
    functions of scripts/bench_sharp.py), with `sharp_knobs` (the new knobs) on both sides."""
    import argparse

    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_sharp as bs

    device = torch.device(spec["device"], 0) if spec["device"] == "cuda" else torch.device("cpu")
    ns = argparse.Namespace(model=spec["model"], overrides=json.dumps(spec["sharp_overrides"]),
                            models=spec["sharp_models"], batch_size=spec["batch_size"],
                            seq_len=spec["seq_len"], steps=spec["sharp_steps"],
                            memory_cap_gb=spec.get("cap_gb") or 0.0, device=spec["device"])
    jobs = bs.jobs_for(ns)
    extra = dict(spec.get("sharp_knobs") or {})
    if device.type == "cuda":
        torch.cuda.set_device(device)
        cap_memory(device, spec.get("cap_gb"))
    else:
        torch.set_num_threads(1)
    out["knobs"] = extra
    # process-level first-use costs (CUDA context, cuBLAS, the state kernel's compile) must not
    # land on the first solo run; paid here, not recorded (a whole warm-up model cost 52 s of
    # the 100 s on the GPU run 2026-12-04)
    def warm_up() -> dict[str, Any]:
        from saturn.techniques.spilling.states import warm_compiled_kernel

        compiled = warm_compiled_kernel() if extra.get("optimizer_state") == "bf16" else None
        x = torch.randn(512, 512, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            (x @ x).sum().item()
        return {"status": "ok", "compiled_state_kernel": compiled}

    out["warm_up"] = guarded("warm-up (not recorded)", warm_up)
    save()
    solo: dict[str, Any] = out.setdefault("solo", {})
    for j in jobs:
        solo[j.name] = guarded(f"solo {j.name}", lambda j=j: {
            "status": "ok", **bs.solo(j, {**bs.knobs_for(ns, 1), **extra}, device, ns.steps)})
        save()
    if not all(r.get("status") == "ok" for r in solo.values()):
        out["sharp"] = {"status": "skipped", "reason": "a solo run did not complete"}
        return
    seq = sum(r["wall_s"] for r in solo.values())
    model_steps = ns.steps * len(jobs)
    out["sequential"] = {"wall_s": seq, "throughput_steps_s": model_steps / seq}
    gc.collect()
    if device.type == "cuda" and hasattr(torch._C, "_host_emptyCache"):
        torch._C._host_emptyCache()
    share = 1 if device.type == "cpu" else len(jobs)

    def group() -> dict[str, Any]:
        reset_peak(device)
        r = bs.sharp(jobs, {**bs.knobs_for(ns, share), **extra}, device, ns.steps, 1)
        r["throughput_steps_s"] = model_steps / r["wall_s"]
        r["speedup_vs_sequential"] = seq / r["wall_s"]
        r["max_abs_loss_diff_vs_solo"] = max(
            abs(x - y) for j in jobs for x, y in zip(r["losses"][j.name], solo[j.name]["losses"]))
        return {"status": "ok", **r}

    out["sharp"] = guarded("SHARP, 1 worker", group)
    save()


WORKERS = {"spilling": worker_spilling, "deepspeed": worker_deepspeed, "fsdp2": worker_fsdp2,
           "fairscale": worker_fairscale, "sharp": worker_sharp}


def main(name: str, spec_path: str) -> int:
    """Worker entry: run `name` with the spec at `spec_path`, writing spec['result'] as it goes."""
    sys.path.insert(0, ROOT)
    with open(spec_path) as f:
        spec = json.load(f)
    import torch

    if spec["device"] == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out: dict[str, Any] = {"worker": name, "pid": os.getpid(), "done": False}

    def save() -> None:
        write_atomic(spec["result"], out)

    save()
    WORKERS[name](spec, out, save)
    out["done"] = True
    save()
    return 0
