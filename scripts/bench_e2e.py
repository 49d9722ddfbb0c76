"""End-to-end goodput: `saturn profile` then `saturn run` of a 6-job workload, through the public API.

What it answers (issue 14): of the wall time a user waits, how much is spent in training steps
(goodput), how much goes to profiling, launches, model builds and checkpoint writes, and how well
the plan predicts each job's phases (launch, steps, saves + teardown) and the makespan.

    python scripts/bench_e2e.py --gpus 1            # one H200: ~7 min; writes benchmarks/e2e-1gpu.json
    python scripts/bench_e2e.py --quick             # CPU, tiny models, ~2-4 min on 2 cores

Workload (GPU): GPT-2 medium, GPT-2 large and ViT-base, two learning rates each, 150-300 steps, bf16,
one GPU per job, ddp only (its two knob sets are profiled). --quick: the same shape at toy size on
one CPU slot. The profile store and the run directory live in a fresh work directory, so every run
profiles from scratch (what a new user sees). Numbers are measured; nothing is simulated.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchlib  # noqa: E402

TARGETS = {  # issue 14, one H200
    "goodput_run": (">=", 0.85), "goodput_from_profile_start": (">=", 0.75),
    "job_error_median": ("<=", 0.05), "job_error_max": ("<=", 0.15),
    "makespan_vs_plan": ("<=", 0.10), "launch_to_first_step_s_max": ("<=", 3.0),
    "profile_share_of_makespan": ("<=", 0.10),
}


def workload_yaml(quick: bool, gpus: int) -> str:
    if quick:
        return f"""name: e2e-quick
cluster: {{devices: cpu, slots: {gpus}}}
defaults: {{seq_len: 16, batch_size: 4, precision: fp32, gpus: [1], techniques: [ddp],
           optimizer: {{name: adamw, lr: 1.0e-3}}}}
jobs:
  - {{name: lm-a, model: gpt2-tiny, data: synthetic-tokens, steps: 40}}
  - {{name: lm-b, model: {{name: gpt2-tiny, overrides: {{n_layer: 4}}}}, data: synthetic-tokens,
      steps: 60}}
  - {{name: vit, model: vit-tiny, data: synthetic-images, seq_len: 1, steps: 50}}
sweep:
  optimizer.lr: [1.0e-3, 3.0e-3]
"""
    return f"""name: e2e-{gpus}gpu
cluster: {{devices: cuda}}
defaults: {{seq_len: 512, precision: bf16, gpus: [1], techniques: [ddp],
           optimizer: {{name: adamw, lr: 3.0e-4, weight_decay: 0.1}}}}
jobs:
  - {{name: gpt2-medium, model: gpt2-medium, data: synthetic-tokens, batch_size: 16, steps: 300}}
  - {{name: gpt2-large, model: gpt2-large, data: synthetic-tokens, batch_size: 8, steps: 150}}
  - {{name: vit-base, model: vit-base, data: synthetic-images, seq_len: 1, batch_size: 64,
      steps: 300}}
sweep:
  optimizer.lr: [1.0e-4, 3.0e-4]
"""


class UtilSampler(threading.Thread):
    """Device utilization (NVML via torch.cuda.utilization) once a second; None where the device
    does not report it (CPU, no pynvml)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.note = ""
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            import torch

            if not torch.cuda.is_available():
                self.note = "no CUDA device"
                return
            n = torch.cuda.device_count()
            while not self.stop.wait(1.0):
                self.samples.append(sum(torch.cuda.utilization(i) for i in range(n)) / n)
        except Exception as exc:  # noqa: BLE001 - pynvml missing, driver without NVML
            self.note = f"not reported ({type(exc).__name__}: {exc})"

    def mean(self) -> Optional[float]:
        return statistics.mean(self.samples) / 100 if self.samples else None


