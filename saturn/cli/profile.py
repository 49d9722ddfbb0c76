"""`saturn profile`: measure the workload's options (a few real steps each) into the profile store."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from saturn.cli import flags
from saturn.cli.common import console, err_console
from saturn.errors import SaturnError


def profile_command(
    workload: Optional[Path] = typer.Argument(
        None, help="Workload YAML. With --show and no workload: the whole store."),
    budget_min: Optional[float] = flags.number(
        None, "--budget-min", help="Start no new trial after this many minutes; what is skipped "
                                   "is reported (run again later to fill it in)"),
    force: bool = typer.Option(False, "--force", help="Re-run trials whose rows are already stored."),
    show: bool = typer.Option(False, "--show", help="Print the stored profile rows (for this "
                                                     "workload's jobs when given) and run nothing."),
    store: Optional[Path] = typer.Option(None, "--store", help="Profile store directory "
                                         "(default: $SATURN_PROFILES, else ~/.cache/saturn/profiles)."),
    exhaustive: bool = typer.Option(False, "--exhaustive", help="Measure every option, also those the "
                                    "prior shows cannot win (default: the likeliest winner of every job "
                                    "first, then only trials that can pay for themselves)."),
) -> None:
    """Run a few training steps per distinct job profile x technique x GPU count and store the
    step time, peak memory and start-up time (OOM and failures are stored as infeasible)."""
    from saturn.profiler.table import ProfileStore

    if show:
        table = ProfileStore(store).load()
        if workload is not None:
            from saturn.profiler.session import workload_rows
            from saturn.techniques.checks import load_workload

            table = workload_rows(table, load_workload(workload))
        print_rows(table, title=f"profile store {ProfileStore(store).path}")
        return
    if workload is None:
        raise SaturnError("give a workload YAML to profile (or --show to print the store)")
    from saturn.api import stages  # the API's profile stage: the same checks as saturn.profile()

    rows = stages.profile(workload, store_dir=store, budget_min=budget_min, force=force, progress=True,
                          exhaustive=exhaustive)
    report = rows.attrs.get("report", {})
    print_rows(rows, title=f"{workload}: profiles")
    print_report(report)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}g}"
    return str(v)


def print_rows(df, title: str = "profiles") -> None:
    """One line per stored option (per job when the table has a `job` column)."""
    if not len(df):
        console.print(f"{title}: no rows")
        return
    has_job = "job" in df.columns
    if has_job:  # jobs sharing a signature share rows: show each option once, list the jobs
        groups = df.groupby(["signature", "technique", "knobs", "gpus", "gpu_type"], sort=False)
        lines = []
        for _, g in groups:
            r = g.iloc[0].to_dict()
            jobs = list(g["job"])
            r["job"] = jobs[0] if len(jobs) == 1 else f"{jobs[0]} (+{len(jobs) - 1})"
            lines.append(r)
    else:
        lines = df.to_dict("records")
    table = Table(title=title)
    cols = (["job"] if has_job else ["signature"]) + ["technique", "knobs", "GPUs", "hardware",
                                                       "status", "step (s)", "peak GB",
                                                       "start-up (s)"]
    if has_job:
        cols.append("runtime (s)")
    cols.append("reason")
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in sorted(lines, key=lambda r: (str(r.get("job", r["signature"])), str(r["technique"]),
                                         int(r["gpus"]), str(r["knobs"]))):
        status = str(r["status"])
        style = "green" if status == "ok" else "red"
        cells = [str(r["job"]) if has_job else str(r["signature"]), str(r["technique"]),
                 "" if r["knobs"] == "{}" else str(r["knobs"]), str(r["gpus"]),
                 f"{r['gpu_type']} {_fmt(r['gpu_memory_gb'], 3)}GB {r['interconnect']}",
                 f"[{style}]{status}[/]" + (" (short)" if str(r.get("short")) == "True" else ""),
                 _fmt(r["step_time_s"]), _fmt(r["peak_mem_gb"], 3), _fmt(r["startup_s"], 3)]
        if has_job:
            cells.append(_fmt(r.get("runtime_s"), 5))
        reason = r.get("reason")
        cells.append("" if reason is None or (isinstance(reason, float) and math.isnan(reason))
                     else str(reason)[:120])
        table.add_row(*cells)
    console.print(table)


def print_report(report: dict) -> None:
    if not report:
        return
    share = ""
    if report.get("wall_s") and report.get("sequential_s"):
        share = (f" (trials one by one: {report['sequential_s']:.0f}s, "
                 f"{report['sequential_s'] / max(report['wall_s'], 1e-9):.1f}x)")
    err_console.print(
        f"{report.get('signatures', 0)} distinct profile(s); {report.get('trials_run', 0)} trial(s) "
        f"run, {report.get('reused', 0)} reused from the store, "
        f"{report.get('static_infeasible', 0)} statically infeasible; "
        f"{report.get('wall_s', 0):.0f}s{share}; store: {report.get('store')}")
    skipped = report.get("skipped") or []
    budget = [s for s in skipped if "budget" in s["reason"]]
    if budget:
        err_console.print(f"[yellow]time budget spent:[/] {len(budget)} trial(s)/cell(s) skipped (unmeasured, "
                          "not infeasible: `saturn plan` uses the prior's estimates for them); run "
                          "`saturn profile` again to measure them:")
        for s in budget[:20]:
            err_console.print(f"  {s['technique']} x{s['gpus']} {s['knobs'] or ''}")
    value = [s for s in skipped if s["reason"].startswith(("cannot pay for itself", "the prior expects"))]
    if value:
        err_console.print(f"{len(value)} option(s) not measured: by the prior they cannot pay for their trial "
                          "(estimated in plans; `--exhaustive` measures them)")
    other = len(skipped) - len(budget) - len(value)
    if other:
        err_console.print(f"{other} option(s) skipped as unable to win (see --show / the report)")
