#!/usr/bin/env python
"""Benchmark model spilling against fairscale OffloadModel and against its own lower bounds.

GPU (the lead's run; a model that does not fit the capped GPU memory):

    python scripts/bench_spilling.py --model gpt-2.7b --batch-size 8 --seq-len 512 --steps 5 \
        --memory-fraction 0.05 --offload-memory-fraction 0.3

CPU smoke test (no targets; prints only, writes nothing):
    python scripts/bench_spilling.py --quick          # = --device cpu --tiny --cpu-adam-compare

Measured, in this order, each as the median of `--steps` timed steps after `--warmup` steps:

1. spilling: `SpillingEngine.train_step` (the technique's engine) with `--knobs` (default: shards
   packed from the capped memory, prefetch 1, optimizer on the CPU), then the same engine with
   prefetch 0 and 2 when `--sweep-prefetch` (double buffering off / deeper); optionally
   (`--gpu-optimizer`) a second engine with optimizer_on=gpu. GPU memory capped with
   torch.cuda.set_per_process_memory_fraction. Parameters cross the link in the compute dtype
   (bf16 for bf16 jobs), fp32 masters and the fused CPU AdamW stay on the host.
1b. the host optimizer alone (`--cpu-adam-compare`): torch AdamW loop / fused=True / DeepSpeed
   CPUAdam on a flat fp32 tensor (`cpu_adam_speed`): which CPU Adam the engine should use.
2. compute: the same shards and schedule (forward, head forward+backward, per-shard recompute +
   backward, gradient packing) with every shard resident on the GPU, i.e. no transfers and no
   optimizer step (`train_step(compute_only=True)`; the cap is lifted for it).
3. transfer: the bytes one spilling step must move, as the engine moves them (its counters):
   each shard's compute-dtype buffer host->GPU once per use in the schedule (shard S-2 is kept
   across the head) and every gradient GPU->host once, pinned, one copy after another.
4. fairscale OffloadModel on the same layers (num_slices = spilling's shard count,
   checkpoint_activation=True, same autocast and optimizer on its CPU parameters), capped likewise;
   with `--offload-memory-fraction F` (a cap where OffloadModel fits) both OffloadModel and
   spilling are measured again at F, and the ratio is taken there (the cap is reported).

Targets (GPU only): spilling >= 2x faster than OffloadModel; spilling <= 1.25 x max(compute,
transfer). Writes benchmarks/spilling.json and the `spilling` section of BENCHMARKS.md (through
scripts/benchlib.py, with the command, machine and date); `--out FILE` also writes the JSON to
FILE (e.g. $OUT/spilling.json on a remote machine). `--tiny` runs write nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from saturn.spec.schema import Job  # noqa: E402
from saturn.techniques import training  # noqa: E402
from saturn.techniques.spilling import SpillingEngine, engine_kwargs  # noqa: E402
from saturn.zoo.data import batch_for_step  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gpt2-xl", help="zoo model name")
    p.add_argument("--overrides", default="{}", help="JSON architecture overrides")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "adam", "sgd"])
    p.add_argument("--memory-fraction", type=float, default=0.0,
                   help="cap GPU memory (torch.cuda.set_per_process_memory_fraction); 0 = no cap")
    p.add_argument("--knobs", default="{}", help='spilling knobs as JSON, e.g. {"shard_layers": 4}')
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true",
                   help="smoke test: gpt2-tiny, small batch; prints only, writes nothing")
    p.add_argument("--gpu-optimizer", action="store_true", help="also run optimizer_on=gpu")
    p.add_argument("--sweep-prefetch", action="store_true", help="also prefetch 0 and 2")
    p.add_argument("--cpu-adam-compare", action="store_true",
                   help="time torch loop / fused / DeepSpeed CPU AdamW (DeepSpeed JIT-builds)")
    p.add_argument("--cpu-adam-numel", type=int, default=100_000_000)
    p.add_argument("--offload-memory-fraction", type=float, default=0.0,
                   help="also compare with OffloadModel at this (larger) cap, where it fits")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: --device cpu --tiny "
                   "--cpu-adam-compare (small tensor); prints only")
    p.add_argument("--skip-offload", action="store_true", help="skip fairscale OffloadModel")
    p.add_argument("--out", default=None,
                   help="also write the JSON here (benchmarks/spilling.json is always written)")
    a = p.parse_args()
    if a.quick:
        a.device, a.tiny, a.cpu_adam_compare = "cpu", True, True
        a.cpu_adam_numel = min(a.cpu_adam_numel, 5_000_000)
        if a.knobs == "{}":
            a.knobs = '{"shard_layers": 1}'  # several shards even without a GPU budget
    if a.tiny:
        a.model, a.batch_size, a.seq_len = "gpt2-tiny", 4, 32
        a.steps, a.warmup = min(a.steps, 3), min(a.warmup, 1)
        if a.device == "cpu":
            a.precision = "fp32"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device; use --device cpu --tiny for a smoke test")
    return a


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[int], Any], steps: int, warmup: int, device: torch.device) -> dict:
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        fn(i)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"status": "ok", "step_time_s": statistics.median(times), "step_times": times}


def guarded(name: str, fn: Callable[[], dict]) -> dict:
    """Run a measurement; OOM and crashes become results, not a failed benchmark."""
    print(f"--- {name}", flush=True)
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001
        oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc)
        traceback.print_exc()
        out = {"status": "oom" if oom else "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"    {json.dumps({k: v for k, v in out.items() if k != 'step_times'})}", flush=True)
    return out


def set_cap(device: torch.device, fraction: float) -> None:
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(fraction if fraction > 0 else 1.0, device)


def peak_gb(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def main() -> int:
    a = parse()
    device = torch.device(a.device, 0) if a.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    job = Job(name="bench", model={"name": a.model, "overrides": json.loads(a.overrides)},
              batch_size=a.batch_size, seq_len=a.seq_len, steps=1000, precision=a.precision,
              optimizer={"name": a.optimizer, "lr": 1e-4})
    knobs = json.loads(a.knobs)
    model = training.build_model(job)
    n_params = sum(p.numel() for p in model.parameters())
    dataset = training.build_dataset(job, model)
    batches = [batch_for_step(dataset, s, a.batch_size) for s in range(4)]
    if device.type == "cuda":
        batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]
    total_gb = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None
    cap_gb = total_gb * a.memory_fraction if total_gb and a.memory_fraction > 0 else total_gb
    if cap_gb and not knobs.get("shard_layers") and not knobs.get("gpu_budget_gb"):
        knobs["gpu_budget_gb"] = round(0.9 * cap_gb, 2)
    res: dict[str, Any] = {}

    # 1. spilling (capped)
    set_cap(device, a.memory_fraction)
    t0 = time.perf_counter()
    engine = SpillingEngine(model, device, **engine_kwargs(job, knobs))
    setup_s = time.perf_counter() - t0
    shards = engine.ranges

    def spill(prefetch: int) -> dict:
        engine.prefetch = prefetch
        reset_peak(device)
        for k in engine.timings:  # the host optimizer writes into this very dict
            engine.timings[k] = 0.0
        def step(i: int) -> None:
            engine.train_step(*batches[i % len(batches)])
            engine.synchronize()  # include the last shard's optimizer step (on its own thread)

        out = timed(step, a.steps, a.warmup, device)
        out["peak_gpu_gb"] = peak_gb(device)
        n = a.steps + a.warmup
        out["cpu_optimizer_s_per_step"] = engine.timings["cpu_optimizer_s"] / n
        out["grad_wait_s_per_step"] = engine.timings["grad_wait_s"] / n
        out["prefetch"] = prefetch
        return out

    base_prefetch = engine.prefetch
    res["spilling"] = guarded(f"spilling prefetch={base_prefetch}", lambda: spill(base_prefetch))
    res["spilling"].update(setup_s=round(setup_s, 2), shards=len(shards), knobs=knobs,
                           prefetch=base_prefetch)
    for p in sorted({0, 1, 2} - {base_prefetch}) if a.sweep_prefetch else []:
        res[f"spilling_prefetch{p}"] = guarded(f"spilling prefetch={p}", lambda p=p: spill(p))
    engine.prefetch = base_prefetch
    t = engine.transfers  # what one step moves, as counted by the engine
    n_steps = engine.step_count or 1
    res["spilling"].update(wire_dtype=str(engine.wire_dtype or "fp32"),
                           gb_in_per_step=t.bytes_in / n_steps / 2**30,
                           gb_out_per_step=t.bytes_out / n_steps / 2**30,
                           shard_copies_in_per_step=t.copies_in / n_steps)
    if a.cpu_adam_compare:
        from saturn.techniques.spilling import cpu_adam_speed

        res["cpu_adam"] = guarded("CPU AdamW implementations", lambda: {
            "status": "ok", "numel": a.cpu_adam_numel, "threads": torch.get_num_threads(),
            **cpu_adam_speed(a.cpu_adam_numel, steps=3)})

    # 2. compute (all shards resident, no transfers, no optimizer step), cap lifted
    set_cap(device, 0.0)

    def compute() -> dict:
        reset_peak(device)
        engine.train_step(*batches[0], compute_only=True)  # brings every shard in once
        out = timed(lambda i: engine.train_step(*batches[i % len(batches)], compute_only=True),
                    a.steps, a.warmup, device)
        out["peak_gpu_gb"] = peak_gb(device)
        engine.release_kept()
        return out

    res["compute"] = guarded("compute (all shards resident)", compute)

    # 3. transfer: each shard in once per use (compute dtype), every gradient out once, serial
    def transfer() -> dict:
        uses = [k for k, _ in engine.tasks()]
        uses = [k for i, k in enumerate(uses) if k not in uses[max(0, i - 2):i]]  # kept shards
        dev = {k: [torch.empty_like(f, device=device) for f in engine.shards[k].sendable()]
               for k in set(uses)}
        in_b = sum(f.numel() * f.element_size() for k in uses for f in engine.shards[k].sendable())
        out_b = sum(f.numel() * f.element_size() for sh in engine.shards for f in sh.grad_landing())

        def h2d() -> None:
            for k in uses:
                for d, h in zip(dev[k], engine.shards[k].sendable()):
                    d.copy_(h, non_blocking=True)

        def d2h() -> None:
            for sh in engine.shards:
                for d, h in zip(dev[sh.k], sh.grad_landing()):
                    h.copy_(d, non_blocking=True)

        t_in = timed(lambda i: h2d(), a.steps, 1, device)["step_time_s"]
        t_out = timed(lambda i: d2h(), a.steps, 1, device)["step_time_s"]
        dev.clear()  # free the device copies now (h2d/d2h close over `dev`, so no `del`)
        return {"status": "ok", "step_time_s": t_in + t_out, "h2d_s": t_in, "d2h_s": t_out,
                "gb_in": in_b / 2**30, "gb_out": out_b / 2**30, "copies_in": len(uses),
                "h2d_gb_s": in_b / 2**30 / t_in, "d2h_gb_s": out_b / 2**30 / t_out,
                "pinned": bool(engine.shards[0].host_flat[0].is_pinned())}

    res["transfer"] = guarded("transfer (each shard in per use, grads out once)", transfer)
    # Drop both references (the model's parameters are views into the engine's pinned buffers). Rebound, not
    # `del`, because the closures above read `engine` and pyflakes would call them undefined.
    engine = model = None
    gc.collect()

    # 1b. optimizer on the GPU (state streamed), capped
    if a.gpu_optimizer:
        set_cap(device, a.memory_fraction)

        def gpu_opt() -> dict:
            m = training.build_model(job)
            eng = SpillingEngine(m, device, **engine_kwargs(job, {**knobs, "optimizer_on": "gpu"}))
            reset_peak(device)
            out = timed(lambda i: eng.train_step(*batches[i % len(batches)]), a.steps, a.warmup,
                        device)
            out["peak_gpu_gb"] = peak_gb(device)
            out["shards"] = len(eng.ranges)
            return out

        res["spilling_gpu_optimizer"] = guarded("spilling optimizer_on=gpu", gpu_opt)

    # 4. fairscale OffloadModel (capped)
    if not a.skip_offload:
        set_cap(device, a.memory_fraction)
        res["offload_model"] = guarded("fairscale OffloadModel",
                                       lambda: offload_model(job, device, len(shards), batches, a))
        f2 = a.offload_memory_fraction
        if f2 > 0 and f2 != a.memory_fraction and device.type == "cuda":
            set_cap(device, f2)
            k2 = {**knobs, "gpu_budget_gb": round(0.9 * total_gb * f2, 2)}

            def spill_at_f2() -> dict:
                eng = SpillingEngine(training.build_model(job), device, **engine_kwargs(job, k2))
                out = timed(lambda i: (eng.train_step(*batches[i % len(batches)]),
                                       eng.synchronize()), a.steps, a.warmup, device)
                out.update(shards=len(eng.ranges), memory_fraction=f2)
                eng.close()
                return out

            res["spilling_at_offload_cap"] = guarded(f"spilling at cap {f2}", spill_at_f2)
            gc.collect()
            res["offload_model_at_offload_cap"] = guarded(
                f"fairscale OffloadModel at cap {f2}",
                lambda: {**offload_model(job, device, res["spilling_at_offload_cap"].get(
                    "shards", len(shards)), batches, a), "memory_fraction": f2})

    report = summarize(a, job, n_params, device, total_gb, cap_gb, shards, res)
    print(markdown(report))
    if a.tiny:  # a smoke run must not overwrite the recorded results
        print("--tiny: nothing written")
        return 0
    from benchlib import write_json, write_section

    path = write_json("spilling", report)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(path.read_text())
    write_section("spilling", title(report), markdown(report))
    print(f"wrote {path}{' and ' + a.out if a.out else ''} and the spilling section of BENCHMARKS.md")
    return 0


def offload_model(job: Job, device: torch.device, slices: int, batches: list, a: Any) -> dict:
    if device.type != "cuda":
        return {"status": "skipped", "reason": "fairscale OffloadModel needs CUDA"}
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    from fairscale.experimental.nn.offload import OffloadModel

    model = training.build_model(job)
    loss_fn = model.loss
    om = OffloadModel(model=torch.nn.Sequential(*model.layers), device=device,
                      offload_device=torch.device("cpu"), num_slices=slices,
                      checkpoint_activation=True, num_microbatches=1)
    opt = training.build_optimizer(job, om.parameters())
    use_amp = job.precision == "bf16"

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        x, y = x.to(device), y.to(device)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            out = om(x)
            loss = loss_fn(out, y)
        loss.backward()
        opt.step()
        float(loss)

    reset_peak(device)
    out = timed(step, a.steps, a.warmup, device)
    out["peak_gpu_gb"] = peak_gb(device)
    out["num_slices"] = slices
    return out


def summarize(a: Any, job: Job, n_params: int, device: torch.device, total_gb: Optional[float],
              cap_gb: Optional[float], shards: list, res: dict) -> dict:
    def t(name: str) -> Optional[float]:
        r = res.get(name) or {}
        return r.get("step_time_s") if r.get("status") == "ok" else None

    spill, comp, xfer, off = t("spilling"), t("compute"), t("transfer"), t("offload_model")
    cap = a.memory_fraction
    if not off and t("offload_model_at_offload_cap") and t("spilling_at_offload_cap"):
        spill_o, off, cap = (t("spilling_at_offload_cap"), t("offload_model_at_offload_cap"),
                             a.offload_memory_fraction)
    else:
        spill_o = spill
    targets: dict[str, Any] = {}
    if device.type == "cuda":
        if spill_o and off:
            targets["speedup_vs_offload_model"] = round(off / spill_o, 2)
            targets["speedup_vs_offload_model_ok"] = off / spill_o >= 2.0
            targets["offload_model_compared_at_memory_fraction"] = cap
        if spill and comp and xfer:
            bound = max(comp, xfer)
            targets["spilling_over_max_compute_transfer"] = round(spill / bound, 3)
            targets["spilling_over_max_compute_transfer_ok"] = spill / bound <= 1.25
    return {
        "benchmark": "spilling",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "config": {"model": a.model, "overrides": json.loads(a.overrides), "params": n_params,
                   "param_gb_fp32": round(n_params * 4 / 2**30, 3), "batch_size": a.batch_size,
                   "seq_len": a.seq_len, "precision": a.precision, "optimizer": a.optimizer,
                   "steps": a.steps, "warmup": a.warmup, "memory_fraction": a.memory_fraction,
                   "gpu_total_gb": total_gb and round(total_gb, 1),
                   "gpu_cap_gb": cap_gb and round(cap_gb, 1), "shards": [list(s) for s in shards]},
        "results": res, "targets": targets,
    }


def title(r: dict) -> str:
    return f"Model spilling ({r['device']})"


def markdown(r: dict) -> str:
    c, res, tg = r["config"], r["results"], r["targets"]

    def row(label: str, key: str, how: str) -> str:
        x = res.get(key)
        if x is None:
            return ""
        if x.get("status") != "ok":
            return f"| {label} | {x.get('status')} | | {how}: {x.get('reason', '')[:80]} |\n"
        mem = x.get("peak_gpu_gb")
        return (f"| {label} | {x['step_time_s']:.4f} | {'' if mem is None else f'{mem:.2f}'} "
                f"| {how} |\n")

    out = [f"Model {c['model']} ({c['params'] / 1e6:.0f}M parameters, {c['param_gb_fp32']:.2f} GiB "
           f"fp32), batch {c['batch_size']} x seq {c['seq_len']}, {c['precision']}, "
           f"{c['optimizer']}; GPU memory capped at {c['gpu_cap_gb']} of {c['gpu_total_gb']} GiB; "
           f"{len(c['shards'])} shards {c['shards']}. Median of {c['steps']} steps after "
           f"{c['warmup']} warm-up.\n\n",
           "| measurement | s/step | peak GPU GiB | how |\n|---|---|---|---|\n"]
    sp = res.get("spilling", {})
    out.append(row("spilling", "spilling",
                   f"knobs {sp.get('knobs')}, prefetch {sp.get('prefetch')}; CPU optimizer "
                   f"{sp.get('cpu_optimizer_s_per_step', 0):.3f} s/step (overlapped)"))
    for p in (0, 1, 2):
        out.append(row(f"spilling, prefetch {p}", f"spilling_prefetch{p}", "same engine"))
    out.append(row("spilling, optimizer on GPU", "spilling_gpu_optimizer",
                   "state streamed with the shard"))
    out.append(row("compute bound", "compute", "same shards + schedule, all resident, no "
                                               "transfers, no optimizer step (uncapped)"))
    x = res.get("transfer", {})
    how = (f"{x.get('copies_in')} shard copies in ({x.get('gb_in', 0):.3f} GiB, "
           f"{x.get('h2d_gb_s', 0):.1f} GB/s) + grads out once ({x.get('gb_out', 0):.3f} GiB, "
           f"{x.get('d2h_gb_s', 0):.1f} GB/s), pinned={x.get('pinned')}, serial")
    out.append(row("transfer bound", "transfer", how))
    out.append(row("fairscale OffloadModel", "offload_model",
                   "same layers, num_slices = shards, checkpoint_activation"))
    out.append(row("spilling at the OffloadModel cap", "spilling_at_offload_cap",
                   f"memory fraction {(res.get('spilling_at_offload_cap') or {}).get('memory_fraction')}"))
    out.append(row("fairscale OffloadModel at its cap", "offload_model_at_offload_cap",
                   "where OffloadModel fits"))
    out.append("\n")
    if sp.get("gb_in_per_step") is not None:
        out.append(f"Per step the engine moved {sp['gb_in_per_step']:.3f} GiB in "
                   f"({sp.get('shard_copies_in_per_step'):.0f} shard copies, wire dtype "
                   f"{sp.get('wire_dtype')}) and {sp['gb_out_per_step']:.3f} GiB of gradients out "
                   f"(measured counters).\n\n")
    ca = res.get("cpu_adam")
    if ca and ca.get("status") == "ok":
        parts = [f"{k} {v['s_per_step']:.4f} s" if isinstance(v, dict) else f"{k}: {v}"
                 for k, v in ca.items() if k in ("torch", "torch-fused", "deepspeed")]
        out.append(f"CPU AdamW over {ca['numel'] / 1e6:.0f}M fp32 parameters, "
                   f"{ca['threads']} threads (measured): " + "; ".join(parts) + ".\n\n")
    if tg:
        out.append(f"Targets: OffloadModel / spilling = {tg.get('speedup_vs_offload_model')} at "
                   f"memory fraction {tg.get('offload_model_compared_at_memory_fraction')} "
                   f"(target >= 2: {tg.get('speedup_vs_offload_model_ok')}); spilling / "
                   f"max(compute, transfer) = {tg.get('spilling_over_max_compute_transfer')} "
                   f"(target <= 1.25: {tg.get('spilling_over_max_compute_transfer_ok')}).\n")
    else:
        out.append("CPU smoke test: no targets.\n")
    return "".join(out)


if __name__ == "__main__":
    sys.exit(main())
