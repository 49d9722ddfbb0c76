"""`saturn run`, `saturn status`, `saturn report`: execute a workload introspectively.

    saturn run WORKLOAD.yaml [--plan plan.json] [--interval S] [--run-dir DIR] [--simulate]
    saturn run --resume DIR
    saturn status DIR
    saturn report DIR [--gantt gantt.png] [--curves curves.png]
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Optional

import typer

from saturn.cli import flags
from saturn.errors import SaturnError
from saturn.executor import defaults


def run_command(
    workload: Optional[Path] = typer.Argument(None, help="Workload spec (YAML).", dir_okay=False),
    plan: Optional[Path] = typer.Option(None, "--plan", help="Start from this plan (JSON from `saturn plan --json`)."),
    interval: float = flags.number(defaults.INTERVAL_S, "--interval",
                                   help="Re-plan every S seconds (and on every job end)"),
    run_dir: Optional[Path] = flags.run_dir("--run-dir", help="Run directory (journal, logs, checkpoints). "
                                            "Default: runs/<workload>-<time>."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    simulate: bool = typer.Option(False, "--simulate",
                                  help="Simulated clock: jobs progress at profiled speed x noise."),
    profiles: Optional[Path] = typer.Option(None, "--profiles",
                                            help="Profile table (CSV/parquet) instead of the store."),
    no_introspect: bool = typer.Option(False, "--static", help="Execute the first plan without re-planning."),
    time_limit: float = flags.number(defaults.TIME_LIMIT_S, "--time-limit",
                                     help="Planner time limit per (re-)plan, seconds"),
    max_retries: int = flags.number(defaults.MAX_RETRIES, "--max-retries",
                                    help="Relaunches of a crashed job before it is failed"),
    checkpoint_every: int = flags.number(defaults.CHECKPOINT_EVERY, "--checkpoint-every",
                                         help="Checkpoint (and report progress) every N steps"),
    noise: float = flags.number(0.15, "--noise", help="--simulate: sigma of the log-normal step-time noise"),
    seed: int = flags.number(0, "--seed", help="--simulate: noise seed"),
    device_type: str = flags.choice("auto", "--devices", flags.DEVICES, help="auto | cuda | cpu"),
    live: bool = typer.Option(True, "--live/--no-live", help="Show progress: a live table in a terminal, plain "
                              "lines (one per event, a status line every --progress-every s) otherwise."),
    progress_every: float = flags.number(10.0, "--progress-every",
                                         help="Output not a terminal: seconds between two status lines"),
    log_to: Optional[str] = typer.Option(None, "--log-to", callback=lambda v: _check_log_to(v),
                                         help="Stream per-step losses to a tracker: tensorboard:DIR, "
                                              "mlflow[:TRACKING_URI] or wandb[:PROJECT]."),
    require_measured: bool = typer.Option(False, "--require-measured", help="Refuse to run on numbers nobody "
                                          "measured (estimated, extrapolated, simulated, guessed); by default "
                                          "the jobs' own first steps measure them when they run here."),
    fuse: bool = typer.Option(False, "--fuse", help="Also measure jobs of one shape (that differ only in "
                              "optimizer settings and seed) trained fused as one model, a few group widths, "
                              "and let the planner choose fused groups where they pay (saturn.fused)."),
) -> None:
    """Plan and execute: options nobody measured are measured by the jobs' own first steps (into
    the profile store); re-plan as real progress comes in, switch jobs between techniques/GPU
    counts from their checkpoints when it pays, retry crashed jobs."""
    from saturn.cli.common import console
    from saturn.executor.build import resume_executor

    if not simulate:
        flags.check_devices_here(device_type)
    if resume is not None:
        if simulate:
            raise SaturnError("--resume continues a real run; simulated runs are not resumable")
        display = _display(console, resume, simulate=False, live=live, every_s=progress_every, log_to=log_to)
        ex = resume_executor(resume, checkpoint_every=checkpoint_every, device_type=device_type, display=display)
        _execute(ex, display, console, resume)
        return
    if workload is None:
        raise SaturnError("give a workload YAML (or --resume RUN_DIR)")
    if not workload.exists():
        raise SaturnError(f"workload file {workload} does not exist")
    from saturn.api.run_stages import prepare_run, start_executor

    prep = prepare_run(workload, profiles, simulate=simulate, require_measured=require_measured,
                       run_dir=run_dir, time_limit_s=time_limit, plan=plan, run_dir_flag="--run-dir",
                       run_dir_hint="continue it with --resume {run_dir} or pick another --run-dir",
                       say=lambda s: console.print(s, highlight=False), device_type=device_type, fuse=fuse)
    display = _display(console, prep.run_dir, simulate=simulate, live=live, every_s=progress_every, log_to=log_to)
    ex = start_executor(prep, display=display, simulate=simulate, interval_s=interval,
                        introspect=not no_introspect, time_limit_s=time_limit, max_retries=max_retries,
                        checkpoint_every=checkpoint_every, noise=noise, seed=seed, device_type=device_type)
    run_dir = prep.run_dir
    _execute(ex, display, console, run_dir)


def _check_log_to(value: Optional[str]) -> Optional[str]:
    from saturn.analysis.trackers import check_log_to

    return check_log_to(value)


def _display(console, run_dir: Path, *, simulate: bool, live: bool, every_s: float, log_to: Optional[str]):
    """A live table in a terminal (real runs), plain progress lines otherwise (log files, pipes,
    simulations), plus the tracker follower of --log-to."""
    import sys

    from saturn.executor.display import LiveDisplay
    from saturn.executor.progress import Displays, ProgressLines

    shown = None
    if live:
        shown = (LiveDisplay(console) if sys.stdout.isatty() and not simulate else
                 ProgressLines(lambda s: console.print(s, highlight=False, markup=False, soft_wrap=True),
                               every_s=every_s))
    follower = None
    if log_to:
        from saturn.analysis.trackers import MetricsFollower, open_tracker

        follower = MetricsFollower(run_dir, [open_tracker(log_to, Path(run_dir).name)])
    return Displays(shown, follower) if shown or follower else None


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
        ex.close()  # the run directory's lock: another executor may resume it now
    _print_summary(console, run_dir)
    if stop["n"] and not ex.state.done():
        console.print(f"stopped: running jobs were checkpointed; continue with `saturn run --resume {run_dir}`")
        raise typer.Exit(130)
    if stop["n"]:  # the signal came during the final drains: they were waited for, nothing is left
        console.print("interrupted after every job had ended (their final checkpoints are written): "
                      "nothing to resume")
    failed = [r.name for r in ex.results.values() if r.status == "failed"]
    if failed:  # (each one's cause and log path are in the summary above)
        console.print(f"[red]failed jobs:[/] {', '.join(failed)}")
        raise typer.Exit(1)


def _print_summary(console, run_dir: Path, live: bool = False) -> None:
    from saturn.executor.report import summarize
    from saturn.fmt import compact_table, duration, short_names

    s = summarize(run_dir)  # jobs of a dead executor shown dead (the one liveness check)
    t = compact_table(f"run {run_dir}")
    word = "slot" if s.get("cpu_slots") else "GPU"
    names = short_names([j["job"] for j in s["jobs"]], max_len=24)  # the shared prefix goes, not the tail
    for col in ("job", "status", "steps", "technique", f"{word}s", "tries", "loss", "planned", "actual", "error"):
        t.add_column(col, no_wrap=True, min_width=max([len(v) for v in names.values()] + [3]) if col == "job" else None)
    for j in s["jobs"]:
        t.add_row(names[j["job"]], j["status"], f"{j['progress']}/{j['total_steps']}", j["technique"] or "-",
                  str(j["gpus"] or "-"), str(j["attempts"]), f"{j['loss']:.4g}" if j["loss"] is not None else "-",
                  duration(j["planned_runtime_s"]), duration(j["actual_runtime_s"]),
                  f"{100 * j['prediction_error']:+.0f}%" if j["prediction_error"] is not None else "-")
    console.print(t)
    for j in s["jobs"]:
        if j["status"] == "failed":
            console.print(f"[red]{j['job']} failed:[/] {j.get('cause') or j.get('reason') or 'no cause recorded'}"
                          + (f" (log: {j['log']})" if j.get("log") else ""), highlight=False, soft_wrap=True)
    for w in s.get("warnings") or []:
        console.print(f"[yellow]warning:[/] job {w['job']}: {w['text']}", highlight=False, soft_wrap=True)
    for g, members in (s.get("sharp_groups") or {}).items():
        kind = "fused group" if str(g).startswith("fused:") else "SHARP group"
        console.print(f"{kind} {g}: {', '.join(members)} trained together, one attempt per launch")
    util = s["gpu_allocation"]
    console.print(f"makespan {duration(s['makespan_s'])} (planned {duration(s['planned_makespan_s'])}), "
                  f"{word} allocation {100 * util:.0f}%, " if util is not None else "",
                  f"plan versions {s['plan_versions']}, switches {s['switches']}")
    if live:
        ex = s["executor"]
        console.print(f"executor: {ex['state']}" + (f" -- {ex['detail']}" if ex.get("detail") else ""))


def status_command(
    run_dir: Path = typer.Argument(..., help="Run directory of `saturn run`."),
    json_out: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Where a run stands (works while it runs)."""
    from saturn.cli.common import console
    from saturn.executor.journal import run_liveness
    from saturn.executor.report import summarize

    run_liveness(run_dir)  # not a run directory: a JournalError naming it
    if json_out:
        print(json.dumps(summarize(run_dir), indent=2, default=str))
        return
    _print_summary(console, run_dir, live=True)


