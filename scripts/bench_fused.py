#!/usr/bin/env python
"""Benchmark fused sweeps (issue 36): K jobs of one shape trained as one vmapped model
(`saturn.fused.FusedEngine`) against the same K jobs trained one after another, and every member's
fused losses against its solo run's.

GPU (the lead's run, one H100 or H200, about 2-3 minutes):

    python scripts/bench_fused.py --budget-s 220

CPU (recorded here; tiny models, K = 1, 2, 4):

    python scripts/bench_fused.py --quick

Per family (GPT-2 small, batch 16, seq 512, synthetic tokens; ViT-base, batch 64, synthetic
images; bf16 on GPUs, fp32 on CPU) the K member jobs differ in learning rate, weight decay and
seed, as in a sweep:
1. solo, measured: each member alone with the plain single-device step (`training.standard_step`,
   the `ddp` technique on one device), --warmup untimed then --steps timed steps; "K jobs one after
   another" takes the sum of the first K members' timed step times (start-up excluded on both
   sides);
2. fused, measured: the first K members as one group, --warmup untimed then --steps timed steps;
aggregate throughput = member-steps per second; speedup = sequential time / fused time for the
same member-steps (target >= 1.8x at K = 4 on the GPU). Loss check: max |fused - solo| per
member over all warmup + timed steps (fp32 CPU: ~1 ulp per step; bf16 GPUs: different kernels
for batched and single matmuls, reported, no target). An OOM at some K is recorded as such.
Writes benchmarks/fused.json (GPU) or benchmarks/fused_cpu.json (--quick) after every
measurement, plus the measured groups as planner profile rows (`saturn.planner.fused_option`),
and the BENCHMARKS.md section at the end. Ops that vmap ran member by member (no batching rule,
PyTorch's "performance drop" warning) are listed per measurement (`vmap_fallbacks`).
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import sys
import time
import warnings
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib
import torch

from saturn.spec.schema import Job

FAMILIES = {  # name -> (zoo model, data, batch size, seq len)
    "gpt2-small": ("gpt2-small", "synthetic-tokens", 16, 512),
    "vit-base": ("vit-base", "synthetic-images", 64, 512),
}
QUICK = {"gpt2-small": ("gpt2-tiny", "synthetic-tokens", 8, 64),
         "vit-base": ("vit-tiny", "synthetic-images", 16, 64)}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", default=None, help="comma-separated group widths K (default 1,2,4,8; "
                   "--quick: 1,2,4)")
    p.add_argument("--families", default="gpt2-small,vit-base")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 20; --quick: 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; --quick: 1)")
    p.add_argument("--budget-s", type=float, default=220.0,
                   help="stop starting new measurements after this many seconds (default 220)")
    p.add_argument("--quick", action="store_true", help="CPU, tiny models, K = 1,2,4 (fused_cpu.json)")
    a = p.parse_args()
    a.device = "cpu" if a.quick else "cuda"
    defaults = ("1,2,4", 3, 1) if a.quick else ("1,2,4,8", 20, 5)
    a.widths, a.steps, a.warmup = (d if v is None else v for v, d in zip((a.widths, a.steps, a.warmup), defaults))
    if not a.quick and not torch.cuda.is_available():
        p.error("no CUDA device; use --quick for the CPU run")
    try:
        a.widths = sorted({int(k) for k in a.widths.split(",")})
    except ValueError:
        p.error(f"--widths: {a.widths!r} must be comma-separated whole numbers, e.g. 1,2,4,8")
    if not a.widths or min(a.widths) < 1:
        p.error("--widths: each width must be >= 1")
    a.families = [f.strip() for f in a.families.split(",") if f.strip()]
    bad = [f for f in a.families if f not in FAMILIES]
    if bad or not a.families:
        p.error(f"--families: unknown {bad}; choose from {sorted(FAMILIES)}")
    if a.steps < 1 or a.warmup < 0 or a.budget_s <= 0:
        p.error("--steps must be >= 1, --warmup >= 0 and --budget-s > 0")
    return a


def jobs_for(a: argparse.Namespace, family: str) -> list[Job]:
    model, data, batch, seq = (QUICK if a.quick else FAMILIES)[family]
    prec = "fp32" if a.device == "cpu" else "bf16"
    return [Job(name=f"{family}-{i}", model={"name": model}, data={"name": data}, batch_size=batch,
                seq_len=seq, steps=a.warmup + a.steps, precision=prec, seed=i,
                optimizer={"name": "adamw", "lr": 1e-4 * (1 + i), "weight_decay": 0.01 * (i % 3)})
            for i in range(max(a.widths))]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def solo(job: Job, a: argparse.Namespace) -> dict[str, Any]:
    """One member alone: the plain single-device step; losses of every step, timed steps' time."""
    from saturn.training import loop as training
    from saturn.zoo.data import batch_for_step, made_on_device

    model = training.build_model(job, a.device)
    data = training.build_dataset(job, model)
    opt = training.build_optimizer(job, model.parameters())
    step = training.standard_step(model, model.loss, opt, job, a.device)
    on_dev = made_on_device(data)
    losses, t0 = [], 0.0
    for s in range(a.warmup + a.steps):
        if s == a.warmup:
            _sync(a.device)
            t0 = time.perf_counter()
        x, y = batch_for_step(data, s, job.batch_size, device=a.device if on_dev else None)
        losses.append(step(x.to(a.device), y.to(a.device)))
    _sync(a.device)
    return {"time_s": time.perf_counter() - t0, "losses": [float(v) for v in losses]}


