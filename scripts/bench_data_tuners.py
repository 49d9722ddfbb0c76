#!/usr/bin/env python
"""Hill climber vs InTune-style RL agent (saturn.data tuners) on pipelines with known stage costs.

Stages cost a fixed *simulated* time per item (time.sleep, which releases the GIL, so each worker
thread stands for one core whatever the host's load), the core budget is what the tuner enforces.
That makes the comparison about the policies, not about a busy host: the throughput, convergence
times and move counts are *measured* on the real Pipeline with the real tuners.

Scenarios (start: 1 worker per stage, prefetch 4, consumer pulls as fast as it can):
  slow-stage     budget 8; decode costs 10x read: the tuners must move cores to decode
  cost-shift     budget 8; at mid-run decode gets 5x cheaper and augment 4x dearer (bottleneck moves)
  budget-shrink  budget 10 -> 6 at mid-run (a co-located job starts: the ledger's share drops)
Per phase (before / after the change): time to converge (first time a 2-window rolling throughput
reaches 90% of the best static split), steady throughput (last 40% of the phase) vs the best
static split, moves and reverted moves. Best static split: every split of the budget ranked by the
capacity model (min over stages of workers / cost), the top `--grid-top` of them *measured*.

    python scripts/bench_data_tuners.py            # ~4 min; writes benchmarks/data_tuners.json + BENCHMARKS.md
    python scripts/bench_data_tuners.py --quick    # ~1.5 min smoke run; writes only --json PATH if given
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from saturn.data.pipeline import Pipeline, Stage  # noqa: E402
from saturn.data.policies import make_tuner  # noqa: E402
from saturn.data.simpipe import ModelPipe  # noqa: E402

BATCH = 8
SAMPLE_STAGES = ("read", "decode", "augment")
BASE = {"read": 0.002, "decode": 0.020, "augment": 0.006, "collate": 0.016}  # s per item (collate: per batch)
SCENARIOS = {
    "slow-stage": dict(budget=(8, 8), costs=(BASE, BASE)),
    "cost-shift": dict(budget=(8, 8), costs=(BASE, {**BASE, "decode": 0.004, "augment": 0.024})),
    "budget-shrink": dict(budget=(10, 6), costs=(BASE, BASE)),
}


def build(costs: dict[str, float], workers: dict[str, int], prefetch: int = 4) -> Pipeline:
    """A 3-stage + collate pipeline whose stage i sleeps costs[stage] per item (costs read live)."""
    def stage(name):
        return Stage(name, lambda x, i, n=name: (time.sleep(costs[n]), i if x is None else x)[1], workers[name])

    collate = Stage("collate", lambda xs, b: (time.sleep(costs["collate"]), (np.asarray(xs), b))[1],
                    workers["collate"])
    return Pipeline([stage(n) for n in SAMPLE_STAGES], collate, lambda b: list(range(b * BATCH, (b + 1) * BATCH)),
                    prefetch=prefetch)


def model_throughput(costs: dict[str, float], split: dict[str, int]) -> float:
    caps = [split[n] / costs[n] for n in SAMPLE_STAGES] + [split["collate"] * BATCH / costs["collate"]]
    return min(caps)


def splits(budget: int) -> list[dict[str, int]]:
    names = (*SAMPLE_STAGES, "collate")
    return [dict(zip(names, c)) for c in itertools.product(range(1, budget), repeat=len(names)) if sum(c) == budget]


def measure_static(costs: dict[str, float], split: dict[str, int], seconds: float) -> float:
    pipe = build(dict(costs), split)
    try:
        t_end = time.perf_counter() + 0.3
        while time.perf_counter() < t_end:
            pipe.get()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += len(pipe.get()[0])
        return n / (time.perf_counter() - t0)
    finally:
        pipe.close()


def grid_best(costs: dict[str, float], budget: int, top: int, seconds: float) -> dict:
    ranked = sorted(splits(budget), key=lambda s: -model_throughput(costs, s))[:top]
    measured = [(measure_static(costs, s, seconds), s) for s in ranked]
    thr, split = max(measured, key=lambda m: m[0])
    return {"samples_per_s": thr, "split": split, "model_samples_per_s": model_throughput(costs, ranked[0]),
            "splits_total": len(splits(budget)), "splits_measured": len(ranked)}


def run_tuner(kind: str, sc: dict, duration: float, window_s: float, seed: int) -> dict:
    costs = dict(sc["costs"][0])
    budget = {"n": sc["budget"][0]}
    pipe = build(costs, {n: 1 for n in (*SAMPLE_STAGES, "collate")})
    kw = {"seed": seed} if kind == "rl" else {}
    tuner = make_tuner(kind, pipe, budget=lambda: budget["n"], batch_size=BATCH, window_s=window_s, **kw)
    wall0, t0 = time.time(), time.perf_counter()
    shift_t, shifted, trace = duration / 2, False, []
    tuner.start()
    try:
        while (t := time.perf_counter() - t0) < duration:
            n = len(pipe.get()[0])
            trace.append((time.perf_counter() - t0, n))
            if not shifted and t >= shift_t:
                costs.update(sc["costs"][1])
                budget["n"] = sc["budget"][1]
                shifted = True
    finally:
        tuner.stop()
        pipe.close()
    events = [(r["time"] - wall0, r["action"]) for r in tuner.history]
    return {"trace": trace, "events": events, "shift_t": shift_t, "final_workers": dict(pipe.workers),
            "final_prefetch": pipe.prefetch}


def _rate(trace, a, b) -> float:
    n = sum(k for t, k in trace if a <= t < b)
    return n / (b - a) if b > a else 0.0


def phase_metrics(run: dict, a: float, b: float, best: float, window_s: float) -> dict:
    tr = run["trace"]
    conv = None
    t = a + 2 * window_s
    while t <= b:
        if _rate(tr, t - 2 * window_s, t) >= 0.9 * best:
            conv = t - a
            break
        t += window_s / 2
    steady = _rate(tr, b - 0.4 * (b - a), b)
    ev = [e for tt, e in run["events"] if a <= tt < b]
    return {"converge_s": conv, "steady_samples_per_s": steady, "vs_best_static": steady / best,
            "moves": sum(e in ("move", "prefetch") for e in ev), "reverts": ev.count("revert"),
            "decisions": len(ev)}


def model_study(sc: dict, kind: str, seeds: int, windows: int = 40) -> list[dict]:
    """The same scenario on the capacity model (saturn.data.simpipe: no timing noise), `seeds` runs:
    windows to reach 90% of the best split, final/best, reverts, per phase (change at `windows`;
    converge_windows_max = windows + 1 when some run never got there)."""
    names = (*SAMPLE_STAGES, "collate")
    runs = []
    for seed in range(seeds if kind == "rl" else 1):  # hill is deterministic
        pipe = ModelPipe({n: sc["costs"][0][n] for n in names}, {}, BATCH, prefetch=4)
        budget = {"n": sc["budget"][0]}
        tuner = make_tuner(kind, pipe, budget=lambda b=budget: b["n"], batch_size=BATCH,
                           **({"seed": seed} if kind == "rl" else {}))
        phases = []
        for k in (0, 1):
            pipe.costs.update(sc["costs"][k])
            budget["n"] = sc["budget"][k]
            best = pipe.best(budget["n"])[0]
            n0, conv, caps = len(tuner.history), None, []
            for i in range(windows):
                tuner.step(pipe.window())
                caps.append(pipe.capacity())
                if conv is None and caps[-1] >= 0.9 * best:
                    conv = i + 1
            ev = [r["action"] for r in tuner.history[n0:]]
            phases.append({"converge_windows": conv, "final_vs_best": statistics.median(caps[-10:]) / best,
                           "reverts": ev.count("revert"), "moves": sum(e in ("move", "prefetch") for e in ev)})
        runs.append(phases)
    return [{"converge_windows_median": _med([r[i]["converge_windows"] for r in runs]),
             "converge_windows_max": max((r[i]["converge_windows"] or windows + 1) for r in runs),
             "never_converged": sum(r[i]["converge_windows"] is None for r in runs),
             "final_vs_best_min": min(r[i]["final_vs_best"] for r in runs),
             "reverts_mean": statistics.mean(r[i]["reverts"] for r in runs),
             "moves_mean": statistics.mean(r[i]["moves"] for r in runs), "runs": len(runs)} for i in (0, 1)]


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs, 1 repeat (~1.5 min); writes only --json")
    ap.add_argument("--json", default=None)
    ap.add_argument("--tuners", default="hill,rl")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--grid-top", type=int, default=6)
    args = ap.parse_args()
    tuners = [t.strip() for t in args.tuners.split(",") if t.strip()]
    duration, window_s = (12.0, 0.5) if args.quick else (20.0, 0.5)
    reps = args.reps or (1 if args.quick else 2)
    grid_s = 0.6 if args.quick else 1.0
    t_all = time.perf_counter()
    results = {}
    for name, sc in SCENARIOS.items():
        best = [grid_best(sc["costs"][k], sc["budget"][k], args.grid_top, grid_s) for k in (0, 1)]
        print(f"{name}: best static {best[0]['samples_per_s']:.0f} -> {best[1]['samples_per_s']:.0f} samples/s "
              f"({best[0]['split']} -> {best[1]['split']})", flush=True)
        res = {"best_static": best, "tuners": {}, "model": {}}
        for kind in tuners:
            res["model"][kind] = model_study(sc, kind, seeds=30)
            runs = []
            for r in range(reps):
                run = run_tuner(kind, sc, duration, window_s, seed=r)
                ph = [phase_metrics(run, 0.0, run["shift_t"], best[0]["samples_per_s"], window_s),
                      phase_metrics(run, run["shift_t"], duration, best[1]["samples_per_s"], window_s)]
                runs.append({"phases": ph, "final_workers": run["final_workers"],
                             "final_prefetch": run["final_prefetch"]})
                print(f"  {kind:4s} rep {r}: " + " | ".join(
                    f"conv {p['converge_s'] if p['converge_s'] is not None else 'never'} s, "
                    f"{p['steady_samples_per_s']:.0f} samples/s ({100 * p['vs_best_static']:.0f}% of best), "
                    f"{p['moves']} moves, {p['reverts']} reverts" for p in ph) + f"; final {run['final_workers']}",
                    flush=True)
            summ = [{k: _med([ru["phases"][i][k] for ru in runs]) for k in runs[0]["phases"][0]} for i in (0, 1)]
            for i in (0, 1):
                summ[i]["never_converged"] = sum(ru["phases"][i]["converge_s"] is None for ru in runs)
            res["tuners"][kind] = {"runs": runs, "median": summ}
        results[name] = res
    wall = time.perf_counter() - t_all
    md = markdown(results, tuners, duration, window_s, reps, args.grid_top, wall)
    print(md)
    out = {"scenarios": results, "duration_s": duration, "window_s": window_s, "reps": reps, "wall_s": wall,
           "quick": args.quick, "stage_costs": "simulated (sleep per item); throughput, convergence, moves measured"}
    from benchlib import stamp, write_json, write_section

    if args.json:
        Path(args.json).write_text(json.dumps({**stamp(), **out}, indent=2, default=str) + "\n")
    if not args.quick:
        write_json("data_tuners", out)
        write_section("data_tuners", "Input-pipeline tuners: hill climber vs RL agent (`saturn.data`)", md)


def markdown(results, tuners, duration, window_s, reps, top, wall) -> str:
    def f(v, fmt):
        return "never" if v is None else format(v, fmt)

    lines = [
        f"Simulated stage costs (sleep per item: read 2 ms, decode 20 ms, augment 6 ms, collate 16 ms per batch of "
        f"{BATCH}), real Pipeline and tuners; {duration:g} s runs, {window_s:g} s windows, change at mid-run, start "
        f"from 1 worker per stage; medians of {reps} run(s) (measured, noisy: shared CPU). Best static = best "
        f"*measured* of the top {top} splits ranked by the capacity model. Converge = first time a 2-window "
        f"throughput reaches 90% of that best. Total wall {wall:.0f} s.",
        "",
        "| scenario | phase | tuner | converge (s) | steady samples/s | vs best static | moves | reverts |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        for i, phase in enumerate(("before", "after")):
            if name == "slow-stage" and i == 1:
                continue  # nothing changes at mid-run: the second half is the same steady state
            best = res["best_static"][i]
            for kind in tuners:
                m = res["tuners"][kind]["median"][i]
                lines.append(f"| {name} | {phase} (best {best['samples_per_s']:.0f}) | {kind} | "
                             f"{f(m['converge_s'], '.1f')} | {m['steady_samples_per_s']:.0f} | "
                             f"{m['vs_best_static']:.2f} | {m['moves']:g} | {m['reverts']:g} |")
    lines += ["", "Same scenarios on the capacity model (`saturn.data.simpipe`, *simulated*, no timing noise; 40 "
              "windows per phase; rl: 30 seeds, hill: deterministic):", "",
              "| scenario | phase | tuner | windows to 90% (median / worst) | never | final vs best (worst) | "
              "moves (mean) | reverts (mean) |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, res in results.items():
        for i, phase in enumerate(("before", "after")):
            if name == "slow-stage" and i == 1:
                continue
            for kind in tuners:
                m = res["model"][kind][i]
                lines.append(f"| {name} | {phase} | {kind} | {f(m['converge_windows_median'], 'g')} / "
                             f"{'never' if m['never_converged'] else m['converge_windows_max']} | "
                             f"{m['never_converged']}/{m['runs']} | "
                             f"{m['final_vs_best_min']:.2f} | {m['moves_mean']:.1f} | {m['reverts_mean']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
