#!/usr/bin/env python
"""Launch to first step: cold processes vs a pre-imported fork server vs warm workers.

One single-device trial of one job (`ddp.trial`, 1 warm-up + 2 timed steps) is launched repeatedly
three ways, and `startup_s` (launch -> first training step done, as the trial measures it) and
the wall time of the whole launch are recorded:

* cold: `launch.run_workers` starts a fresh `python -m saturn.runtime.worker` (interpreter,
  torch and saturn imports, CUDA context, process group, model build, first step);
* forkserver: a `multiprocessing` fork server that pre-imported torch and saturn forks one child
  per launch (no interpreter or imports; CUDA context and everything after it still per launch,
  because CUDA cannot be initialized before a fork);
* warm: the job goes to a `saturn.runtime.warm.WarmPool` worker that already paid all of that
  (after one settling job, which loads the lazily imported libraries for good).

Saturn keeps the warm workers (see saturn/runtime/warm.py for why); the fork server is measured
here as the alternative. Targets: warm median startup < cold median; on a GPU, warm <= 3 s
(issue 14). Writes benchmarks/launch.json and the `launch` section of BENCHMARKS.md.

    python scripts/bench_launch.py --quick           # CPU, gpt2-tiny, about a minute on 2 cores
    python scripts/bench_launch.py                   # GPU: gpt2-medium, < 2 min on one H200
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import benchlib  # noqa: E402

from saturn.runtime.launch import free_port, resolve_device_type  # noqa: E402
from saturn.runtime.routing import using_pool  # noqa: E402
from saturn.runtime.warm import WarmPool  # noqa: E402
from saturn.spec.schema import Job  # noqa: E402
from saturn.techniques import get_technique  # noqa: E402
from saturn.techniques.registry import WARM_PRELOAD  # noqa: E402

TRIAL_STEPS, WARMUP = 2, 1


def make_job(model: str, device_type: str) -> Job:
    big = model != "gpt2-tiny"
    return Job(name="bench", model=model, batch_size=8 if big else 4, seq_len=512 if big else 16,
               steps=10, precision="bf16" if device_type == "cuda" else "fp32",
               optimizer={"name": "adamw", "lr": 1e-4})


def timed_trial(job: Job, device_type: str) -> dict:
    t0 = time.time()
    r = get_technique("ddp").trial(job, [0], {}, TRIAL_STEPS, 600, device_type=device_type, warmup=WARMUP)
    if r.status != "ok":
        raise SystemExit(f"trial failed ({r.status}): {r.reason[-800:]}")
    return {"startup_s": r.startup_s, "wall_s": time.time() - t0}


# ------------------------------------------------------------------------------ fork server
def _fork_child(job_json: dict, device_type: str, port: int, launch_time: float) -> dict:
    """Runs in a child forked by the fork server: what a worker does after its imports."""
    from saturn.runtime import worker
    from saturn.training import loop

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), SATURN_DEVICE_TYPE=device_type)
    ctx = worker.WorkerContext(rank=0, world_size=1, local_rank=0, device_type=device_type,
                               launch_time=launch_time)
    worker._init_process_group(ctx, 600)
    payload = {"job": job_json, "builder": "saturn.techniques.ddp:build", "knobs": {}, "mode": "trial",
               "technique": "ddp", "num_steps": TRIAL_STEPS, "warmup": WARMUP}
    out = loop.worker_entry(payload, ctx)
    worker._shutdown()
    return {"startup_s": out["startup_s"]}


def forkserver_trials(job: Job, device_type: str, n: int) -> list[dict]:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", "saturn.training.loop",
                                "saturn.techniques.ddp", "saturn.spec.schema"])
    out = []
    with ctx.Pool(1, maxtasksperchild=1) as pool:  # a fresh forked child per launch
        for _ in range(n):
            t0 = time.time()
            r = pool.apply(_fork_child, (job.model_dump(mode="json"), device_type, free_port(), t0))
            out.append({**r, "wall_s": time.time() - t0})
    return out


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU, gpt2-tiny (the smoke run)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--model", default=None, help="zoo model (default gpt2-medium on GPU, gpt2-tiny on CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="launches per mode (default 3 CPU, 2 GPU)")
    ap.add_argument("--no-record", action="store_true", help="print only, write no JSON/BENCHMARKS.md")
    args = ap.parse_args()
    device_type = "cpu" if args.quick else resolve_device_type(args.device)
    if device_type == "cuda" and args.quick:
        device_type = "cpu"
    model = args.model or ("gpt2-medium" if device_type == "cuda" else "gpt2-tiny")
    n = args.repeats or (2 if device_type == "cuda" else 3)
    job = make_job(model, device_type)
    t_all = time.time()

    cold = [timed_trial(job, device_type) for _ in range(n)]
    fork = forkserver_trials(job, device_type, n)
    with WarmPool(device_type, preload=WARM_PRELOAD) as pool:
        t0 = time.time()
        pool.prestart([0])
        with using_pool(pool):
            settle = timed_trial(job, device_type)  # worker start + first (lazy-import) job
            settle["worker_start_s"] = time.time() - t0
            warm = [timed_trial(job, device_type) for _ in range(n)]
        same_worker = pool.replaced == 0

    rows = [{"mode": m, "median startup_s": med(r, "startup_s"), "median launch wall_s": med(r, "wall_s"),
             "runs": len(r)} for m, r in (("cold", cold), ("forkserver", fork), ("warm", warm))]
    cold_s, fork_s, warm_s = (r["median startup_s"] for r in rows)
    targets = [{"target": "warm startup < cold startup (median)", "value": round(warm_s, 3),
                "met": warm_s < cold_s}]
    if device_type == "cuda":
        targets.append({"target": "warm startup <= 3 s (issue 14)", "value": round(warm_s, 3),
                        "met": warm_s <= 3.0})
    data = {"device_type": device_type, "model": model, "batch_size": job.batch_size, "seq_len": job.seq_len,
            "trial_steps": TRIAL_STEPS, "warmup": WARMUP, "source": "measured",
            "cold": cold, "forkserver": fork, "warm": warm, "warm_settling_job": settle,
            "warm_same_worker_all_runs": same_worker, "medians": rows,
            "ratios": {"cold_over_warm": cold_s / warm_s, "forkserver_over_warm": fork_s / warm_s},
            "targets": targets, "bench_wall_s": time.time() - t_all}
    body = (f"Launch to first step of one `ddp` trial of `{model}` on one {device_type} device "
            f"(measured, median of {n}; startup_s = launch -> first training step done).\n\n"
            + benchlib.md_table(rows, ["mode", "median startup_s", "median launch wall_s", "runs"])
            + f"\n\ncold / warm = {cold_s / warm_s:.1f}x, forkserver / warm = {fork_s / warm_s:.1f}x. "
            f"Warm worker start (once per device, overlapped with other work): "
            f"{settle['worker_start_s']:.1f} s including its first job.\n\n"
            + benchlib.md_table(targets, ["target", "value", "met"]) + "\n")
    print(body)
    if not args.no_record:
        json_path = benchlib.write_json("launch", data)
        md_path = benchlib.write_section("launch", "Launch to first step: cold vs fork server vs warm workers", body)
        print(f"wrote {json_path} and {md_path}")
    return 0 if all(t["met"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
