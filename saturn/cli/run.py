"""`saturn run`, `saturn status`, `saturn report`: execute a workload introspectively.

    saturn run WORKLOAD.yaml [--plan plan.json] [--interval S] [--run-dir DIR] [--simulate]
    saturn run --resume DIR
    saturn status DIR
    saturn report DIR [--gantt gantt.png]
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from pathlib import Path
from typing import Any, Optional

import typer

from saturn.errors import SaturnError


def load_profiles(wl: Any, workload_path: Optional[Path], profiles: Optional[Path], *, allow_profiling: bool):
    """The planner's per-job profile table: --profiles FILE, else the store, profiling what is
    missing (real runs only)."""
    from saturn.errors import MissingProfilesError
    from saturn.profiles.store import load_store, profiles_for, read_table

    if workload_path is not None:
        try:
            object.__setattr__(wl, "path", str(workload_path))
        except Exception:  # noqa: BLE001 - cosmetic (error messages quote the path)
            pass
    if profiles is not None:
        table = read_table(profiles)
        if "job" not in table.columns:
            table = profiles_for(wl, table, source=str(profiles))
        return table
    try:
        return profiles_for(wl, load_store())
    except MissingProfilesError:
        if not allow_profiling:
            raise
    from saturn.profiler import profile

    profile(wl)
    return profiles_for(wl, load_store())


def _default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_command(
    workload: Optional[Path] = typer.Argument(None, help="Workload spec (YAML).", dir_okay=False),
    plan: Optional[Path] = typer.Option(None, "--plan", help="Start from this plan (JSON from `saturn plan --json`)."),
    interval: float = typer.Option(60.0, "--interval", help="Re-plan every S seconds (and on every job end)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory (journal, logs, checkpoints). "
                                           "Default: runs/<workload>-<time>."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    simulate: bool = typer.Option(False, "--simulate", help="Simulated clock: jobs progress at profiled speed x noise."),
    profiles: Optional[Path] = typer.Option(None, "--profiles", help="Profile table (CSV/parquet) instead of the store."),
    no_introspect: bool = typer.Option(False, "--static", help="Execute the first plan without re-planning."),
    time_limit: float = typer.Option(10.0, "--time-limit", help="Planner time limit per (re-)plan, seconds."),
    max_retries: int = typer.Option(2, "--max-retries", help="Relaunches of a crashed job before it is failed."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Checkpoint (and report progress) every N steps."),
    noise: float = typer.Option(0.15, "--noise", help="--simulate: sigma of the log-normal step-time noise."),
    seed: int = typer.Option(0, "--seed", help="--simulate: noise seed."),
    device_type: str = typer.Option("auto", "--devices", help="auto | cuda | cpu"),
    live: bool = typer.Option(True, "--live/--no-live", help="Live table while running."),
    require_measured: bool = typer.Option(False, "--require-measured", help="Refuse to run on extrapolated, "
                                          "simulated or guessed profile numbers (default: measure them first "
                                          "when the hardware is here, else warn)."),
) -> None:
    """Profile what is missing, plan, and execute: re-plan as real progress comes in, switch jobs
    between techniques/GPU counts from their checkpoints when it pays, retry crashed jobs."""
    from saturn.cli.common import console
    from saturn.executor import Executor, ExecutorConfig, ProcessBackend, SimulatedBackend
    from saturn.executor.display import LiveDisplay

    if resume is not None:
        if simulate:
            raise SaturnError("--resume continues a real run; simulated runs are not resumable")
        cfg_over = None
        display = LiveDisplay(console) if live else None
        be_kwargs = {"device_type": device_type, "checkpoint_every": checkpoint_every}
        from saturn.executor.ray_backend import RayExecutor, resume_backend_factory

        factory = resume_backend_factory(resume, checkpoint_every=checkpoint_every)
        if factory is not None:  # the run was on a Ray cluster: resume there
            ex = RayExecutor.resume(resume, factory, config=cfg_over, display=display)
        else:
            ex = Executor.resume(resume, lambda off: ProcessBackend(resume, clock_offset=off, **be_kwargs),
                                 config=cfg_over, display=display)
        _execute(ex, display, console, resume)
        return
    if workload is None:
        raise SaturnError("give a workload YAML (or --resume RUN_DIR)")
    if not workload.exists():
        raise SaturnError(f"workload file {workload} does not exist")
    from saturn.spec import load_workload

    wl = load_workload(workload)
    if not simulate and wl.cluster.ray is None:  # the jobs run here: their files must be here (#15)
        from saturn.spec import check_local_paths

        check_local_paths(wl)
    cluster = wl.cluster.resolved()
    table = load_profiles(wl, workload, profiles, allow_profiling=not simulate)
    if not simulate:  # never run silently on guesses (#15)
        from saturn.profiles.guesses import measure_guesses

        table = measure_guesses(wl, cluster, table, require_measured=require_measured, from_store=profiles is None,
                                reload=lambda: load_profiles(wl, workload, None, allow_profiling=False),
                                time_limit_s=time_limit, path=str(workload), say=console.print)
    run_dir = run_dir or _default_run_dir(wl.name)
    if (run_dir / "journal.sqlite").exists():
        raise SaturnError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --run-dir")
    given = None
    if plan is not None:
        from saturn.planner import Plan

        given = Plan.from_json(plan)
    cfg = ExecutorConfig(interval_s=interval, introspect=not no_introspect, max_retries=max_retries,
                         time_limit_s=time_limit, poll_s=math.inf if simulate else 0.5)
    executor_cls = Executor
    if simulate:
        backend = simulated_backend(table, noise=noise, seed=seed)
    elif wl.cluster.ray is not None:
        from saturn.executor.ray_backend import RayBackend, RayExecutor

        backend = RayBackend(run_dir, wl.cluster.ray, checkpoint_every=checkpoint_every)
        executor_cls = RayExecutor
    else:
        backend = ProcessBackend(run_dir, device_type=device_type if not cluster.is_cpu else "cpu",
                                 checkpoint_every=checkpoint_every)
    display = LiveDisplay(console) if live and not simulate else None
    ex = executor_cls(wl.jobs, cluster, table, backend, run_dir=run_dir, config=cfg, plan=given,
                      display=display)
    _execute(ex, display, console, run_dir)


def simulated_backend(table, *, noise: float = 0.15, seed: int = 0, **kw):
    """A SimulatedBackend running each job at its profiled speed x a log-normal factor per job."""
    from saturn.executor import SimulatedBackend
    from saturn.executor.policy import _num

    rng = random.Random(seed)
    jobs = sorted(set(map(str, table["job"])))
    factor = {j: rng.lognormvariate(0.0, noise) if noise > 0 else 1.0 for j in jobs}
    steps, startup = {}, {}
    for r in table.to_dict("records"):
        key = (str(r["job"]), str(r["technique"]), int(r["gpus"]))
        st = _num(r.get("step_time_s"), math.nan)
        if math.isfinite(st) and (key not in steps or st < steps[key]):
            steps[key] = st
            startup[key] = _num(r.get("startup_s"), 0.0)
    return SimulatedBackend(lambda j, t, g, k: steps[(j, t, g)] * factor[j],
                            startup=lambda j, t, g: startup.get((j, t, g), 0.0), **kw)


def _execute(ex, display, console, run_dir: Path) -> None:
    stop = {"n": 0}

    def handler(signum, frame):
        stop["n"] += 1
        if stop["n"] == 1:
            ex.request_shutdown(signal.Signals(signum).name)
        else:
            raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if display is not None:
            with display:
                ex.run_until_done()
        else:
            ex.run_until_done()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        ex.backend.shutdown()
    _print_summary(console, run_dir)
    if stop["n"]:
        console.print(f"stopped: running jobs were checkpointed; continue with `saturn run --resume {run_dir}`")
        raise typer.Exit(130)
    failed = [r.name for r in ex.results.values() if r.status == "failed"]
    if failed:
        console.print(f"[red]failed jobs:[/] {', '.join(failed)} (logs under {run_dir}/jobs/)")
        raise typer.Exit(1)


def _print_summary(console, run_dir: Path, live: Optional[dict] = None) -> None:
    from rich.table import Table

    from saturn.executor.journal import mark_dead_jobs
    from saturn.executor.report import fmt_s, summarize

    s = summarize(run_dir) if live is None else mark_dead_jobs(summarize(run_dir), live)
    t = Table(title=f"run {run_dir}")
    for col in ("job", "status", "steps", "technique", "GPUs", "tries", "loss", "planned", "actual", "error"):
        t.add_column(col)
    for j in s["jobs"]:
        t.add_row(j["job"], j["status"], f"{j['progress']}/{j['total_steps']}", j["technique"] or "-",
                  str(j["gpus"] or "-"), str(j["attempts"]), f"{j['loss']:.4g}" if j["loss"] is not None else "-",
                  fmt_s(j["planned_runtime_s"]), fmt_s(j["actual_runtime_s"]),
                  f"{100 * j['prediction_error']:+.0f}%" if j["prediction_error"] is not None else "-")
    console.print(t)
    util = s["gpu_utilization"]
    console.print(f"makespan {fmt_s(s['makespan_s'])} (planned {fmt_s(s['planned_makespan_s'])}), "
                  f"GPU utilization {100 * util:.0f}%, " if util is not None else "",
                  f"plan versions {s['plan_versions']}, switches {s['switches']}")
    if live is not None:
        console.print(f"executor: {live['state']}" + (f" -- {live['detail']}" if live.get("detail") else ""))


def status_command(
    run_dir: Path = typer.Argument(..., help="Run directory of `saturn run`."),
    json_out: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Where a run stands (works while it runs)."""
    from saturn.cli.common import console
    from saturn.executor.journal import mark_dead_jobs, run_liveness
    from saturn.executor.report import summarize

    live = run_liveness(run_dir)  # dead vs running executor (pid / heartbeat)
    if json_out:
        print(json.dumps(mark_dead_jobs(summarize(run_dir), live), indent=2, default=str))
        return
    _print_summary(console, run_dir, live)


