#!/usr/bin/env python
"""Profiler accuracy and cost: predicted vs measured runtime per option, profiling time share.

For one workload: (1) profile it (side by side on the free GPUs) and time that; (2) for each
option of the profiled jobs (the fastest knobs of each signature x technique x GPU count), really
train N steps with `Technique.run` and compare the wall time with the profiler's estimate
`estimate_runtime_s(row, N)` = N x step time + start-up + checkpoint; (3) plan the workload with
the measured profiles and report profiling time as a share of the planned makespan.

Targets (issue 5): median |error| <= 10%, max <= 25%; profiling <= 10% of the makespan.

Writes nothing unless asked: `--record` writes benchmarks/profiler.json and the `profiler` section
of BENCHMARKS.md (through scripts/benchlib.py, with the command, machine and date); `--json FILE`
writes this run's raw result (a phase file for --merge, e.g. $OUT/p.json on a remote machine).

    # CPU smoke test (a minute or two; prints only)
    python scripts/bench_profiler.py --device cpu --tiny

    # GPU, all in one command (small workloads)
    python scripts/bench_profiler.py --workload configs/examples/gpt2-sweep.yaml --run-steps 200 \
        --store profiles --force --record

    # GPU in phases, each within a 10-minute command (rows are reused between them):
    python scripts/bench_profiler.py --only profile --store profiles --force --budget-min 8 \
        --json /tmp/p.json           # repeat WITHOUT --force until nothing is skipped
    python scripts/bench_profiler.py --only measure --store profiles --shard 1/3 --json /tmp/m1.json
    ...  (--shard 2/3, 3/3)
    python scripts/bench_profiler.py --merge /tmp/p.json /tmp/m1.json /tmp/m2.json /tmp/m3.json \
        --record

With phases, the profiling cost is the first (cold) profile run's; add the wall times of the
repeats by hand if the budget cut it short.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TITLE = "Profiler: accuracy and cost"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", type=Path, default=None,
                   help="workload YAML (default: gpt2-sweep on GPU, tiny-cpu with --tiny)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="cpu: replace the cluster by CPU slots (smoke test)")
    p.add_argument("--tiny", action="store_true", help="tiny-cpu example, DDP only, few steps")
    p.add_argument("--slots", type=int, default=2, help="CPU slots with --device cpu")
    p.add_argument("--local", action="store_true",
                   help="replace the workload's cluster by this machine (e.g. H100 instead of H200)")
    p.add_argument("--techniques", default=None, help="comma list: restrict every job to these")
    p.add_argument("--store", type=Path, default=None,
                   help="profile store dir (default: a fresh temp dir, so profiling is timed cold)")
    p.add_argument("--force", action="store_true", help="re-profile rows already in --store")
    p.add_argument("--steps", type=int, default=None, help="timed steps per trial (default 5; 3 tiny)")
    p.add_argument("--timeout", type=float, default=None, help="per-trial timeout s (default 600)")
    p.add_argument("--run-steps", type=int, default=None, help="N steps really run per option "
                                                               "(default 200; 30 with --tiny)")
    p.add_argument("--max-options", type=int, default=None, help="measure at most this many options")
    p.add_argument("--sequential", action="store_true",
                   help="measure options one at a time (default: side by side on free devices, "
                        "like the executor runs jobs)")
    p.add_argument("--budget-min", type=float, default=None,
                   help="profiling budget (re-run to fill in what was skipped: rows are reused)")
    p.add_argument("--only", choices=("all", "profile", "measure"), default="all",
                   help="profile: fill the store and time it; measure: run options from the store "
                        "(each phase fits a 10-minute command; combine the JSONs with --merge)")
    p.add_argument("--shard", default=None, help="K/N: measure only every N-th option from the K-th")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="combine JSON files of earlier runs (print; --json / --record to write)")
    p.add_argument("--plan-time-limit", type=float, default=20.0)
    p.add_argument("--json", type=Path, default=None,
                   help="write this run's raw result here (a phase file for --merge)")
    p.add_argument("--record", action="store_true",
                   help="write benchmarks/profiler.json and the profiler section of BENCHMARKS.md "
                        "(use on a complete run or a --merge; without it nothing is recorded)")
    return p.parse_args(argv)


def load(args: argparse.Namespace):
    from saturn.spec import load_workload

    path = args.workload or ROOT / "configs" / "examples" / (
        "tiny-cpu.yaml" if args.tiny else "gpt2-sweep.yaml")
    wl = load_workload(path)
    updates: dict[str, Any] = {}
    if args.device == "cpu" or args.tiny and args.device == "auto":
        from saturn.spec import Cluster

        updates["cluster"] = Cluster(devices="cpu", slots=args.slots)
    elif args.local:
        from saturn.spec import Cluster

        updates["cluster"] = Cluster.local()
    techniques = args.techniques.split(",") if args.techniques else (["ddp"] if args.tiny else None)
    jobs = wl.jobs
    if techniques:
        jobs = [j.model_copy(update={"techniques": techniques}) for j in jobs]
    return wl.model_copy(update={**updates, "jobs": jobs}), path


def options_to_measure(rows, max_options: Optional[int]):
    """Fastest feasible knobs per (signature, technique, GPU count): what the planner chooses from."""
    ok = rows[rows["status"] == "ok"].sort_values("step_time_s")
    best = ok.drop_duplicates(subset=["signature", "technique", "gpus"], keep="first")
    best = best.sort_values(["signature", "technique", "gpus"])
    recs = best.to_dict("records")
    return recs[:max_options] if max_options else recs


def measure(options: list[dict], jobs_by_sig: dict, devices: list[int], run_steps: int,
            sequential: bool, timeout_s: float) -> list[dict]:
    """Really run `run_steps` steps of each option (a fresh checkpoint dir each) and time it."""
    from saturn.profiler import estimate_runtime_s
    from saturn.techniques.registry import get_technique

    results: list[dict] = []
    lock = threading.Lock()
    free = list(devices)
    cond = threading.Condition(lock)
    todo = sorted(options, key=lambda o: -int(o["gpus"]))

    def one(opt: dict, ids: list[int]) -> None:
        job = jobs_by_sig[opt["signature"]]
        tech = get_technique(opt["technique"])
        knobs = json.loads(opt["knobs"])
        with tempfile.TemporaryDirectory(prefix="saturn-bench-ckpt-") as ckpt:
            t0 = time.monotonic()
            try:
                res = tech.run(job, ids, knobs, 0, run_steps, ckpt, timeout_s=timeout_s)
                status, reason = res.status, res.reason
            except Exception as exc:  # noqa: BLE001 - record and go on
                status, reason = "failed", f"{type(exc).__name__}: {exc}"
            wall = time.monotonic() - t0
        pred = estimate_runtime_s(opt, run_steps)
        rec = {"job": job.name, "signature": opt["signature"], "technique": opt["technique"],
               "knobs": opt["knobs"], "gpus": int(opt["gpus"]), "devices": ids,
               "step_time_s": float(opt["step_time_s"]), "startup_s": float(opt["startup_s"] or 0),
               "checkpoint_s": float(opt.get("checkpoint_s") or 0), "run_steps": run_steps,
               "predicted_s": round(pred, 3), "measured_s": round(wall, 3), "status": status,
               "error": round((pred - wall) / wall, 4) if status == "completed" else None,
               "reason": (reason or "")[:300]}
        with cond:
            results.append(rec)
            free.extend(ids)
            cond.notify_all()
        print(f"  {rec['technique']}x{rec['gpus']} {rec['knobs']}: predicted {pred:.1f}s, measured "
              f"{wall:.1f}s ({status})" + (f", error {rec['error']:+.1%}" if rec["error"] is not None else ""),
              flush=True)

    threads = []
    for opt in todo:
        n = int(opt["gpus"])
        with cond:
            while len(free) < n or (sequential and len(free) < len(devices)):
                cond.wait()
            ids, free[:] = sorted(free[:n]), free[n:]
        t = threading.Thread(target=one, args=(opt, ids), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return results


def planned_makespan(wl, rows, time_limit_s: float) -> tuple[Optional[float], str]:
    try:
        from saturn.planner import plan

        p = plan(list(wl.jobs), wl.cluster.resolved(), rows[rows["status"] == "ok"],
                 time_limit_s=time_limit_s)
        return float(p.makespan_s), "planner"
    except Exception as exc:  # noqa: BLE001 - fall back to the SPASE lower bound
        print(f"  planner unavailable ({type(exc).__name__}: {exc}); using the lower bound")
    ok = rows[rows["status"] == "ok"]
    if not len(ok):
        return None, "none"
    total = sum(n.gpus for n in wl.cluster.resolved().nodes)
    longest, area = 0.0, 0.0
    for _job, g in ok.groupby("job"):
        longest = max(longest, float(g["runtime_s"].min()))
        area += float((g["runtime_s"] * g["gpus"]).min())
    return max(longest, area / total), "lower bound"


def summarize(results: list[dict]) -> dict[str, Any]:
    errs = [abs(r["error"]) for r in results if r["error"] is not None]
    return {"options": len(results), "measured": len(errs),
            "median_abs_error": round(statistics.median(errs), 4) if errs else None,
            "max_abs_error": round(max(errs), 4) if errs else None,
            "within_targets": bool(errs) and statistics.median(errs) <= 0.10 and max(errs) <= 0.25}


def markdown(out: dict[str, Any]) -> str:
    s, c, hw = out["accuracy"], out.get("cost") or {}, out["hardware"]
    lines = [f"Measured by `{out['command']}` on {hw['gpus']}x {hw['gpu_type']} ({hw['gpu_memory_gb']} GB, "
             f"{hw['interconnect']}), torch {hw['torch_version']}, {out['date']}.", ""]
    if c:
        lines += [f"Workload `{out['workload']}`: {c['signatures']} distinct profiles, "
                  f"{c['trials_run']} trials in {c['profile_wall_s']:.0f}s (one by one: "
                  f"{c['trials_sequential_s']:.0f}s, {c['parallel_speedup'] or 0:.1f}x faster side by "
                  f"side){'; some rows reused, so not a cold cost' if c.get('reused') else ''}.", ""]
    lines += [f"- Runtime prediction over {s['measured']} options x {out['run_steps']} steps: median "
              f"|error| **{_pct(s['median_abs_error'])}** (target <= 10%), max "
              f"**{_pct(s['max_abs_error'])}** (target <= 25%).",
              f"- Profiling time / planned makespan ({out.get('makespan_source')}, "
              f"{_s(out.get('planned_makespan_s'))}): **{_pct(c.get('profile_share'))}** "
              "(target <= 10%).", "",
              "| job | technique | GPUs | knobs | step (s) | start-up (s) | predicted (s) | measured (s) | error |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in out["options"]:
        lines.append(f"| {r['job']} | {r['technique']} | {r['gpus']} | `{r['knobs']}` | "
                     f"{r['step_time_s']:.4g} | {r['startup_s']:.3g} | {r['predicted_s']:.1f} | "
                     f"{r['measured_s']:.1f} | "
                     f"{'%+.1f%%' % (100 * r['error']) if r['error'] is not None else r['status']} |")
    return "\n".join(lines) + "\n"


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _s(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.0f}s"


def run_profile(args: argparse.Namespace, wl: Any, store: Path, steps: int, timeout: float):
    from saturn.profiler import profile

    t0 = time.monotonic()
    rows = profile(wl, store_dir=store, force=args.force, steps=steps, timeout_s=timeout,
                   budget_min=args.budget_min, progress=sys.stderr.isatty())
    wall = time.monotonic() - t0
    rep = rows.attrs["report"]
    print(f"  {rep['trials_run']} trials ({rep['reused']} reused) in {wall:.0f}s; "
          f"one by one: {rep['sequential_s']:.0f}s", flush=True)
    if rep["reused"]:
        print("  note: rows were reused from the store, so this profiling time is not a cold "
              "cost (use --force or a fresh --store for that)", flush=True)
    cost = {"signatures": rep["signatures"], "trials_run": rep["trials_run"],
            "reused": rep["reused"], "budget_hit": rep["budget_hit"],
            "profile_wall_s": round(wall, 2), "trials_sequential_s": round(rep["sequential_s"], 2),
            "parallel_speedup": round(rep["sequential_s"] / wall, 2) if wall else None}
    return rows, cost


def select_shard(opts: list[dict], shard: Optional[str]) -> list[dict]:
    if not shard:
        return opts
    k, n = (int(x) for x in shard.split("/"))
    if not 1 <= k <= n:
        raise SystemExit(f"--shard {shard}: want K/N with 1 <= K <= N")
    return opts[k - 1::n]


def finish(out: dict[str, Any], args: argparse.Namespace) -> None:
    out["accuracy"] = summarize(out["options"])
    cost, makespan = out.get("cost"), out.get("planned_makespan_s")
    if cost:
        cost["profile_share"] = (round(cost["profile_wall_s"] / makespan, 4)
                                 if makespan else None)
    print(json.dumps({"accuracy": out["accuracy"], "cost": cost,
                      "planned_makespan_s": makespan}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    section = markdown(out)
    print(section)
    if args.record:
        sys.path.insert(0, str(ROOT / "scripts"))
        from benchlib import write_json, write_section

        # benchlib stamps this command/machine/date; the measuring runs' own are kept as `runs`
        data = {k: v for k, v in out.items() if k not in ("command", "date")}
        write_json("profiler", {**data, "runs": {"command": out["command"], "date": out["date"],
                                                 "host": out.get("host")}})
        write_section("profiler", TITLE, section)
        print("wrote benchmarks/profiler.json and the profiler section of BENCHMARKS.md")


def merge(paths: list[Path]) -> dict[str, Any]:
    """Combine the JSON of separate runs (a profile run, measure shards) into one result."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    out = dict(parts[0])
    out["cost"] = next((p["cost"] for p in parts if p.get("cost")), None)
    out["planned_makespan_s"] = next((p["planned_makespan_s"] for p in parts
                                      if p.get("planned_makespan_s")), None)
    out["makespan_source"] = next((p.get("makespan_source") for p in parts
                                   if p.get("planned_makespan_s")), None)
    seen, options = set(), []
    for p in parts:
        for r in p.get("options", []):
            key = (r["signature"], r["technique"], r["knobs"], r["gpus"])
            if key not in seen:
                seen.add(key)
                options.append(r)
    out["options"] = sorted(options, key=lambda r: (r["job"], r["technique"], r["gpus"]))
    out["command"] = " + ".join(p["command"] for p in parts)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.merge:
        finish(merge(args.merge), args)
        return 0
    from saturn.profiler import ProfileStore, workload_rows
    from saturn.profiler.hardware import hardware_for_cluster

    wl, path = load(args)
    steps = args.steps or (3 if args.tiny else 5)
    run_steps = args.run_steps or (30 if args.tiny else 200)
    timeout = args.timeout or 600.0
    hw = hardware_for_cluster(wl.cluster)
    store = args.store or Path(tempfile.mkdtemp(prefix="saturn-bench-store-"))
    cost = None
    if args.only in ("all", "profile"):
        print(f"profiling {path} ({len(wl.jobs)} jobs) on {hw.gpus}x {hw.gpu_type}; store {store}",
              flush=True)
        rows, cost = run_profile(args, wl, store, steps, timeout)
    else:
        rows = workload_rows(ProfileStore(store).load(), wl, hw)
        if not len(rows):
            raise SystemExit(f"no profile rows for {path} on {hw.gpu_type} in {store}; "
                             "run with --only profile first")
    makespan, source = planned_makespan(wl, rows, args.plan_time_limit)
    results: list[dict] = []
    if args.only in ("all", "measure"):
        jobs_by_sig: dict[str, Any] = {}
        for job in wl.jobs:
            jobs_by_sig.setdefault(str(job.signature), job)
        opts = options_to_measure(rows.drop_duplicates(subset=["signature", "technique", "knobs",
                                                               "gpus"]), args.max_options)
        opts = select_shard(opts, args.shard)
        print(f"measuring {len(opts)} options x {run_steps} steps", flush=True)
        results = measure(opts, jobs_by_sig, list(range(min(hw.gpus, wl.cluster.max_gpus))),
                          run_steps, args.sequential, timeout_s=max(timeout, 10 * 3600.0))
        results.sort(key=lambda r: (r["job"], r["technique"], r["gpus"]))
    out = {
        "command": "python scripts/bench_profiler.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "host": platform.node(),
        "workload": str(path), "hardware": {**hw.key(), "gpus": hw.gpus},
        "trial_steps": steps, "run_steps": run_steps,
        "planned_makespan_s": None if makespan is None else round(makespan, 1),
        "makespan_source": source, "cost": cost, "options": results,
    }
    finish(out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