def fused(jobs: list[Job], a: argparse.Namespace) -> dict[str, Any]:
    from saturn.fused.engine import FusedEngine

    engine = FusedEngine(jobs, a.device)
    losses, t0 = [], 0.0
    with warnings.catch_warnings(record=True) as caught:  # vmap's per-op fallbacks, named
        warnings.simplefilter("always")
        for s in range(a.warmup + a.steps):
            if s == a.warmup:
                _sync(a.device)
                t0 = time.perf_counter()
            losses.append(engine.step([s] * len(jobs)))
        _sync(a.device)
    elapsed = time.perf_counter() - t0
    fallbacks = sorted({m.group(1) for w in caught
                        if (m := re.search(r"batching rule for (\S+?)\.", str(w.message)))})
    peak = torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else None
    rows = torch.stack(losses).tolist()
    return {"time_s": elapsed, "losses": [[r[k] for r in rows] for k in range(len(jobs))],
            "peak_mem_gb": peak, "vmap_fallbacks": fallbacks}


def main() -> int:
    a = parse()
    from saturn.planner import fused_option

    if a.device == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    name = "fused_cpu" if a.quick else "fused"
    t_start = time.perf_counter()
    out: dict[str, Any] = {"widths": a.widths, "steps": a.steps, "warmup": a.warmup, "device": a.device,
                           "families": {}, "profile_rows": []}

    def left() -> float:
        return a.budget_s - (time.perf_counter() - t_start)

    for family in a.families:
        jobs = jobs_for(a, family)
        fam: dict[str, Any] = {"model": jobs[0].model.name, "batch_size": jobs[0].batch_size,
                               "seq_len": jobs[0].seq_len, "precision": jobs[0].precision,
                               "solo": {}, "fused": {}}
        out["families"][family] = fam
        for job in jobs:  # solo runs of every member (the sequential reference and the losses)
            if left() <= 0:
                fam["solo"][job.name] = {"status": "skipped (budget)"}
                continue
            try:
                fam["solo"][job.name] = {"status": "ok", **solo(job, a)}
            except torch.cuda.OutOfMemoryError:
                fam["solo"][job.name] = {"status": "oom"}
            _free()  # outside the except block: its traceback holds the model until it ends
            benchlib.write_json(name, out)
        for k in a.widths:
            members = jobs[:k]
            if left() <= 0:
                fam["fused"][str(k)] = {"status": "skipped (budget)"}
                continue
            if torch.cuda.is_available() and a.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            res = None
            try:
                res = fused(members, a)
            except torch.cuda.OutOfMemoryError:
                fam["fused"][str(k)] = {"status": "oom"}
            _free()  # outside the except block: its traceback holds the group until it ends
            if res is None:
                benchlib.write_json(name, out)
                continue
            fam["fused"][str(k)] = _summary(res, members, fam["solo"], a)
            r = fam["fused"][str(k)]
            print(f"{family} K={k}: {r['step_time_s']} s/group step, speedup {r.get('speedup')}, "
                  f"t={time.perf_counter() - t_start:.0f}s", flush=True)
            step_s = res["time_s"] / a.steps
            out["profile_rows"].append(fused_option.group_row(
                [j.name for j in members], step_s, gpu_type=_gpu_type(a), peak_mem_gb=res["peak_mem_gb"]))
            benchlib.write_json(name, out)
    benchlib.write_json(name, out)
    benchlib.write_section(name, "Fused sweeps (issue 36)" + (" — CPU quick run" if a.quick else ""),
                           _markdown(out))
    print(_markdown(out))
    return 0


