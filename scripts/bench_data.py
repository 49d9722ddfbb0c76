#!/usr/bin/env python
"""Input-pipeline benchmark: a CPU-bound JPEG pipeline feeding 1, 2 and 4 concurrent jobs on one host.

Per scenario (N jobs at once, each in its own process) the ways to feed them:
  default  - torch DataLoader with PyTorch's defaults (num_workers=0: decode+augment in the loop)
  grid:W   - DataLoader with num_workers=W per job (pin_memory, persistent workers), W over a grid;
             the best is the "hand-tuned" DataLoader, W=8 is the "naive" setting every job takes
  saturn   - saturn.data's tuned pipeline as a workload gets it: stages in a process pool
             (saturn.data.procpipe) sized by the job's share of a CoreLedger of the host's cores,
             the tuner moving processes between the jobs by their data wait (no grid)
Measured per job: ingestion (samples/s the training loop consumed), GPU idle fraction (share of
wall time the loop waited for data), and for saturn the time from its first batch request until
throughput first reached 90% of its steady state (convergence). The GPU step is *simulated* (a
fixed sleep after copying the batch to the GPU when there is one), calibrated so that one job
needs about DEMAND_CORES cores of input work: the CPU side -- what this benchmark is about -- is
real.

Targets (issue 35), at every job count: Saturn >= 0.9x the best hand-tuned DataLoader, >= 2x the
defaults, converged within 60 s of its first batch; with 4 jobs >= 1.2x the naive num_workers=8.

    python scripts/bench_data.py            # ~3 min on a 16-core host (estimated: 108 s of measured
                                            # windows + start-ups); writes benchmarks/data.json
                                            # (after every arm) and the BENCHMARKS.md section
    python scripts/bench_data.py --quick --json /tmp/data-quick.json   # ~1.5 min CPU smoke run
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Jobs run in spawned processes that copy batches to the GPU (on an H100 host a forked job found
# CUDA already initialized in this parent and could not use it). NVML answers
# torch.cuda.is_available() without initializing CUDA. Inside a job, the pipelines fork their
# workers, which never touch the GPU.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

FULL = dict(images=512, size=160, out=64, heavy=2, batch=64, scenarios=[1, 2, 4], static_s=4.0, tune_s=16.0,
            warm_s=1.0, window_s=1.0, demand_cores=6.0, grid=[2, 4, 8, 16], naive=8)
QUICK = dict(images=64, size=64, out=32, heavy=1, batch=16, scenarios=[1, 2, 4], static_s=2.5, tune_s=6.0,
             warm_s=0.5, window_s=0.5, demand_cores=1.5, grid=[1, 2], naive=2)


class MapImages:
    """A map-style torch Dataset over ImageFiles (what a DataLoader user writes)."""

    def __init__(self, src):
        self.src = src

    def __len__(self):  # endless (positions past the files are later epochs, as in saturn.data)
        return 10**9

    def __getitem__(self, i):
        import torch

        x, y = self.src.sample(i)
        return torch.from_numpy(x), y


def _iterator(arm: str, cfg: dict, src, job: str, ledger_path: str, cores: int):
    import torch

    if arm == "default":
        return iter(torch.utils.data.DataLoader(MapImages(src), batch_size=cfg["batch"])), None
    if arm.startswith("grid:"):
        w = int(arm.split(":")[1])
        dl = torch.utils.data.DataLoader(MapImages(src), batch_size=cfg["batch"], num_workers=w,
                                         pin_memory=torch.cuda.is_available(), persistent_workers=True)
        return iter(dl), None
    from saturn.data import PipelineDataset

    # as a workload gets it (saturn.data.with_defaults), its want = the host's cores: the ledger
    # splits them fairly among the jobs present, then moves them by data wait
    ds = PipelineDataset(src, processes=True, tune=True, tuner=arm.split(":")[1], cores=cores, prefetch=2,
                         pin=torch.cuda.is_available(), window_s=cfg["window_s"], ledger=ledger_path, job=job)
    ds.attach_job_dir(f"{ledger_path}-{job}")  # where its tuner logs
    state = {"step": 0}

    def gen():
        while True:
            yield ds.batch_for_step(state["step"], cfg["batch"])
            state["step"] += 1
    return gen(), ds


def run_job(arm: str, cfg: dict, data_dir: str, job: str, ledger_path: str, cores: int,
            step_s: float, duration: float, barrier, out_q) -> None:
    import torch

    from saturn.data import ImageFiles

    dev = torch.device("cuda") if torch.cuda.is_available() else None
    if dev is not None:  # the CUDA context starts here, not in the measured window (and before
        torch.zeros(1, device=dev)  # DataLoader forks its workers, which never touch the GPU)
    src = ImageFiles(data_dir, out_size=cfg["out"], seed=1, heavy=cfg["heavy"])
    barrier.wait()  # all jobs start together (the ledger sees them all before the first batch)
    t_first = time.perf_counter()
    it, ds = _iterator(arm, cfg, src, job, ledger_path, cores)
    next(it)  # start-up (worker processes, first batch) is not in the throughput
    first_batch_s = time.perf_counter() - t_first
    barrier.wait()
    t_start = time.perf_counter()
    trace = []  # (t since start, samples, wait)
    while time.perf_counter() - t_start < duration:
        t0 = time.perf_counter()
        x, _ = next(it)
        wait = time.perf_counter() - t0
        if dev is not None:
            x.to(dev, non_blocking=True)
            torch.cuda.synchronize()
        time.sleep(step_s)  # the simulated GPU step
        trace.append((time.perf_counter() - t_start, int(x.shape[0]), wait))
    tuner_log, pool = [], {}
    if ds is not None:
        from saturn.data.tuner import read_log

        tuner_log = read_log(os.path.join(ds.job_dir, "data_tuner.jsonl"))
        pipe = ds._pipe
        pool = {"started": pipe.started, "retired": pipe.retired, "deaths": len(pipe.deaths),
                "workers": pipe.workers}
        ds.shutdown()
    out_q.put({"job": job, "arm": arm, "trace": trace, "tuner": tuner_log, "pool": pool,
               "first_batch_s": first_batch_s})
    out_q.close()
    out_q.join_thread()  # flushed before the hard exit below
    os._exit(0)  # skip DataLoader/pool teardown: results are out


def _window(trace, t0, t1):
    pts = [(t, n, w) for t, n, w in trace if t0 <= t < t1]
    if len(pts) < 2:
        return 0.0, 1.0
    span = pts[-1][0] - pts[0][0] + 1e-9
    samples = sum(n for _, n, _ in pts[1:])
    return samples / span, sum(w for _, _, w in pts[1:]) / span


def measure(arm: str, cfg: dict, data_dir: str, n_jobs: int, step_s: float, duration: float, tmp: str) -> dict:
    ctx = mp.get_context("spawn")
    cores = os.cpu_count() or 1
    barrier, q = ctx.Barrier(n_jobs), ctx.Queue()
    ledger = os.path.join(tmp, f"ledger-{arm}-{n_jobs}-{time.time_ns()}.json")
    procs = [ctx.Process(target=run_job, args=(arm, cfg, data_dir, f"job{k}", ledger, cores, step_s,
                                               duration, barrier, q)) for k in range(n_jobs)]
    for p in procs:
        p.start()
    results, deadline = [], time.time() + duration + 300
    while len(results) < n_jobs:
        try:
            results.append(q.get(timeout=1.0))
        except Exception:  # noqa: BLE001 - queue.Empty: check that the jobs are still alive
            if time.time() > deadline or not any(p.is_alive() for p in procs):
                raise RuntimeError(f"{arm} x{n_jobs}: a job died or hung (see its traceback above)") from None
    for p in procs:
        p.join(timeout=30)
    tuned = arm.startswith("saturn")
    warm = cfg["warm_s"] if not tuned else duration / 2  # saturn: steady state = 2nd half
    per_job = []
    for r in results:
        thr, idle = _window(r["trace"], warm, duration + 1)
        rec = {"job": r["job"], "samples_per_s": thr, "gpu_idle_frac": min(1.0, idle)}
        if tuned:  # from its first batch request: start-up + time to 90% of the steady state
            rec["convergence_s"] = r["first_batch_s"] + _convergence(r["trace"], thr, cfg["window_s"])
            rec["first_batch_s"] = r["first_batch_s"]
            rec["whole_run_samples_per_s"] = _window(r["trace"], 0, duration + 1)[0]
            rec["tuner_decisions"] = len(r["tuner"])
            rec["tuner_reverts"] = sum(d["action"] == "revert" for d in r["tuner"])
            rec["core_moves"] = sum(d["action"] == "budget" for d in r["tuner"])
            rec["stage_cores"] = r["tuner"][-1].get("cores") if r["tuner"] else None
            rec["pool"] = r["pool"]
        per_job.append(rec)
    total = sum(j["samples_per_s"] for j in per_job)
    out = {"arm": arm, "jobs": n_jobs, "samples_per_s": total,
           "gpu_idle_frac": statistics.mean(j["gpu_idle_frac"] for j in per_job), "per_job": per_job}
    if tuned:
        out["convergence_s"] = max(j["convergence_s"] for j in per_job)
        out["tuner_reverts"] = sum(j["tuner_reverts"] for j in per_job)
        out["core_moves"] = sum(j["core_moves"] for j in per_job)
    print(f"  {arm:11s} x{n_jobs}: {total:8.1f} samples/s, GPU idle {100 * out['gpu_idle_frac']:5.1f}%"
          + (f", converged in {out['convergence_s']:.1f} s, {out['tuner_reverts']} reverts, "
             f"{out['core_moves']} budget changes" if tuned else ""),
          flush=True)
    return out


def _convergence(trace, steady: float, window: float) -> float:
    """First time the rolling 2-window throughput reached 90% of the steady state."""
    t = 0.0
    end = trace[-1][0] if trace else 0.0
    while t + 2 * window <= end:
        if _window(trace, t, t + 2 * window)[0] >= 0.9 * steady:
            return t + 2 * window
        t += window / 2
    return end


def calibrate(cfg: dict, data_dir: str) -> dict:
    """Single-core cost of one batch, and the simulated GPU step that needs `demand_cores` of it."""
    from saturn.data import ImageFiles

    src = ImageFiles(data_dir, out_size=cfg["out"], seed=1, heavy=cfg["heavy"])
    for i in range(8):
        src.sample(i)
    c0, n = time.process_time(), 3 * cfg["batch"]
    for i in range(n):
        src.sample(i)
    per_sample = (time.process_time() - c0) / n
    step_s = per_sample * cfg["batch"] / cfg["demand_cores"]
    return {"cpu_s_per_sample": per_sample, "single_core_samples_per_s": 1 / per_sample, "step_s": step_s,
            "demand_samples_per_s_per_job": cfg["batch"] / step_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small CPU smoke run (~1.5 min); writes only --json")
    ap.add_argument("--json", default=None, help="also write the results here (quick mode writes nothing else)")
    ap.add_argument("--tuners", default="hill", help="tuner policies to measure, comma-separated (hill, rl); "
                    "the table's Saturn columns show hill when measured, else the first")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop starting new measurements after this many seconds (those left are recorded "
                    "as skipped); default 290 (full), 150 (--quick)")
    args = ap.parse_args()
    from saturn.data.policies import TUNERS

    tuners = [t.strip() for t in args.tuners.split(",") if t.strip()]
    if not tuners or any(t not in TUNERS for t in tuners):
        print(f"--tuners: expected a comma-separated subset of {','.join(TUNERS)}, got {args.tuners!r}",
              file=sys.stderr)
        sys.exit(2)
    if args.budget_s is not None and not args.budget_s > 0:
        print(f"--budget-s: expected a positive number of seconds, got {args.budget_s}", file=sys.stderr)
        sys.exit(2)
    main_tuner = "hill" if "hill" in tuners else tuners[0]
    cfg = QUICK if args.quick else FULL
    budget_s = args.budget_s or (150.0 if args.quick else 290.0)
    from benchlib import write_json, write_json_at, write_section

    from saturn.data import make_image_files
    from saturn.data.images import image_format

    t_all = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="saturn-bench-data-")
    data_dir = str(make_image_files(Path(tmp) / "images", cfg["images"], size=cfg["size"], seed=0))
    cal = calibrate(cfg, data_dir)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    print(f"{cores} cores; {cfg['images']} {image_format()} files {cfg['size']}px -> {cfg['out']}px; one core makes "
          f"{cal['single_core_samples_per_s']:.0f} samples/s; simulated GPU step {1000 * cal['step_s']:.1f} ms "
          f"= {cal['demand_samples_per_s_per_job']:.0f} samples/s per job", flush=True)
    result: dict = {"config": cfg, "cores": cores, "calibration": cal, "scenarios": [], "skipped": [],
                    "quick": args.quick, "budget_s": budget_s,
                    "gpu_step": "simulated (sleep after a real host-to-GPU copy when a GPU is present)"}

    def save() -> None:
        result["wall_s"] = time.perf_counter() - t_all
        if args.json:
            write_json_at(Path(args.json), result)
        if not args.quick:
            write_json("data", result)

    def run(arm: str, n: int, duration: float) -> dict | None:
        if time.perf_counter() - t_all + duration > budget_s:
            result["skipped"].append(f"{arm} x{n} (--budget-s {budget_s:g} reached)")
            print(f"  {arm:11s} x{n}: skipped (--budget-s {budget_s:g} reached)", flush=True)
            return None
        return measure(arm, cfg, data_dir, n, cal["step_s"], duration, tmp)

    for n in cfg["scenarios"]:
        print(f"{n} concurrent job(s):", flush=True)
        sc: dict = {"jobs": n, "default": run("default", n, cfg["static_s"]), "grid": []}
        result["scenarios"].append(sc)
        save()
        for w in cfg["grid"]:
            r = run(f"grid:{w}", n, cfg["static_s"])
            if r is not None:
                sc["grid"].append(r)
            save()
        sc["tuners"] = {}
        for t in tuners:
            sc["tuners"][t] = run(f"saturn:{t}", n, cfg["tune_s"])
            save()
        _score(sc, cfg, main_tuner)
        save()
    md = markdown(cfg, cal, result, cores)
    print(md)
    result["wall_s"] = time.perf_counter() - t_all
    save()
    if not args.quick:
        write_section("data", "Input pipelines (`saturn.data`, InTune-style tuning)", md)


def _score(sc: dict, cfg: dict, main_tuner: str) -> None:
    """Ratios and targets of one scenario (None where an arm was skipped)."""
    grid = sc["grid"]
    best = max(grid, key=lambda r: r["samples_per_s"]) if grid else None
    naive = next((g for g in grid if g["arm"] == f"grid:{cfg['naive']}"), None)
    saturn = sc["tuners"].get(main_tuner)
    sc["hand_tuned_best"] = best["arm"] if best else None
    sc["saturn"], sc["saturn_tuner"] = saturn, main_tuner

    def ratio(ref: dict | None) -> float | None:
        return saturn["samples_per_s"] / ref["samples_per_s"] if saturn and ref and ref["samples_per_s"] else None

    for r in sc["tuners"].values():
        if r and best:
            r["vs_hand_tuned"] = r["samples_per_s"] / best["samples_per_s"]
    sc["vs_hand_tuned"], sc["speedup_vs_default"], sc["vs_naive"] = ratio(best), ratio(sc["default"]), ratio(naive)

    def at_least(v: float | None, x: float) -> bool | None:
        return None if v is None else v >= x

    sc["targets"] = {"ge_0.9x_hand_tuned": at_least(sc["vs_hand_tuned"], 0.9),
                     "ge_2x_defaults": at_least(sc["speedup_vs_default"], 2.0),
                     "converged_le_60s": None if saturn is None else saturn["convergence_s"] <= 60.0,
                     "ge_1.2x_naive": at_least(sc["vs_naive"], 1.2) if sc["jobs"] == 4 else None}


def markdown(cfg: dict, cal: dict, result: dict, cores: int) -> str:
    def met(v):
        return "n/a" if v is None else ("met" if v else "**missed**")

    def num(r, key="samples_per_s", fmt="{:.0f}"):
        return "skipped" if r is None else fmt.format(r[key])

    def x(v, fmt="{:.2f}×"):
        return "n/a" if v is None else fmt.format(v)

    label = f"{cores}-core host" + (" (quick mode: small images, short runs)" if result["quick"] else "")
    lines = [
        f"{label}. CPU-bound JPEG pipeline (decode, random-resized crop, flip, jitter, {cfg['heavy']} blur "
        f"passes), batch {cfg['batch']}; one core makes {cal['single_core_samples_per_s']:.0f} samples/s (measured). "
        f"GPU step **simulated**: {1000 * cal['step_s']:.1f} ms per batch, i.e. one job needs ~{cfg['demand_cores']:g} "
        "cores of input work. Throughput = samples/s the training loops consumed (sum over jobs, measured); "
        "GPU idle = share of wall time a loop waited for data (mean over jobs, measured). DataLoader arms: "
        f"{cfg['static_s']:g} s each after start-up; hand-tuned = best of num_workers ∈ "
        f"{{{', '.join(map(str, cfg['grid']))}}} per job; naive = num_workers={cfg['naive']} for every job. "
        f"Saturn: process pool per job sized by the host's core ledger, tuned online (no grid); steady state = "
        f"second half of a {cfg['tune_s']:g} s run; converged = from its first batch request to 90% of steady "
        f"state. Total wall time {result.get('wall_s', 0):.0f} s.",
        "",
        "| jobs | defaults | hand-tuned best | naive | Saturn | Saturn GPU idle | vs defaults | vs hand-tuned | "
        "vs naive | converged (s) | ≥0.9× hand-tuned | ≥2× defaults | ≤60 s | ≥1.2× naive (4 jobs) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for s in result["scenarios"]:
        if "targets" not in s:
            continue
        best = next((g for g in s["grid"] if g["arm"] == s["hand_tuned_best"]), None)
        naive = next((g for g in s["grid"] if g["arm"] == f"grid:{cfg['naive']}"), None)
        sat, t = s["saturn"], s["targets"]
        best_txt = "skipped" if best is None else f"{best['samples_per_s']:.0f} (num_workers={best['arm'][5:]})"
        lines.append(
            f"| {s['jobs']} | {num(s['default'])} | {best_txt} | {num(naive)} | {num(sat)} | "
            f"{num(sat, 'gpu_idle_frac', '{:.0%}')} | {x(s['speedup_vs_default'])} | {x(s['vs_hand_tuned'])} | "
            f"{x(s['vs_naive'])} | {num(sat, 'convergence_s', '{:.1f}')} | {met(t['ge_0.9x_hand_tuned'])} | "
            f"{met(t['ge_2x_defaults'])} | {met(t['converged_le_60s'])} | {met(t['ge_1.2x_naive'])} |")
    lines += ["", "DataLoader grid (samples/s summed over jobs, measured):", "",
              "| jobs | " + " | ".join(f"num_workers={w}" for w in cfg["grid"]) + " |",
              "|---:|" + "---:|" * len(cfg["grid"])]
    for s in result["scenarios"]:
        by = {g["arm"]: g for g in s["grid"]}
        lines.append(f"| {s['jobs']} | " + " | ".join(num(by.get(f"grid:{w}")) for w in cfg["grid"]) + " |")
    lines += ["", "Saturn per job (last tuner record; cores = busy seconds per wall second, by stage, measured):", ""]
    for s in result["scenarios"]:
        for name, r in s.get("tuners", {}).items():
            for j in (r or {}).get("per_job", []):
                lines.append(f"- {s['jobs']} job(s), {name}, {j['job']}: {j['samples_per_s']:.0f} samples/s, "
                             f"pool {j['pool']}, {j['core_moves']} budget changes, {j['tuner_reverts']} reverts, "
                             f"first batch {j['first_batch_s']:.1f} s, stage cores {j['stage_cores']}")
    if result["skipped"]:
        lines += ["", "Skipped (budget): " + "; ".join(result["skipped"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
