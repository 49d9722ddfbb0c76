#!/usr/bin/env python
"""Planner benchmark: seeded random SPASE instances, 8-256 jobs, clusters of 1x8 .. 8x8 GPUs.

Per instance: makespan / lower bound, gain over each baseline, solve time, solver status. Writes
benchmarks/planner.json and the `planner` section of BENCHMARKS.md (through scripts/benchlib.py).

    python scripts/bench_planner.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from saturn.planner import plan, validate_plan  # noqa: E402
from saturn.planner.milp import _quiet_fd1  # noqa: E402
from saturn.planner.random_instances import random_instance  # noqa: E402

# (jobs, nodes x 8 GPUs, seeds, time limit s): limits follow the targets.
SUITE = [
    (8, 1, 2, 10), (16, 1, 3, 10), (32, 1, 2, 10),
    (16, 2, 2, 10), (32, 2, 2, 10), (64, 2, 2, 10),
    (64, 4, 1, 30), (128, 4, 1, 30),
    (128, 8, 1, 55), (256, 8, 1, 55),
]
QUICK = [(8, 1, 1, 5), (16, 1, 1, 5), (32, 2, 1, 5), (64, 4, 1, 10)]


def run(suite):
    results = []
    for n_jobs, n_nodes, seeds, limit in suite:
        for seed in range(seeds):
            jobs, cluster, prof = random_instance(n_jobs, [8] * n_nodes, seed=1000 * n_jobs + 10 * n_nodes + seed)
            t0 = time.perf_counter()
            p = plan(jobs, cluster, prof, time_limit_s=limit)
            wall = time.perf_counter() - t0
            validate_plan(p, jobs, cluster, prof)
            best_base = min(p.baselines.values())
            r = {
                "jobs": n_jobs, "gpus": f"{n_nodes}x8", "seed": seed, "time_limit_s": limit,
                "makespan_s": p.makespan_s, "lower_bound_s": p.lower_bound_s,
                "ratio": p.makespan_s / p.lower_bound_s, "solve_s": wall,
                "status": p.solver.status, "source": p.solver.source,
                "baselines_s": p.baselines,
                "gain": {k: v / p.makespan_s for k, v in p.baselines.items()},
                "vs_best_baseline": best_base / p.makespan_s,
            }
            results.append(r)
            print(f"{n_jobs:4d} jobs {n_nodes}x8  ratio {r['ratio']:.3f}  "
                  f"best-baseline/saturn {r['vs_best_baseline']:.3f}  "
                  f"{wall:5.1f}s  {p.solver.status:12s} {p.solver.source}", flush=True)
    return results


def summarize(results):
    big = [r for r in results if r["jobs"] >= 16]
    names = sorted({k for r in results for k in r["gain"]})
    lim = {f"{r['jobs']} jobs {r['gpus']}": r["time_limit_s"] for r in results}
    return {
        "median_ratio_ge16": statistics.median(r["ratio"] for r in big) if big else None,
        "worst_ratio": max(r["ratio"] for r in results),
        "median_gain": {k: statistics.median(r["gain"][k] for r in results if k in r["gain"]) for k in names},
        "min_vs_best_baseline": min(r["vs_best_baseline"] for r in results),
        "max_solve_s_le64_le16gpu": max((r["solve_s"] for r in results
                                         if r["jobs"] <= 64 and r["gpus"] in ("1x8", "2x8")), default=None),
        "max_solve_s_256_64gpu": max((r["solve_s"] for r in results if r["jobs"] == 256 and r["gpus"] == "8x8"),
                                     default=None),
        "max_overrun_s": max(r["solve_s"] - r["time_limit_s"] for r in results),
        "solve_s_by_class": {
            k: {"median": statistics.median(v), "max": max(v), "limit": lim[k], "n": len(v)}
            for k, v in _by_class(results).items()
        },
    }


def _by_class(results):
    out = {}
    for r in results:
        out.setdefault(f"{r['jobs']} jobs {r['gpus']}", []).append(r["solve_s"])
    return out


def markdown(meta, summ, results):
    g = summ["median_gain"]
    lines = [
        f"HiGHS {meta['highs']}, 1 solver thread. `time_limit_s` is the wall-clock budget of the whole `plan()` call",
        "(HiGHS is interrupted at the deadline); solve s = measured wall time of `plan()`.",
        "Instances: seeded random (`saturn/planner/random_instances.py`): small jobs that scale badly, mid-size jobs",
        "that need sharding or spilling, large jobs needing 4 GPUs, some needing a whole 8-GPU node.",
        "Ratio = makespan / valid lower bound (allotment bound, strengthened by a relaxed slot-MILP bound);",
        "gain = baseline makespan / Saturn makespan. All numbers from this one run, on a shared 2-core machine.",
        "",
        f"- median ratio (≥ 16 jobs): **{summ['median_ratio_ge16']:.3f}** (target ≤ 1.05); "
        f"worst ratio {summ['worst_ratio']:.3f}",
        "- never worse than the best baseline: min(best baseline / Saturn) = "
        f"{summ['min_vs_best_baseline']:.3f} (target ≥ 1.0)",
        "- median gain: " + ", ".join(f"{k} {v:.2f}x" for k, v in g.items()),
        f"- max solve time, ≤ 64 jobs on ≤ 16 GPUs: **{summ['max_solve_s_le64_le16gpu']:.1f} s** (target ≤ 10 s)"
        if summ["max_solve_s_le64_le16gpu"] is not None else None,
        f"- solve time, 256 jobs on 64 GPUs: **{summ['max_solve_s_256_64gpu']:.1f} s** (target ≤ 60 s)"
        if summ["max_solve_s_256_64gpu"] is not None else None,
        f"- largest overrun of the time limit: {summ['max_overrun_s']:+.2f} s (negative = finished early)",
        "",
        "Solve time per size class (s): "
        + "; ".join(f"{k}: median {v['median']:.1f}, max {v['max']:.1f} (limit {v['limit']:g})"
                    for k, v in summ["solve_s_by_class"].items()),
        "",
        "| jobs | GPUs | ratio | vs best baseline | whole node | one GPU | fixed split | greedy min-area "
        "| solve s | limit s | status | source |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    def gain(r, k):
        return f"{r['gain'][k]:.2f}x" if k in r["gain"] else "–"

    for r in results:
        lines.append(f"| {r['jobs']} | {r['gpus']} | {r['ratio']:.3f} | {r['vs_best_baseline']:.3f} | "
                     f"{gain(r, 'whole_node')} | {gain(r, 'one_gpu')} | {gain(r, 'fixed_split')} | "
                     f"{gain(r, 'greedy_min_area')} | {r['solve_s']:.1f} | "
                     f"{r['time_limit_s']:g} | {r['status']} | {r['source']} |")
    return "\n".join(x for x in lines if x is not None) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a 4-instance smoke run (~30 s); writes nothing")
    args = ap.parse_args()
    import highspy
    from benchlib import write_json, write_section

    with _quiet_fd1():
        highs = f"{highspy.Highs().version()}" if hasattr(highspy.Highs, "version") else "?"
    meta = {"highs": highs, "python": f"{platform.python_implementation()} {platform.python_version()}"}
    results = run(QUICK if args.quick else SUITE)
    summ = summarize(results)
    print(json.dumps(summ, indent=2))
    if args.quick:  # a smoke run must not overwrite the recorded results
        return
    write_json("planner", {**meta, "summary": summ, "instances": results})
    write_section("planner", "Planner (`saturn plan`)", markdown(meta, summ, results))


if __name__ == "__main__":
    main()