def _gpu_type(a: argparse.Namespace) -> Any:
    return torch.cuda.get_device_name(0) if a.device == "cuda" else None


def _summary(res: dict[str, Any], members: list[Job], solos: dict[str, Any],
             a: argparse.Namespace) -> dict[str, Any]:
    k = len(members)
    member_steps = k * a.steps
    d: dict[str, Any] = {"status": "ok", "time_s": round(res["time_s"], 4),
                         "step_time_s": round(res["time_s"] / a.steps, 5),
                         "throughput_member_steps_per_s": round(member_steps / res["time_s"], 3),
                         "peak_mem_gb": None if res["peak_mem_gb"] is None else round(res["peak_mem_gb"], 2),
                         "max_abs_loss_diff": {},
                         # ops vmap ran one member at a time (no batching rule): where fusion gains less
                         "vmap_fallbacks": res["vmap_fallbacks"]}
    ok = [solos.get(j.name, {}) for j in members]
    if all(s.get("status") == "ok" for s in ok):
        seq = sum(s["time_s"] for s in ok)
        d["sequential_time_s"] = round(seq, 4)
        d["sequential_throughput_member_steps_per_s"] = round(member_steps / seq, 3)
        d["speedup"] = round(seq / res["time_s"], 3)
    for j, s, fl in zip(members, ok, res["losses"]):
        if s.get("status") == "ok":
            d["max_abs_loss_diff"][j.name] = max(abs(x - y) for x, y in zip(s["losses"], fl))
            d.setdefault("final_loss", {})[j.name] = {"fused": fl[-1], "solo": s["losses"][-1]}
    return d


def _markdown(out: dict[str, Any]) -> str:
    rows = []
    for fam in out["families"].values():
        for k, r in fam["fused"].items():
            diffs = list((r.get("max_abs_loss_diff") or {}).values())
            rows.append({"family": f"{fam['model']} (batch {fam['batch_size']}, {fam['precision']})", "K": k,
                         "status": r["status"], "fused member-steps/s": r.get("throughput_member_steps_per_s", ""),
                         "one after another": r.get("sequential_throughput_member_steps_per_s", ""),
                         "speedup": r.get("speedup", ""), "peak GB": r.get("peak_mem_gb") or "",
                         "max |loss diff|": f"{max(diffs):.2g}" if diffs else ""})
    return ("Measured: aggregate training throughput of K fused members (one vmapped model) against "
            f"the same K jobs one after another ({out['warmup']} warm-up + {out['steps']} timed steps each, "
            "start-up excluded); loss diff = max over members and steps of |fused - solo|.\n\n"
            + benchlib.md_table(rows, ["family", "K", "status", "fused member-steps/s", "one after another",
                                       "speedup", "peak GB", "max |loss diff|"]))


if __name__ == "__main__":
    sys.exit(main())
