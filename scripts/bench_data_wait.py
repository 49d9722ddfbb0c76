#!/usr/bin/env python
"""Data-wait share per zoo model: a step through Saturn's training path vs the same step on a
batch that is already on the device (issue 25: "no job waits for its input").

Per model, in this process on one device (the single-device `ddp` technique, bf16 on CUDA):
  saturn  - `saturn.training.loop.train` in trial mode: batches from the job's dataset via
            the training prefetcher (synthetic data made on the device one step ahead); median
            step period from CUDA events (host clock on CPU) and median host wait for the batch
  ready   - the same step function on one batch built beforehand on the device, N steps timed
            with CUDA events around the loop (host clock on CPU): the step with no input at all
  host    - (--host-baseline) the training path fed the pre-issue-25 way: the batch built on the
            host sample by sample (same generator) and copied, to show what the fix removes
Targets: data-wait <= 5% of the step; saturn step within 10% of the ready-batch step.

    python scripts/bench_data_wait.py               # GPU: vit-base B128, gpt2-medium B32 x 1024 (< 2 min
                                                    #  on an H200, estimated); writes benchmarks/data_wait.json
                                                    #  + the BENCHMARKS.md section
    python scripts/bench_data_wait.py --models vit-base:128,gpt2-large:16:1024 --host-baseline
    python scripts/bench_data_wait.py --quick       # CPU smoke run (tiny models); writes only --json PATH
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

GPU_MODELS = "vit-base:128,gpt2-medium:32:1024"
CPU_MODELS = "vit-tiny:8,gpt2-tiny:4:64"


def parse_models(text: str) -> list[tuple[str, int, int]]:
    """"name:batch[:seq_len]" comma-separated -> [(name, batch, seq_len)]; exits 2 on bad input."""
    from saturn.zoo.models import model_names

    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        parts = item.split(":")
        if parts[0] not in model_names() or len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
            print(f"--models: {item!r} is not NAME:BATCH[:SEQ_LEN] with NAME one of {model_names()}",
                  file=sys.stderr)
            sys.exit(2)
        out.append((parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else 1))
    if not out:
        print("--models: give at least one NAME:BATCH[:SEQ_LEN]", file=sys.stderr)
        sys.exit(2)
    return out


def _ctx(device_type: str):
    from saturn.runtime.worker import WorkerContext

    return WorkerContext(rank=0, world_size=1, local_rank=0, device_type=device_type, launch_time=time.time())


def _job(name: str, batch: int, seq_len: int, precision: str):
    from saturn.spec.schema import Job

    data = "synthetic-images" if name.startswith("vit") else "synthetic-tokens"
    return Job(name=f"bench-{name}", model=name, batch_size=batch, seq_len=seq_len, steps=1, data=data,
               precision=precision)


def ready_step_s(trainable, batch, steps: int, warmup: int, cuda: bool) -> float:
    """Seconds per step of `trainable.step_fn` on one batch already on the device."""
    import torch

    for _ in range(warmup):
        trainable.step_fn(*batch)
    if cuda:
        torch.cuda.synchronize()
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        for _ in range(steps):
            trainable.step_fn(*batch)
        t1.record()
        t1.synchronize()
        return t0.elapsed_time(t1) / 1000.0 / steps
    t = time.perf_counter()
    for _ in range(steps):
        trainable.step_fn(*batch)
    return (time.perf_counter() - t) / steps


class HostBuilt:
    """The job's dataset seen the pre-issue-25 way: samples one by one on the host (the training
    path then pins and copies each batch)."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]


