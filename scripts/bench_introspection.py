"""Benchmark introspective execution on the simulated backend.

For each seed: a random SPASE instance (saturn.planner.random_instances), true step times = profiled
x a log-normal error (clipped to +-30%), and 20% of the jobs stopped early (at 20-80% of their
steps, unknown to the planner: an HPO algorithm killing them). Compared, all executed on the same
simulated cluster by the same executor:

* introspective: Saturn's plan, re-planned every interval and on every job end;
* static: the same initial plan executed as is (plan order, real durations);
* baselines: the planner's hand-planning baselines (whole node, one GPU, fixed split, greedy
  min-area), executed statically;
* perfect: the plan made knowing the true step times and the early stops, executed.

    python scripts/bench_introspection.py --seeds 20 --jobs 10 --gpus 8
    python scripts/bench_introspection.py --quick      # smoke test: 2 seeds, 6 jobs; writes nothing

Writes the `introspection` section of BENCHMARKS.md and benchmarks/introspection.json (through
scripts/benchlib.py, with the command, machine and date).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from saturn.executor import Executor, ExecutorConfig, SimulatedBackend  # noqa: E402
from saturn.planner import Plan, plan  # noqa: E402
from saturn.planner.random_instances import random_instance  # noqa: E402


def make_case(seed: int, n_jobs: int, nodes: list[int], err: float, stop_frac: float, sigma: float):
    from saturn.parse import canonical_knobs as knobs_key

    jobs, cluster, prof = random_instance(n_jobs, nodes, seed=seed)
    rng = random.Random(10_000 + seed)
    clip = lambda x: min(1 + err, max(1 - err, x))  # noqa: E731
    job_f = {j: rng.lognormvariate(0.0, sigma) for j in jobs}
    true_step = {}
    for r in prof.itertuples():
        if r.feasible:
            true_step[(r.job, r.technique, r.gpus, knobs_key(r.knobs))] = r.step_time_s * clip(
                job_f[r.job] * rng.lognormvariate(0.0, sigma / 3))
    names = sorted(jobs)
    stopped = rng.sample(names, max(1, round(stop_frac * len(names))))
    stop_after = {j: max(1, int(jobs[j] * rng.uniform(0.2, 0.8))) for j in stopped}
    startup = {(r.job, r.technique, r.gpus): r.startup_s for r in prof.itertuples() if r.feasible}
    return jobs, cluster, prof, true_step, stop_after, startup


def backend(true_step, stop_after, startup, checkpoint_s):
    from saturn.parse import canonical_knobs as knobs_key

    def st(j, t, g, k):
        return true_step[(j, t, g, knobs_key(k))]

    return SimulatedBackend(st, startup=lambda j, t, g: startup[(j, t, g)], stop_after=stop_after,
                            checkpoint_s=checkpoint_s)


def execute(jobs, cluster, prof, case, cfg, given=None):
    _, _, _, true_step, stop_after, startup = case
    be = backend(true_step, stop_after, startup, cfg.pop("checkpoint_s"))
    ex = Executor(jobs, cluster, prof, be, config=ExecutorConfig(**cfg), plan=given)
    ex.run_until_done()
    assert all(js.status == "completed" for js in ex.state.jobs.values())
    return ex


def baseline_plans(jobs, cluster, prof):
    from saturn.planner.baselines import baseline_plans as bp
    from saturn.planner.inputs import normalize_cluster, normalize_jobs
    from saturn.planner.options import build_options

    nodes = normalize_cluster(cluster)
    opts = build_options(normalize_jobs(jobs), nodes, prof)
    return {k: Plan(assignments=v).to_dict() for k, v in bp(opts, nodes).items()}


def run_seed(seed, args):
    from saturn.parse import canonical_knobs as knobs_key

    case = make_case(seed, args.jobs, args.gpus, args.err, args.stop_frac, args.sigma)
    jobs, cluster, prof, true_step, stop_after, startup = case
    base = dict(time_limit_s=args.time_limit, mip_gap=args.gap, poll_s=math.inf, checkpoint_s=args.checkpoint_s,
                min_gain_frac=args.min_gain)
    t0 = time.perf_counter()
    initial = plan(jobs, cluster, prof, time_limit_s=args.time_limit, mip_gap=args.gap)
    interval = initial.makespan_s / args.replans
    out = {"seed": seed, "planned_s": initial.makespan_s, "early_stopped": sorted(stop_after)}
    intro = execute(jobs, cluster, prof, case, dict(base, interval_s=interval, introspect=True), given=initial)
    out["introspective"] = intro.makespan_s
    out["replans_adopted"] = intro.state.replans
    out["switches"] = intro.state.switches
    out["plan_calls"] = intro.plan_calls
    out["plan_time_s"] = intro.plan_time_s
    out["static"] = execute(jobs, cluster, prof, case, dict(base, introspect=False), given=initial).makespan_s
    for name, p in baseline_plans(jobs, cluster, prof).items():
        out[f"baseline:{name}"] = execute(jobs, cluster, prof, case, dict(base, introspect=False), given=p).makespan_s
    # perfect knowledge: true step times and true lengths
    true_prof = prof.copy()
    true_prof["step_time_s"] = [true_step.get((r.job, r.technique, r.gpus, knobs_key(r.knobs)), math.nan)
                                for r in prof.itertuples()]
    true_jobs = {j: stop_after.get(j, s) for j, s in jobs.items()}
    perfect = plan(true_jobs, cluster, true_prof, time_limit_s=args.time_limit * 3, mip_gap=args.gap / 2)
    out["perfect"] = execute(jobs, cluster, prof, case, dict(base, introspect=False),
                             given=perfect).makespan_s
    out["wall_s"] = time.perf_counter() - t0
    return out


def summarize(rows):
    keys = [k for k in rows[0] if k in ("introspective", "static", "perfect") or k.startswith("baseline:")]
    mean = {k: statistics.mean(r[k] for r in rows) for k in keys}
    rel = {k: statistics.mean(r[k] / r["perfect"] for r in rows) for k in keys}
    gap = mean["static"] - mean["perfect"]
    recovered = (mean["static"] - mean["introspective"]) / gap if gap > 0 else float("nan")
    per_seed = [(r["static"] - r["introspective"]) / (r["static"] - r["perfect"])
                for r in rows if r["static"] - r["perfect"] > 0.01 * r["perfect"]]
    wins = sum(r["introspective"] < r["static"] - 1e-6 for r in rows)
    losses = sum(r["introspective"] > r["static"] + 1e-6 for r in rows)
    return {"mean_makespan_s": mean, "mean_relative_to_perfect": rel, "gap_recovered": recovered,
            "gap_recovered_median_per_seed": statistics.median(per_seed) if per_seed else None,
            "seeds_with_gap": len(per_seed),
            "introspective_better_than_static": wins, "introspective_worse_than_static": losses,
            "mean_switches": statistics.mean(r["switches"] for r in rows),
            "mean_adopted_replans": statistics.mean(r["replans_adopted"] for r in rows),
            "mean_plan_calls": statistics.mean(r["plan_calls"] for r in rows)}


TITLE = "Introspective execution (simulation)"


def markdown(summary, args, rows):
    m, rel = summary["mean_makespan_s"], summary["mean_relative_to_perfect"]
    lines = [f"{len(rows)} seeds; random instances of {args.jobs} jobs on nodes {args.gpus} GPUs; true step time = "
             f"profiled x log-normal error (sigma {args.sigma}, clipped to +-{int(args.err * 100)}%); "
             f"{int(args.stop_frac * 100)}% of jobs stopped early at 20-80% of their steps; "
             f"checkpoint {args.checkpoint_s}s "
             f"+ profiled start-up per switch; re-plan every planned-makespan/{args.replans} and on every job end; "
             f"planner time limit {args.time_limit}s.", "",
             "| strategy | mean makespan (s) | mean makespan / perfect |", "|---|---:|---:|"]
    for k in sorted(m, key=lambda k: m[k]):
        lines.append(f"| {k} | {m[k]:.0f} | {rel[k]:.3f} |")
    lines += ["", f"Gap static -> perfect recovered by introspection: **{100 * summary['gap_recovered']:.0f}%** "
              f"(of mean makespans; median over the {summary['seeds_with_gap']} seeds where static is >1% above "
              "perfect: "
              f"{100 * (summary['gap_recovered_median_per_seed'] or 0):.0f}%). "
              f"Target: >= 50%.  ",
              f"Introspective better than static on {summary['introspective_better_than_static']}/{len(rows)} "
              f"seeds, worse on {summary['introspective_worse_than_static']}; "
              f"mean {summary['mean_adopted_replans']:.1f} adopted re-plans, {summary['mean_switches']:.1f} switches, "
              f"{summary['mean_plan_calls']:.1f} planner calls per run.", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--gpus", type=int, nargs="+", default=[8])
    ap.add_argument("--err", type=float, default=0.3)
    ap.add_argument("--sigma", type=float, default=0.15)
    ap.add_argument("--stop-frac", type=float, default=0.2)
    ap.add_argument("--checkpoint-s", type=float, default=10.0)
    ap.add_argument("--replans", type=float, default=10.0, help="re-plan interval = planned makespan / this")
    ap.add_argument("--time-limit", type=float, default=1.0)
    ap.add_argument("--gap", type=float, default=0.02)
    ap.add_argument("--min-gain", type=float, default=0.01)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test (2 seeds, 6 jobs); prints only, writes nothing")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.jobs = min(args.seeds, 2), min(args.jobs, 6)
    rows = []
    for seed in range(args.seeds):
        r = run_seed(seed, args)
        rows.append(r)
        print(f"seed {seed}: static {r['static']:.0f} intro {r['introspective']:.0f} perfect {r['perfect']:.0f} "
              f"switches {r['switches']} ({r['wall_s']:.0f}s)", flush=True)
    summary = summarize(rows)
    md = markdown(summary, args, rows)
    print(md)
    if args.quick:  # a smoke run must not overwrite the recorded results
        print("--quick: nothing written")
        return
    sys.path.insert(0, str(ROOT / "scripts"))
    from benchlib import write_json, write_section

    write_json("introspection", {"args": vars(args), "summary": summary, "seeds": rows})
    write_section("introspection", TITLE, md)
    print("wrote benchmarks/introspection.json and the introspection section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
