#!/usr/bin/env python
"""Step time and peak memory of each Saturn technique x GPU count, against a hand-written
reference of the same library measured in the same run:

  ddp      vs a plain DDP loop (1 GPU: a plain single-device loop)
  fsdp     vs FSDP2 set up as the PyTorch docs do (fully_shard per block + root, bf16 params)
  zero     vs a plain DeepSpeed engine (a torch AdamW client optimizer, same ZeRO stage)
  pipeline (no reference: reported for the planner's comparison only)

The overhead column (Saturn / reference step time, target <= 1.05) is what Saturn's shared loop,
data path and checkpoint-neutral setup cost over the bare library. The references are bare loops
that never synchronize per step either (per-step CUDA events, read at the end), so the ratio is
against the best a hand-written loop does. With `--compile ddp,fsdp` the technique also runs with
its `compile` knob: the speed-up over the bare eager reference and the compile time (start-up
with compile minus start-up without, both measured in this run) are reported.

Writes benchmarks/techniques.json and the `techniques` section of BENCHMARKS.md (through
scripts/benchlib.py, with the command, machine and date); `--out FILE` also writes the JSON to
FILE (e.g. $OUT/techniques.json on a remote machine).

GPU run (the SPASE paper's setting, 350M GPT, seq 512, 8 samples/GPU, bf16; ~2-3 min on one H200):
    python scripts/bench_techniques.py --gpus 1 --techniques ddp,fsdp,zero
CPU smoke test (tiny model, CPU slots; prints only, writes nothing):
    python scripts/bench_techniques.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from saturn.runtime.launch import resolve_device_type, run_workers  # noqa: E402
from saturn.spec.schema import Job  # noqa: E402
from saturn.techniques import get_technique  # noqa: E402

HERE = "scripts.bench_techniques"


# ------------------------------------------------------- hand-written references (in workers)
def _setup(payload: dict, ctx: Any):
    import torch

    from saturn.zoo import build_model

    job = Job.model_validate(payload["job"])
    torch.manual_seed(0)
    model = build_model(job.model)
    per = job.batch_size // ctx.world_size
    vocab = model.config.vocab_size
    x = torch.randint(0, vocab, (per, job.seq_len), device=ctx.device)
    return job, model, x, torch.roll(x, -1, 1)


def _timed(step, payload: dict, ctx: Any) -> dict:
    """A bare loop at its best: no per-step synchronization. On CUDA each step's period comes
    from events recorded after it (read once at the end); on CPU from the host clock."""
    import torch

    cuda, marks = ctx.device_type == "cuda", []

    def mark() -> Any:
        if not cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    marks.append(mark())
    for _ in range(payload["warmup"] + payload["steps"]):
        step()
        marks.append(mark())
    if cuda:
        torch.cuda.synchronize()
        periods = [a.elapsed_time(b) / 1000.0 for a, b in zip(marks, marks[1:])]
    else:
        periods = [b - a for a, b in zip(marks, marks[1:])]
    times = periods[payload["warmup"]:]
    if cuda:
        mem = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"step_time_s": statistics.median(times), "peak_mem_gb": mem}


def _autocast(ctx: Any):
    import contextlib

    import torch

    if ctx.device_type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ref_ddp(payload: dict, ctx: Any) -> dict:
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    job, model, x, y = _setup(payload, ctx)
    model.to(ctx.device)
    net = DDP(model, device_ids=[ctx.local_rank] if ctx.device_type == "cuda" else None) \
        if ctx.world_size > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(ctx):
            loss = model.loss(net(x), y)
        loss.backward()
        opt.step()

    return _timed(step, payload, ctx)


def ref_fsdp(payload: dict, ctx: Any) -> dict:
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    job, model, x, y = _setup(payload, ctx)
    model.to(ctx.device)
    kw = {}
    if ctx.device_type == "cuda":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.blocks():
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(model(x), y).backward()
        opt.step()

    return _timed(step, payload, ctx)


def ref_zero(payload: dict, ctx: Any) -> dict:
    """A plain DeepSpeed engine. The optimizer is a torch AdamW handed over as a client optimizer
    (as Saturn's zero technique does): DeepSpeed's own "AdamW" is FusedAdam, a CUDA op it
    JIT-builds, and its builder parses TORCH_CUDA_ARCH_LIST entries as int(minor), which fails
    on arch-specific entries such as "9.0a" (`invalid literal for int() with base 10: '0a'`,
    deepspeed/ops/op_builder/builder.py, compute_capability_args). `_ds_env` also strips those
    suffixes for any other op DeepSpeed may build."""
    import deepspeed
    import torch

    job, model, x, y = _setup(payload, ctx)
    cuda = ctx.device_type == "cuda"
    cfg = {"train_batch_size": job.batch_size,
           "train_micro_batch_size_per_gpu": job.batch_size // ctx.world_size,
           "zero_optimization": {"stage": payload["stage"]}, "bf16": {"enabled": cuda},
           "gradient_clipping": 0.0, "zero_allow_untested_optimizer": True,
           "zero_force_ds_cpu_optimizer": False, "steps_per_print": 1 << 30}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)

    def step() -> None:
        loss = model.loss(engine(x), y)
        engine.backward(loss)
        engine.step()

    return _timed(step, payload, ctx)


REFERENCES = {"ddp": "ref_ddp", "fsdp": "ref_fsdp", "zero": "ref_zero"}


# ----------------------------------------------------------------------------------- driver
TARGET = 1.05  # Saturn / bare reference step time (issue #20)


def make_job(args: argparse.Namespace, gpus: int) -> Job:
    model = "gpt2-tiny" if args.tiny else args.model
    return Job(name="bench", model={"name": model},
               batch_size=args.per_gpu_batch * gpus, seq_len=args.seq_len, steps=1_000,
               precision="bf16", optimizer={"name": "adamw", "lr": 3e-4})


def _ds_env(device: str) -> dict[str, str]:
    """Worker environment for DeepSpeed: the CPU accelerator on CPU slots; on GPUs an arch list
    without arch-specific suffixes ("9.0a" -> "9.0"), which DeepSpeed's op builder cannot parse."""
    if device == "cpu":
        return {"DS_ACCELERATOR": "cpu"}
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if archs:
        return {"TORCH_CUDA_ARCH_LIST": re.sub(r"(\d+\.\d+)[a-zA-Z]+", r"\1", archs)}
    return {}


def _trial(args: argparse.Namespace, tech: Any, job: Job, gpus: int, knobs: dict) -> dict:
    res = tech.trial(job, list(range(gpus)), knobs, steps=args.steps, timeout_s=args.timeout,
                     device_type=args.device, warmup=args.warmup)
    return {"knobs": knobs, "status": res.status, "step_time_s": res.step_time_s,
            "peak_mem_gb": res.peak_mem_gb, "startup_s": res.startup_s, "reason": res.reason[-300:]}


def bench_one(args: argparse.Namespace, name: str, gpus: int) -> list[dict[str, Any]]:
    """The technique's default knobs against its bare reference; with `--compile`, also its
    compile knob against the same (eager) reference."""
    job, tech = make_job(args, gpus), get_technique(name)
    feas = tech.feasible(job, gpus)
    row: dict[str, Any] = {"technique": name, "gpus": gpus, "model": job.model.label(),
                           "global_batch": job.batch_size, "seq_len": job.seq_len}
    if not feas:
        return [{**row, "status": "infeasible", "reason": feas.reason}]
    knobs = tech.candidates(job, gpus)[0]
    row.update(_trial(args, tech, job, gpus, knobs))
    if name in REFERENCES:
        payload = {"job": job.model_dump(mode="json"), "steps": args.steps, "warmup": args.warmup,
                   "stage": knobs.get("stage", 2)}
        env = _ds_env(args.device) if name == "zero" else {}
        ref = run_workers(f"{HERE}:{REFERENCES[name]}", payload, list(range(gpus)),
                          device_type=args.device, timeout_s=args.timeout, env=env)
        row["reference"] = {k: ref.get(k) for k in ("status", "step_time_s", "peak_mem_gb")}
        row["reference"]["reason"] = (ref.get("reason") or ref.get("log_tail") or "")[-300:] \
            if ref.get("status") != "ok" else ""
        if row.get("step_time_s") and ref.get("step_time_s"):
            row["overhead"] = round(row["step_time_s"] / ref["step_time_s"], 3)
            row["overhead_target"] = TARGET
            row["overhead_met"] = row["overhead"] <= TARGET
    print(json.dumps(row), flush=True)
    rows = [row]
    if name in args.compile and "compile" in tech.knobs:
        comp = {**row, **_trial(args, tech, job, gpus, {**knobs, "compile": True})}
        comp.pop("overhead_met", None), comp.pop("overhead_target", None)
        ref_t, eager = (row.get("reference") or {}).get("step_time_s"), row.get("startup_s")
        comp["overhead"] = None
        if comp.get("step_time_s") and ref_t:
            comp["speedup_vs_bare_eager"] = round(ref_t / comp["step_time_s"], 3)
        if comp.get("startup_s") is not None and eager is not None:
            comp["compile_s"] = round(comp["startup_s"] - eager, 2)  # measured difference
        print(json.dumps(comp), flush=True)
        rows.append(comp)
    return rows


TITLE = "Techniques vs hand-written references"


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, device: str) -> str:
    lines = [f"Device: {device}; model {rows[0]['model'] if rows else '?'}, seq {args.seq_len}, "
             f"{args.per_gpu_batch} samples/GPU, bf16 on GPU, AdamW; median of {args.steps} steps "
             f"after {args.warmup} warm-up (all measured in this run). Overhead = Saturn / bare "
             f"reference s/step, target <= {TARGET}. compile rows: speed-up over the bare eager "
             "reference; compile s = start-up with compile minus start-up without."
             + (" CPU slots: the compile knob is CUDA-only, so its rows ran eager (noise)."
                if args.device == "cpu" else ""), "",
             "| technique | GPUs | knobs | status | s/step | peak GB | start-up s | ref s/step | "
             "ref peak GB | overhead | target met | speed-up vs bare eager | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    for r in rows:
        ref = r.get("reference") or {}
        knobs = ", ".join(f"{k}={v}" for k, v in (r.get("knobs") or {}).items())
        ref_t = ref.get("step_time_s") if ref.get("status") == "ok" else \
            (f"{ref.get('status')}: {ref.get('reason', '')[-80:]}" if ref else None)
        lines.append(f"| {r['technique']} | {r['gpus']} | {knobs} | {r['status']} | "
                     f"{fmt(r.get('step_time_s'))} | {fmt(r.get('peak_mem_gb'))} | "
                     f"{fmt(r.get('startup_s'))} | {fmt(ref_t)} | {fmt(ref.get('peak_mem_gb'))} | "
                     f"{fmt(r.get('overhead'))} | {fmt(r.get('overhead_met'))} | "
                     f"{fmt(r.get('speedup_vs_bare_eager'))} | {fmt(r.get('compile_s'))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--tiny", action="store_true",
                   help="gpt2-tiny, seq 32: a smoke test; prints only, writes nothing")
    p.add_argument("--quick", action="store_true", help="--tiny on CPU slots, 1 and 2 slots")
    p.add_argument("--model", default="gpt2-medium", help="zoo model (gpt2-medium = 350M)")
    p.add_argument("--gpus", default=None, help="comma-separated GPU counts (default 1,2,4,...)")
    p.add_argument("--techniques", default="ddp,fsdp,zero,pipeline")
    p.add_argument("--compile", default="ddp",
                   help="techniques also measured with their compile knob ('' for none)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--per-gpu-batch", type=int, default=8)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--out", default=None,
                   help="also write the JSON here (benchmarks/techniques.json is always written)")
    args = p.parse_args()
    if args.quick:
        args.tiny, args.device = True, "cpu"
    args.device = resolve_device_type(args.device)
    args.compile = [c for c in args.compile.split(",") if c]
    if args.tiny:
        args.seq_len, args.per_gpu_batch, args.steps, args.warmup = 32, 2, 3, 1
    counts = [int(g) for g in args.gpus.split(",")] if args.gpus else _default_counts(args.device)
    t0 = time.monotonic()
    rows = [r for g in counts for name in args.techniques.split(",") for r in bench_one(args, name, g)]
    wall = round(time.monotonic() - t0, 1)
    device = _device_name(args.device)
    md = markdown(rows, args, device) + f"\nWall time of the whole benchmark: {wall} s.\n"
    print(md)
    if args.tiny:  # a smoke run must not overwrite the recorded results
        print("--tiny/--quick: nothing written")
        return
    from benchlib import write_json, write_section

    met = [r["overhead_met"] for r in rows if "overhead_met" in r]
    path = write_json("techniques", {"device": device, "args": vars(args), "rows": rows,
                                     "wall_s": wall, "targets": {"overhead_max": TARGET,
                                                                 "all_met": bool(met) and all(met)}})
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(path.read_text())
    write_section("techniques", TITLE, md)
    print(f"wrote {path}{' and ' + args.out if args.out else ''} and the techniques section of "
          "BENCHMARKS.md")


def _default_counts(device: str) -> list[int]:
    if device == "cpu":
        return [1, 2]
    import torch

    n, out = torch.cuda.device_count(), [1]
    while out[-1] * 2 <= n:
        out.append(out[-1] * 2)
    return out


def _device_name(device: str) -> str:
    if device == "cpu":
        return "cpu (gloo slots)"
    import torch

    return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"


if __name__ == "__main__":
    main()