def met(name: str, value: Optional[float]) -> dict[str, Any]:
    op, target = TARGETS[name]
    ok = None if value is None else (value >= target if op == ">=" else value <= target)
    return {"value": value, "target": f"{op} {target}", "met": ok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, default=1, help="GPUs (CPU slots with --quick)")
    ap.add_argument("--quick", action="store_true", help="CPU, tiny models (CI / laptops)")
    ap.add_argument("--budget-min", type=float, default=None, help="profiling budget (minutes)")
    ap.add_argument("--checkpoint-every", type=int, default=100, help="periodic saves (steps)")
    ap.add_argument("--workdir", type=Path, default=None, help="profiles + run dir (default: temp)")
    ap.add_argument("--from-run", type=Path, default=None,
                    help="only summarize an existing (possibly cut-off) work dir of an earlier GPU run "
                         "(its workload.yaml, profiles/ and run/); needs --profile-s")
    ap.add_argument("--profile-s", type=float, default=None,
                    help="with --from-run: the measured profiling time of that run (from its log)")
    ap.add_argument("--note", default="", help="with --from-run: what happened to that run")
    ap.add_argument("--root", type=Path, default=None,
                    help="where benchmarks/*.json and BENCHMARKS.md go (default: the repo; "
                         "--quick: the work dir, so a CPU run never overwrites GPU numbers)")
    args = ap.parse_args()
    if args.from_run is not None:
        if args.profile_s is None:
            sys.exit("--from-run needs --profile-s (the profiling time measured in that run)")
        return summarize_earlier_run(args)
    if not args.quick:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() < args.gpus:
            sys.exit(f"needs {args.gpus} CUDA GPU(s); use --quick on CPU")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(args.gpus))))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="saturn-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    root = args.root or (work if args.quick else benchlib.ROOT)
    name = f"e2e-{args.gpus}{'cpu-quick' if args.quick else 'gpu'}"
    wl_path = work / "workload.yaml"
    wl_path.write_text(workload_yaml(args.quick, args.gpus))

    import saturn

    store, run_dir = work / "profiles", work / "run"
    wl = saturn.load_workload(str(wl_path))
    t0 = time.time()
    saturn.profile(wl, store_dir=str(store), budget_min=args.budget_min)
    t1 = time.time()
    os.environ["SATURN_PROFILES"] = str(store)  # saturn.run reads the store we just filled
    sampler = UtilSampler()
    sampler.start()
    results = saturn.run(wl, run_dir=str(run_dir), checkpoint_every=args.checkpoint_every,
                         device_type="cpu" if args.quick else "auto")
    t2 = time.time()
    sampler.stop.set()
    if sampler.mean() is not None:  # so that `saturn report` shows it too
        from saturn.executor.journal import JOURNAL_FILE, Journal

        Journal(run_dir / JOURNAL_FILE).set_meta("device_utilization", sampler.mean())
    record(args, name, root, wl_path, run_dir, profile_s=t1 - t0, run_wall_s=t2 - t1,
           completed=sum(r.status == "completed" for r in results.values()), sampler=sampler)


def summarize_earlier_run(args: argparse.Namespace) -> None:
    """Record a GPU run that was cut off (e.g. by the device's time limit) from what it left on
    disk: every number below comes from its journal and progress files; unfinished jobs have no
    actual runtime, and the run wall time is the journal's last event."""
    import json
    import sqlite3

    work = args.from_run
    run_dir = work / "run"
    con = sqlite3.connect(f"file:{run_dir / 'journal.sqlite'}?mode=ro", uri=True)
    (first, last), = con.execute("SELECT MIN(t), MAX(t) FROM events").fetchall()
    done = sum(json.loads(d).get("status") == "completed"
               for (d,) in con.execute("SELECT data FROM events WHERE kind='finished'"))
    sampler = UtilSampler()  # not sampled in that run
    sampler.note = "(not sampled: summarized from a cut-off run)"
    record(args, f"e2e-{args.gpus}gpu", args.root or benchlib.ROOT, work / "workload.yaml", run_dir,
           profile_s=args.profile_s, run_wall_s=last - first, completed=done, sampler=sampler,
           partial=args.note or "cut off before every job finished")