def report_command(
    run_dir: Path = typer.Argument(..., help="Run directory of `saturn run`."),
    gantt: Optional[Path] = typer.Option(None, "--gantt", help="Plan-vs-actual Gantt PNG (default RUN_DIR/gantt.png)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON to this file."),
) -> None:
    """Plan vs actual: Gantt chart, per-job runtime and prediction error, GPU utilization."""
    from saturn.cli.common import console, write_json
    from saturn.executor.report import gantt as draw, summarize

    s = summarize(run_dir)
    _print_summary(console, run_dir)
    errs = [abs(j["prediction_error"]) for j in s["jobs"] if j["prediction_error"] is not None]
    if errs:
        console.print(f"mean |prediction error| {100 * sum(errs) / len(errs):.1f}% over {len(errs)} completed jobs")
    out = draw(run_dir, gantt or Path(run_dir) / "gantt.png")
    console.print(f"Gantt chart: {out}")
    if json_out is not None:
        write_json(s, json_out)


def _app() -> "typer.Typer":
    """A stand-alone app (`python -m saturn.cli.run run|status|report ...`) until these commands
    are registered in `saturn.cli.main`."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("run")(run_command)
    app.command("status")(status_command)
    app.command("report")(report_command)
    return app


if __name__ == "__main__":
    import sys

    from saturn.cli.common import err_console

    try:
        _app()()
    except SaturnError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