def report_command(
    run_dir: Path = typer.Argument(..., help="Run directory of `saturn run`."),
    gantt: Optional[Path] = flags.output_file("--gantt", help="Plan-vs-actual Gantt PNG (default RUN_DIR/gantt.png)."),
    json_out: Optional[Path] = flags.output_file("--json", help="Write the report as JSON to this file."),
    curves: Optional[Path] = flags.output_file("--curves", help="Loss curves PNG: loss vs step and vs run "
                                               "time, one colour per job, labelled by its hyperparameters."),
) -> None:
    """Plan vs actual: Gantt chart, per-job runtime and prediction error per phase, goodput; loss curves."""
    from saturn.cli.common import console, write_json
    from saturn.executor.report import gantt as draw
    from saturn.executor.report import summarize

    s = summarize(run_dir)
    _print_summary(console, run_dir)
    errs = [abs(j["prediction_error"]) for j in s["jobs"] if j["prediction_error"] is not None]
    if errs:
        console.print(f"mean |prediction error| {100 * sum(errs) / len(errs):.1f}% over {len(errs)} completed jobs")
    if s.get("data"):  # input pipelines: data-wait phase and the tuner's decisions (saturn.data)
        from saturn.data.report import format_lines

        console.print("input pipelines:\n  " + "\n  ".join(format_lines(s["data"])))
    out = draw(run_dir, gantt or Path(run_dir) / "gantt.png")
    console.print(f"Gantt chart: {out}")
    from saturn.executor.report import phases_chart, print_phases

    print_phases(console, s)
    console.print(f"phases chart: {phases_chart(run_dir, Path(out).with_name('phases.png'))}")
    if curves is not None:
        from saturn.analysis.curves import draw_curves

        console.print(f"loss curves: {draw_curves(run_dir, curves)}", highlight=False)
    console.print(f"per-job results (hyperparameters, final and best loss, checkpoints; sort, CSV, JSON): "
                  f"saturn results {run_dir}", highlight=False, soft_wrap=True)
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
        from rich.markup import escape

        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
