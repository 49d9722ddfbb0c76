#!/usr/bin/env python
"""Benchmark SHARP (many spilled models, one pool of workers) against training them one after
another with spilling, and check that every model's losses equal its solo run.

GPU (the lead's run; three gpt-2.7b-class models, 7 GB of GPU memory, one H200):

    python scripts/bench_sharp.py --model gpt-2.7b --overrides '{"n_layer": 16}' --models 3 \\
        --memory-cap-gb 7 --steps 3

CPU slots (recorded here; 4 tiny models, SHARP with 1, 2 and 4 worker threads):

    python scripts/bench_sharp.py --quick

Measured (wall clock, model build excluded, every step's host optimizer included):
1. sequential: each model trained alone with spilling for --steps steps, one after another
   (on the GPU at the whole cap, i.e. its best shards);
2. SHARP with W workers (W from --workers): all models as one group (`saturn.sharp.SharpGroup`),
   Sharded-LRTF; on the GPU one worker on cuda:0, each engine planned for cap / models.
Aggregate throughput = model-steps per second. Idle fraction = 1 - busy / (wall * workers),
per worker. Loss check: SHARP's per-model losses vs the solo run (max abs difference; exact on
the CPU with the same shards). Targets: GPU: SHARP throughput >= sequential, losses equal
(|diff| <= 1e-3 on bf16 GPUs with other shard boundaries); CPU: reported, scaling 1 -> 2 -> 4.
Also writes the measured group as a planner profile row (`saturn.planner.sharp_option`).
Writes benchmarks/sharp.json (GPU) or benchmarks/sharp_cpu.json (--quick) and the matching
BENCHMARKS.md section (scripts/benchlib.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch

from saturn.spec.schema import Job


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gpt-2.7b")
    p.add_argument("--overrides", default='{"n_layer": 16}', help="JSON architecture overrides")
    p.add_argument("--models", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--memory-cap-gb", type=float, default=7.0)
    p.add_argument("--workers", default="1", help="comma-separated worker counts")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true",
                   help="CPU slots: 4 tiny models, workers 1,2,4; writes sharp_cpu.json")
    a = p.parse_args()
    if a.quick:
        a.device, a.model, a.models = "cpu", "gpt2-tiny", 4
        a.overrides = '{"n_layer": 4, "n_embd": 256, "n_head": 4}'
        a.batch_size, a.seq_len, a.steps, a.workers = 8, 128, 4, "1,2,4"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device; use --quick for the CPU-slot run")
    return a


def jobs_for(a: argparse.Namespace) -> list[Job]:
    over = json.loads(a.overrides)
    prec = "bf16" if a.device == "cuda" else "fp32"
    return [Job(name=f"m{i}", model={"name": a.model, "overrides": over},
                data="synthetic-tokens", batch_size=a.batch_size, seq_len=a.seq_len,
                steps=a.steps, precision=prec, seed=i,
                optimizer={"name": "adamw", "lr": 1e-4 * (i + 1), "weight_decay": 0.01})
            for i in range(a.models)]


def knobs_for(a: argparse.Namespace, share: int) -> dict[str, Any]:
    if a.device == "cpu":
        return {"shard_layers": 1}
    return {"gpu_budget_gb": round(0.9 * a.memory_cap_gb / share, 2)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def solo(job: Job, knobs: dict, device: torch.device, steps: int) -> dict:
    from saturn.sharp.jobs import build_member

    m = build_member(job, knobs, device, end_step=steps)
    eng = m.engine
    from saturn.zoo.data import batch_for_step

    sync(device)
    t0 = time.perf_counter()
    losses = [eng.train_step(*batch_for_step(m.dataset, s, job.batch_size)) for s in range(steps)]
    eng.synchronize()
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "losses": losses, "shards": len(eng.ranges)}
    eng.close()
    del m, eng
    gc.collect()
    return out


def sharp(jobs: list[Job], knobs: dict, device: torch.device, steps: int, workers: int) -> dict:
    from saturn.sharp import SharpGroup
    from saturn.sharp.jobs import build_member

    members = [build_member(j, knobs, device, end_step=steps) for j in jobs]
    group = SharpGroup(members, workers)
    sync(device)
    stats = group.run()
    out = {"wall_s": stats.wall_s, "workers": workers, "tasks": stats.tasks,
           "idle_fraction": stats.idle_fraction(workers),
           "idle_fraction_per_worker": {w: max(0.0, 1 - b / stats.wall_s)
                                        for w, b in stats.busy_s.items()},
           "losses": {m.name: [v for _, v in m.losses] for m in members},
           "shards": {m.name: len(m.engine.ranges) for m in members}}
    if device.type == "cuda":
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    for m in members:
        m.engine.close()
    del members, group
    gc.collect()
    return out


def main() -> int:
    a = parse()
    from saturn.planner.sharp_option import group_row
    from saturn.techniques.spilling import host_bytes_needed
    from saturn.techniques.spilling.technique import node_host_memory_bytes

    device = torch.device("cuda", 0) if a.device == "cuda" else torch.device("cpu")
    jobs = jobs_for(a)
    need = sum(host_bytes_needed(j, device.type) or 0 for j in jobs)
    have = node_host_memory_bytes()
    if have and need > 0.9 * have:
        print(f"error: the group needs ~{need / 2**30:.0f} GiB of host memory, this node has "
              f"{have / 2**30:.0f} GiB available; use --models fewer or a smaller --overrides",
              file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.cuda.set_device(device)
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.memory_cap_gb / total), device)
    else:
        torch.set_num_threads(1)  # the workers are the parallelism on CPU slots
    res: dict[str, Any] = {"solo": {}}
    for j in jobs:
        print(f"--- solo {j.name}", flush=True)
        res["solo"][j.name] = solo(j, knobs_for(a, 1), device, a.steps)
    seq_wall = sum(r["wall_s"] for r in res["solo"].values())
    model_steps = a.steps * len(jobs)
    res["sequential"] = {"wall_s": seq_wall, "throughput_steps_s": model_steps / seq_wall}
    gc.collect()
    if device.type == "cuda" and hasattr(torch._C, "_host_emptyCache"):
        torch._C._host_emptyCache()  # give the solo runs' cached pinned blocks back
    res["sharp"] = []
    for w in [int(x) for x in a.workers.split(",")]:
        print(f"--- SHARP, {w} worker(s)", flush=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        r = sharp(jobs, knobs_for(a, 1 if a.device == "cpu" else len(jobs)), device, a.steps, w)
        r["throughput_steps_s"] = model_steps / r["wall_s"]
        r["speedup_vs_sequential"] = seq_wall / r["wall_s"]
        r["max_abs_loss_diff_vs_solo"] = max(
            abs(x - y) for j in jobs for x, y in zip(r["losses"][j.name],
                                                    res["solo"][j.name]["losses"]))
        res["sharp"].append(r)
        print(f"    wall {r['wall_s']:.3f} s, x{r['speedup_vs_sequential']:.2f} vs sequential, "
              f"idle {r['idle_fraction']:.3f}, loss diff {r['max_abs_loss_diff_vs_solo']:.2e}",
              flush=True)
    base = res["sharp"][0]
    for r in res["sharp"]:
        r["scaling_vs_first"] = base["wall_s"] / r["wall_s"]
    tol = 0.0 if device.type == "cpu" else 1e-3
    best = max(res["sharp"], key=lambda r: r["throughput_steps_s"])
    targets = {"sharp_throughput_over_sequential": round(best["speedup_vs_sequential"], 3),
               "losses_equal_solo": all(r["max_abs_loss_diff_vs_solo"] <= tol
                                        for r in res["sharp"])}
    if device.type == "cuda":
        targets["sharp_not_slower_than_sequential_ok"] = best["speedup_vs_sequential"] >= 1.0
    gpus = 1 if device.type == "cuda" else best["workers"]
    res["profile_row"] = group_row([j.name for j in jobs], best["wall_s"] / model_steps, gpus,
                                   knobs={"workers": best["workers"]},
                                   gpu_type=torch.cuda.get_device_name(device)
                                   if device.type == "cuda" else None)
    cfg = {"model": a.model, "overrides": json.loads(a.overrides), "models": a.models,
           "batch_size": a.batch_size, "seq_len": a.seq_len, "steps": a.steps,
           "precision": jobs[0].precision, "memory_cap_gb": a.memory_cap_gb if a.device == "cuda"
           else None, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_average_1m_at_end": round(os.getloadavg()[0], 2)}
    report = {"benchmark": "sharp", "config": cfg, "results": res, "targets": targets}
    md = markdown(report)
    print(md)
    from benchlib import write_json, write_section

    name = "sharp" if device.type == "cuda" else "sharp_cpu"
    path = write_json(name, report)
    where = "one GPU" if device.type == "cuda" else "CPU slots"
    write_section(name, f"SHARP: {a.models} spilled models on {where}", md)
    print(f"wrote {path} and the {name} section of BENCHMARKS.md")
    return 0


def markdown(r: dict) -> str:
    c, res, tg = r["config"], r["results"], r["targets"]
    lines = [f"{c['models']} x {c['model']} {c['overrides']}, batch {c['batch_size']} x seq "
             f"{c['seq_len']}, {c['precision']}, {c['steps']} steps each"
             + (f", GPU memory capped at {c['memory_cap_gb']} GB" if c["memory_cap_gb"] else
                f", {c['cpu_count']} CPU cores shared with other work (1-min load average "
                f"{c['load_average_1m_at_end']} at the end), 1 torch thread per worker")
             + ". Measured wall clock (model build excluded).\n",
             "| run | wall s | model-steps/s | vs sequential | scaling | idle fraction | "
             "max loss diff vs solo |", "|---|---|---|---|---|---|---|",
             f"| sequential (solo spilling, one after another) | {res['sequential']['wall_s']:.3f} "
             f"| {res['sequential']['throughput_steps_s']:.3f} | 1.00 | | | 0 |"]
    for s in res["sharp"]:
        lines.append(f"| SHARP, {s['workers']} worker(s) | {s['wall_s']:.3f} | "
                     f"{s['throughput_steps_s']:.3f} | {s['speedup_vs_sequential']:.2f} | "
                     f"{s['scaling_vs_first']:.2f} | {s['idle_fraction']:.3f} "
                     f"({', '.join(f'{v:.2f}' for v in s['idle_fraction_per_worker'].values())}) "
                     f"| {s['max_abs_loss_diff_vs_solo']:.1e} |")
    lines.append("")
    lines.append(f"Targets: {json.dumps(tg)}. Planner profile row from this run: "
                 f"`{res['profile_row']['job']}` step_time_s "
                 f"{res['profile_row']['step_time_s']:.4f} on {res['profile_row']['gpus']} "
                 f"device(s) (measured).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