def measure(name: str, batch: int, seq_len: int, steps: int, warmup: int, host_baseline: bool) -> dict:
    import torch

    from saturn.techniques import ddp
    from saturn.training import loop
    from saturn.zoo.data import batch_for_step

    cuda = torch.cuda.is_available()
    ctx = _ctx("cuda" if cuda else "cpu")
    job = _job(name, batch, seq_len, "bf16" if cuda else "fp32")
    t = ddp.build(job, {}, ctx)
    res = loop.train(job, t, ctx, mode="trial", num_steps=steps, warmup=warmup)
    saturn_s, wait_s = float(res["step_time_s"]), float(res["data_wait_s"])
    ready = ready_step_s(t, batch_for_step(t.dataset, 0, batch, device=ctx.device), steps, warmup, cuda)
    out = {"model": name, "batch_size": batch, "seq_len": seq_len, "data": job.data.name, "steps": steps,
           "saturn_step_s": saturn_s, "data_wait_s": wait_s, "ready_batch_step_s": ready,
           "data_wait_share": wait_s / saturn_s if saturn_s > 0 else None,
           "vs_ready_batch": saturn_s / ready if ready > 0 else None,
           "peak_mem_gb": res.get("peak_mem_gb")}
    if host_baseline:
        t.dataset = HostBuilt(t.dataset)
        hb = loop.train(job, t, ctx, mode="trial", num_steps=max(3, steps // 3), warmup=1)
        out["host_built_step_s"], out["host_built_data_wait_s"] = hb["step_time_s"], hb["data_wait_s"]
    out["targets"] = {"data_wait_le_5pct": out["data_wait_share"] is not None and out["data_wait_share"] <= 0.05,
                      "within_10pct_of_ready_batch": out["vs_ready_batch"] is not None
                      and out["vs_ready_batch"] <= 1.10}
    del t
    if cuda:
        torch.cuda.empty_cache()
    print(f"  {name} B{batch}" + (f" x {seq_len}" if seq_len > 1 else "") +
          f": Saturn {1000 * saturn_s:.1f} ms/step (data wait {1000 * wait_s:.2f} ms = "
          f"{100 * (out['data_wait_share'] or 0):.1f}%), ready batch {1000 * ready:.1f} ms/step "
          f"-> {out['vs_ready_batch']:.3f}x" + (f"; host-built {1000 * out['host_built_step_s']:.1f} ms/step"
                                              if host_baseline else ""), flush=True)
    return out


def markdown(rows: list[dict], device: str, wall: float) -> str:
    def met(v: bool) -> str:
        return "met" if v else "**missed**"

    host = any("host_built_step_s" in r for r in rows)
    lines = [f"One {device}, single-device training (`ddp` with 1 device, bf16 on CUDA), synthetic data. Saturn = "
             "`saturn.training.loop.train` trial: median step period (CUDA events) and median host wait for the batch "
             "(measured); ready batch = the same step function on one batch already on the device (measured, "
             f"CUDA events around the loop)"
             + ("; host-built = the training path fed the pre-issue-25 way, each batch made sample by sample on "
                "the host (same generator) and copied (measured)" if host else "")
             + f". Total wall time {wall:.0f} s.", "",
             "| model | batch | Saturn ms/step | data wait ms | wait share | ready-batch ms/step | Saturn / ready "
             + ("| host-built ms/step " if host else "") + "| wait ≤ 5% | within 10% |",
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if host else "") + "---|---|"]
    for r in rows:
        b = f"{r['batch_size']}" + (f" × {r['seq_len']}" if r["seq_len"] > 1 else "")
        lines.append(f"| {r['model']} | {b} | {1000 * r['saturn_step_s']:.1f} | {1000 * r['data_wait_s']:.2f} | "
                     f"{100 * r['data_wait_share']:.1f}% | {1000 * r['ready_batch_step_s']:.1f} | "
                     f"{r['vs_ready_batch']:.3f} | "
                     + (f"{1000 * r['host_built_step_s']:.1f} | " if host else "")
                     + f"{met(r['targets']['data_wait_le_5pct'])} | "
                     f"{met(r['targets']['within_10pct_of_ready_batch'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU smoke run on tiny models; writes only --json")
    ap.add_argument("--models", default=None, help=f"NAME:BATCH[:SEQ_LEN],... (default GPU: {GPU_MODELS}; "
                    f"--quick/CPU: {CPU_MODELS})")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per model (default 30 GPU, 6 CPU)")
    ap.add_argument("--host-baseline", action="store_true", help="also time the host-built per-sample path")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:  # as Saturn's CPU workers run (saturn.runtime.worker): oversubscribed OpenMP
        torch.set_num_threads(int(os.environ.get("SATURN_TORCH_THREADS", "1")))  # spins make timings noise
    models = parse_models(args.models or (GPU_MODELS if cuda and not args.quick else CPU_MODELS))
    steps = args.steps or (30 if cuda and not args.quick else 6)
    if steps < 3:
        print("--steps: at least 3", file=sys.stderr)
        sys.exit(2)
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    t0 = time.perf_counter()
    print(f"data-wait per model on {device}, {steps} timed steps each", flush=True)
    rows = [measure(n, b, s, steps, 3, args.host_baseline) for n, b, s in models]
    wall = time.perf_counter() - t0
    md = markdown(rows, device, wall)
    print(md)
    from benchlib import stamp, write_json, write_section

    result = {"device": device, "rows": rows, "wall_s": wall, "quick": args.quick,
              "all_targets_met": all(all(r["targets"].values()) for r in rows)}
    if args.json:
        Path(args.json).write_text(json.dumps({**stamp(), **result}, indent=2) + "\n")
    if not args.quick and cuda:
        write_json("data_wait", result)
        write_section("data_wait", "Data wait per zoo model (synthetic data made on the device)", md)
    elif not args.quick:
        print("no GPU: results not written to benchmarks/ (use --json PATH)", file=sys.stderr)


if __name__ == "__main__":
    main()
