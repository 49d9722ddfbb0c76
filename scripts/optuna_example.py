"""An Optuna study whose trials are Saturn jobs: tiny GPT models trained on CPU slots.

    python scripts/optuna_example.py                      # 6 trials, 3 at a time, real training
    python scripts/optuna_example.py --simulate           # virtual clock, no training (seconds)
    python scripts/optuna_example.py --profiles store     # measure profiles first (saturn profile)

Optuna samples the learning rate and weight decay (TPE) and prunes bad trials (median rule); Saturn
plans each batch of trials jointly on the cluster's slots, runs them as real training processes,
streams their per-step losses back as intermediate values, and cancels pruned trials' jobs so their
slots are re-planned. At the end it prints each trial's state, value, Saturn job, technique, GPUs
and checkpoint.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import saturn
from saturn.api import synthetic_profiles


def make_job(trial, steps: int):
    """Trial parameters -> a Saturn job (the only place where the search space meets the job)."""
    lr = trial.suggest_float("lr", 1e-4, 3e-1, log=True)
    wd = trial.suggest_float("weight_decay", 0.0, 0.2)
    return saturn.Job(name="lm", model="gpt2-tiny", data="synthetic-tokens", batch_size=8, seq_len=16,
                      precision="fp32", steps=steps, gpus=[1, 2], techniques=["ddp", "fsdp"],
                      optimizer={"name": "adamw", "lr": lr, "weight_decay": wd})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--batch", type=int, default=3, help="trials in flight (planned together)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--slots", type=int, default=2, help="CPU slots standing in for GPUs")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--simulate", action="store_true", help="virtual clock instead of training")
    ap.add_argument("--profiles", choices=("synthetic", "store"), default="synthetic",
                    help="synthetic: made-up step times (instant); store: the profile store, "
                         "profiling what is missing with real trials first")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        import optuna
    except ImportError:
        print("this example needs Optuna: pip install optuna", file=sys.stderr)
        return 2
    from saturn.integrations.optuna import optimize

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cluster = saturn.Cluster(devices="cpu", slots=args.slots)
    probe = make_job(optuna.trial.FixedTrial({"lr": 1e-3, "weight_decay": 0.0}), args.steps)
    profiles = None
    if args.profiles == "synthetic" or args.simulate:
        profiles = synthetic_profiles([probe], step_time_s=0.05, startup_s=5.0, gpus=(1, 2),
                                      technique="ddp")
    run_dir = args.run_dir or Path("runs") / f"optuna-example-{time.strftime('%Y%m%d-%H%M%S')}"

    def sim_loss(job, step):  # simulated world: a best lr near 3e-3, noise-free
        return 2.0 + (math.log10(job.optimizer.lr) + 2.5) ** 2 + 4.0 / math.sqrt(1 + step)

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=args.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=20))
    t0 = time.time()
    with saturn.Orchestrator(cluster, run_dir=run_dir, backend="simulate" if args.simulate else "process",
                             profiles=profiles, interval_s=30, sim_speed=2, sim_loss=sim_loss) as orch:
        results = optimize(study, lambda t: make_job(t, args.steps), orch, n_trials=args.trials,
                           n_jobs=args.batch, report_every=5)
    print(f"{len(study.trials)} trials in {time.time() - t0:.0f}s; run directory {run_dir}")
    print(f"{'#':>3} {'state':9} {'value':>8} {'lr':>9} {'job':10} {'saturn':10} {'steps':>5} technique/GPUs")
    for t in study.trials:
        r = results.get(t.number)
        value = f"{t.value:.4f}" if t.value is not None else "-"
        tech = f"{r.technique}x{len(r.gpus)}" if r is not None and r.technique else "-"
        job = t.user_attrs.get("saturn_job", "-")
        print(f"{t.number:>3} {t.state.name:9} {value:>8} {t.params['lr']:9.2e} {job:10} "
              f"{r.status if r else '-':10} {r.step if r else 0:>5} {tech}")
    best = study.best_trial
    print(f"best: trial {best.number} loss {best.value:.4f} params {best.params} "
          f"checkpoint {results[best.number].checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
