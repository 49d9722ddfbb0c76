#!/usr/bin/env python
"""HPO benchmark (#16): what HPO users get from Saturn. Writes benchmarks/hpo.json and the `hpo`
section of BENCHMARKS.md (through scripts/benchlib.py).

1. objectives (simulated, the planner only): on the planner's seeded instances
   (saturn.planner.random_instances), the mean completion time of plans made for
   `objective=mean_completion` vs `objective=makespan` vs shortest-job-first (the `sjf` baseline),
   and what the completion objective costs in makespan. Target: completion plans beat both on
   mean completion on every instance.
2. optuna (measured): the same Optuna search (TPE, fixed seed, same trials) run through Saturn
   (Orchestrator, process backend, one slot, profiles given so no profiling is timed) and in plain
   Optuna in-process (the objective trains the same model in this process). Saturn's overhead per
   trial = (Saturn wall - plain wall) / trials; target <= 1 s (with warm workers).
   `--gpus 1`: the same on one GPU with a model where the technique matters (default gpt2-small,
   bf16), reporting wall time and time to the best trial; sized for ~3 minutes on an H200.

    python scripts/bench_hpo.py --quick            # CPU, ~1-2 min on 2 cores
    python scripts/bench_hpo.py --gpus 1           # one GPU, ~3 min
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import benchlib  # noqa: E402

OBJ_SUITE = [(8, [8], 3), (16, [8], 3), (32, [8, 8], 2), (64, [8, 8, 8, 8], 1)]  # jobs, nodes, seeds
OBJ_QUICK = [(8, [8], 2), (16, [8], 1)]


# ----------------------------------------------------------------------------------- objectives
def bench_objectives(suite, time_limit_s: float) -> list[dict]:
    from saturn.planner import plan, validate_plan
    from saturn.planner.highs_util import quiet_fd1
    from saturn.planner.random_instances import random_instance

    out = []
    for n_jobs, nodes, seeds in suite:
        for seed in range(seeds):
            jobs, cluster, prof = random_instance(n_jobs, nodes, seed=1000 * n_jobs + 10 * len(nodes) + seed)
            with quiet_fd1():
                pm = plan(jobs, cluster, prof, time_limit_s=time_limit_s)
                t0 = time.perf_counter()
                pc = plan(jobs, cluster, prof, time_limit_s=time_limit_s, objective="mean_completion")
                solve = time.perf_counter() - t0
            validate_plan(pc, jobs, cluster, prof)
            r = {"jobs": n_jobs, "gpus": f"{len(nodes)}x8", "seed": seed,
                 "mean_completion_s": {"completion_objective": pc.mean_completion_s,
                                       "makespan_objective": pm.mean_completion_s,
                                       "sjf": pc.objective_baselines["sjf"]},
                 "completion_lower_bound_s": pc.objective_lower_bound,
                 "makespan_s": {"completion_objective": pc.makespan_s, "makespan_objective": pm.makespan_s},
                 "solve_s": solve, "status": pc.solver.status, "source": pc.solver.source}
            r["gain_vs_makespan_objective"] = pm.mean_completion_s / pc.mean_completion_s
            r["gain_vs_sjf"] = pc.objective_baselines["sjf"] / pc.mean_completion_s
            r["makespan_cost"] = pc.makespan_s / pm.makespan_s
            out.append(r)
            print(f"{n_jobs:4d} jobs {len(nodes)}x8  mean completion: completion-obj {pc.mean_completion_s:8.0f}s  "
                  f"makespan-obj {pm.mean_completion_s:8.0f}s  sjf {r['mean_completion_s']['sjf']:8.0f}s  "
                  f"(bound {pc.objective_lower_bound:.0f}s)  makespan x{r['makespan_cost']:.2f}", flush=True)
    return out


# ------------------------------------------------------------------------------------- optuna
def _job(trial, model: str, steps: int, precision: str):
    import saturn

    lr = trial.suggest_float("lr", 1e-4, 3e-2, log=True)
    return saturn.Job(name="hpo", model=model, batch_size=8, seq_len=32, steps=steps, precision=precision,
                      gpus=[1], optimizer={"name": "adamw", "lr": lr})


def _train_in_process(job, device: str) -> float:
    """Plain PyTorch training of `job` in this process (what an Optuna objective does)."""
    import torch

    from saturn.zoo import build_model, model_config
    from saturn.zoo.data import batch_for_step, build_dataset

    torch.manual_seed(job.seed)
    model = build_model(job.model, device=torch.device(device))
    data = build_dataset(job.data, job.seq_len, model_config(job.model.name, getattr(job.model, "overrides", None)
                                                             or None), seed=job.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=job.optimizer.lr)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(job.precision)
    loss = None
    for step in range(job.total_steps):
        x, y = batch_for_step(data, step, job.batch_size)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = model.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def bench_optuna(trials: int, model: str, steps: int, device: str, precision: str) -> dict:
    import optuna

    import saturn
    from saturn.api import synthetic_profiles
    from saturn.integrations.optuna import optimize

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def study():
        return optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=0))

    # plain Optuna, in process
    plain = study()
    t0 = time.perf_counter()
    best_at = []
    plain.optimize(lambda t: _train_in_process(_job(t, model, steps, precision), device), n_trials=trials,
                   callbacks=[lambda s, ft: best_at.append((time.perf_counter() - t0, s.best_value))])
    plain_wall = time.perf_counter() - t0
    plain_best_t = min(t for t, v in best_at if v == plain.best_value)

    # the same search through Saturn (one slot, one trial in flight: the same sequence of trials)
    through = study()
    probe = _job(optuna.trial.FixedTrial({"lr": 1e-3}), model, steps, precision)
    # CPU: synthetic rows (one technique, nothing to choose; no profiling timed). GPU: the profile
    # store, measured on the first submit when missing -- counted in Saturn's wall time.
    prof = synthetic_profiles([probe], step_time_s=0.05, startup_s=2.0, technique="ddp") if device == "cpu" else None
    cluster = saturn.Cluster(devices="cpu", slots=1) if device == "cpu" else saturn.Cluster.local()
    s_best = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        # (GPU: profile before training -- one GPU cannot measure and train at once without skew)
        with saturn.Orchestrator(cluster, run_dir=Path(tmp) / "run", backend="process", profiles=prof,
                                 interval_s=1e9, time_limit_s=1.0, poll_s=0.05, profile_in_background=False,
                                 store_dir=Path(tmp) / "store" if device != "cpu" else None) as orch:
            optimize(through, lambda t: _job(t, model, steps, precision), orch, n_trials=trials, n_jobs=1,
                     poll_s=0.05, callbacks=[lambda s, ft: s_best.append((time.perf_counter() - t0, s.best_value))])
        saturn_wall = time.perf_counter() - t0
    done = [t for t in through.trials if t.state == optuna.trial.TrialState.COMPLETE]
    saturn_best_t = min(t for t, v in s_best if v == through.best_value) if done else None
    return {"trials": trials, "model": model, "steps": steps, "device": device, "precision": precision,
            "plain_wall_s": plain_wall, "saturn_wall_s": saturn_wall,
            "overhead_per_trial_s": (saturn_wall - plain_wall) / trials,
            "time_to_best_s": {"plain": plain_best_t, "saturn": saturn_best_t},
            "best_value": {"plain": plain.best_value, "saturn": through.best_value if done else None},
            "saturn_completed_trials": len(done)}


# -------------------------------------------------------------------------------------- report
def report(objs: list[dict], opt: dict, args) -> None:
    s = {}
    if objs:
        s["median_gain_vs_makespan_objective"] = statistics.median(r["gain_vs_makespan_objective"] for r in objs)
        s["median_gain_vs_sjf"] = statistics.median(r["gain_vs_sjf"] for r in objs)
        s["min_gain_vs_makespan_objective"] = min(r["gain_vs_makespan_objective"] for r in objs)
        s["min_gain_vs_sjf"] = min(r["gain_vs_sjf"] for r in objs)
        s["median_makespan_cost"] = statistics.median(r["makespan_cost"] for r in objs)
    targets = {"completion_beats_makespan_objective_everywhere":
               bool(objs) and s["min_gain_vs_makespan_objective"] >= 1.0,
               "completion_beats_sjf_everywhere": bool(objs) and s["min_gain_vs_sjf"] >= 1.0,
               "overhead_per_trial_le_1s": opt["overhead_per_trial_s"] <= 1.0}
    benchlib.write_json("hpo", {"mode": "gpu" if args.gpus else ("quick" if args.quick else "full"),
                                "objectives": objs, "objectives_summary": s, "optuna": opt,
                                "targets": targets, "source": {"objectives": "simulated (planner only)",
                                                               "optuna": "measured"}})
    rows = [{"instance": f"{r['jobs']} jobs {r['gpus']} s{r['seed']}",
             "completion obj (s)": r["mean_completion_s"]["completion_objective"],
             "makespan obj (s)": r["mean_completion_s"]["makespan_objective"],
             "SJF (s)": r["mean_completion_s"]["sjf"], "bound (s)": r["completion_lower_bound_s"],
             "makespan cost": r["makespan_cost"]} for r in objs]
    body = ("Mean completion time of plans (simulated: planner only, seeded instances). "
            "`objective: mean_completion` vs `objective: makespan` vs shortest-job-first; makespan cost = "
            "makespan of the completion plan / makespan of the makespan plan.\n\n"
            + (benchlib.md_table(rows, list(rows[0])) if rows else "(skipped)") + "\n\n"
            + (f"Median gain vs makespan objective {s['median_gain_vs_makespan_objective']:.2f}x, vs SJF "
               f"{s['median_gain_vs_sjf']:.2f}x; median makespan cost {s['median_makespan_cost']:.2f}x.\n\n"
               if s else "")
            + f"Same Optuna search (TPE seed 0, {opt['trials']} trials of {opt['model']}, {opt['steps']} steps, "
              f"{opt['device']}) through Saturn vs plain Optuna in-process (measured): Saturn "
              f"{opt['saturn_wall_s']:.1f}s, plain {opt['plain_wall_s']:.1f}s, overhead "
              f"{opt['overhead_per_trial_s']:.2f}s per trial (target <= 1 s: "
              f"{'met' if targets['overhead_per_trial_le_1s'] else 'missed'}); time to best trial: Saturn "
              f"{_s(opt['time_to_best_s']['saturn'])}, plain {_s(opt['time_to_best_s']['plain'])}.\n")
    benchlib.write_section("hpo", "HPO: planner objectives and Optuna overhead", body)
    print(body)


def _s(v) -> str:
    return "-" if v is None else f"{v:.1f}s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU, small: proves the script runs")
    ap.add_argument("--gpus", type=int, default=0, help="1: the Optuna part on one GPU")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--time-limit", type=float, default=None, help="planner seconds per plan")
    args = ap.parse_args()
    if args.gpus:
        suite, limit = OBJ_QUICK, args.time_limit or 5.0
        trials, model, steps = args.trials or 6, args.model or "gpt2-small", args.steps or 60
        device, prec = "cuda", "bf16"
    elif args.quick:
        suite, limit = OBJ_QUICK, args.time_limit or 2.0
        trials, model, steps = args.trials or 3, args.model or "gpt2-tiny", args.steps or 20
        device, prec = "cpu", "fp32"
    else:
        suite, limit = OBJ_SUITE, args.time_limit or 10.0
        trials, model, steps = args.trials or 8, args.model or "gpt2-tiny", args.steps or 50
        device, prec = "cpu", "fp32"
    objs = bench_objectives(suite, limit)
    opt = bench_optuna(trials, model, steps, device, prec)
    report(objs, opt, args)


if __name__ == "__main__":
    main()