def record(args: argparse.Namespace, name: str, root: Path, wl_path: Path, run_dir: Path, *,
           profile_s: float, run_wall_s: float, completed: int, sampler: Any,
           partial: str = "") -> None:
    from saturn.executor.report import summarize

    s = summarize(run_dir)
    gpus = s["total_gpus"]

    jobs = []
    phases = {r["job"]: r for r in s["phases"]}
    for j in s["jobs"]:
        ph = phases.get(j["job"], {})
        jobs.append({"job": j["job"], "status": j["status"], "technique": j["technique"],
                     "planned_s": j["planned_runtime_s"], "actual_s": j["actual_runtime_s"],
                     "error": j["prediction_error"], "planned_phases": ph.get("planned"),
                     "actual_phases": ph.get("actual"),
                     "planned_sources": ph.get("planned_sources")})
    errs = [abs(j["error"]) for j in jobs if j["error"] is not None]
    launches = [j["actual_phases"]["launch"] for j in jobs if j["actual_phases"]]
    makespan, planned = s["makespan_s"], s["planned_makespan_s"]
    wall = profile_s + run_wall_s
    metrics = {
        "goodput_run": met("goodput_run", s["goodput"]),
        "goodput_from_profile_start": met("goodput_from_profile_start",
                                          s["train_gpu_s"] / (wall * gpus) if wall > 0 else None),
        "job_error_median": met("job_error_median", statistics.median(errs) if errs else None),
        "job_error_max": met("job_error_max", max(errs) if errs else None),
        "makespan_vs_plan": met("makespan_vs_plan",  # n/a when the run was cut off
                                abs(makespan - planned) / planned if planned and not partial else None),
        "launch_to_first_step_s_max": met("launch_to_first_step_s_max",
                                          max(launches) if launches else None),
        "profile_share_of_makespan": met("profile_share_of_makespan",
                                         profile_s / makespan if makespan else None),
    }
    data = {"mode": "quick-cpu" if args.quick else f"{args.gpus}-gpu", "workload": wl_path.read_text(),
            "profile_s": profile_s, "run_wall_s": run_wall_s, "makespan_s": makespan,
            "planned_makespan_s": planned, "wall_from_profile_start_s": wall,
            "gpu_allocation": s["gpu_allocation"],
            "device_utilization": sampler.mean(), "device_utilization_note": sampler.note,
            "launch_to_first_step_s_median": statistics.median(launches) if launches else None,
            "jobs_completed": completed, "partial": partial or None,
            "jobs": jobs, "targets": metrics,
            "source": "measured (one run)" + (f"; PARTIAL: {partial}" if partial else "")}
    out = benchlib.write_json(name, data, root=root)
    rows = [{"metric": k, "value": "-" if v["value"] is None else round(v["value"], 3),
             "target": v["target"], "met": {True: "met", False: "missed", None: "n/a"}[v["met"]]}
            for k, v in metrics.items()]
    phase_rows = [{"job": j["job"], **{f"{k} plan/actual": "{} / {}".format(
        _r((j["planned_phases"] or {}).get(k)), _r((j["actual_phases"] or {}).get(k)))
        for k in ("launch", "steps", "save_teardown")}, "error": _r(j["error"])} for j in jobs]
    body = ((f"**Partial run** ({partial}): {completed} of {len(jobs)} jobs completed; the targets "
             "below are computed over what ran.\n\n" if partial else "")
            + f"Profile {profile_s:.0f} s, run makespan {makespan:.0f} s (planned {planned:.0f} s); "
            f"device utilization {_pct(sampler.mean())} {sampler.note}.\n\n"
            + benchlib.md_table(rows, ["metric", "value", "target", "met"]) + "\n\nPer job (seconds):\n\n"
            + benchlib.md_table(phase_rows, list(phase_rows[0]) if phase_rows else ["job"]))
    md = benchlib.write_section(name, f"End-to-end goodput ({data['mode']})", body, root=root)
    print(body)
    print(f"\nwrote {out} and {md}")


def _r(v: Any) -> Any:
    return "-" if v is None else round(float(v), 2)


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


if __name__ == "__main__":
    main()
