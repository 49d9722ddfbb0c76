"""`saturn plan WORKLOAD.yaml`: profiles -> a plan (table, summary vs. baselines, JSON, Gantt)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from saturn.cli import flags
from saturn.fmt import duration

BASELINE_LABELS = {
    "whole_node": "whole node, sequential",
    "one_gpu": "one GPU each",
    "fixed_split": "fixed equal GPU groups",
    "greedy_min_area": "greedy min-area, longest first",
    "sjf": "shortest job first, one GPU each",
}


TABLE_MAX_ROWS = 200  # a table of 10,000 rows takes rich a minute to lay out and nobody reads it


def plan_command(
    workload: Path = typer.Argument(..., help="Workload spec (YAML) with jobs and cluster.", exists=True,
                                    dir_okay=False),
    profiles: Optional[Path] = typer.Option(None, "--profiles", help="Profile table (CSV or parquet) "
                                            "instead of the profile store ($SATURN_PROFILES, else "
                                            "~/.cache/saturn/profiles)."),
    time_limit: float = flags.number(30.0, "--time-limit", help="Solver time limit in seconds."),
    json_out: Optional[Path] = flags.output_file("--json", help="Write the plan as JSON to this file ('-' = stdout).",
                                                 stdout_ok=True),
    gantt: Optional[Path] = flags.output_file("--gantt", help="Write a Gantt chart (PNG) to this file."),
    no_prior: bool = typer.Option(False, "--no-prior", help="Plan from profile rows only: no `estimated` "
                                  "rows from the prior cost model for options nobody measured."),
) -> None:
    """Choose a technique, GPUs and start time for every job, minimizing the makespan."""
    from rich.table import Table

    from saturn.api import plan, profiles_table
    from saturn.api.workload import load
    from saturn.cli.common import console, write_json
    from saturn.planner.provenance import GUESSES

    wl = load(workload)  # (a Ray cluster's nodes are discovered here)
    cluster = wl.cluster
    p = plan(wl, profiles_table(wl, profiles, prior=not no_prior), time_limit_s=time_limit)

    if json_out is not None and str(json_out) == "-":
        write_json(p.to_dict(), "-")
        _warn_guesses(p, workload)
        return
    t = Table(title=f"Saturn plan for {wl.name} ({len(wl.jobs)} jobs)")
    cores = any(a.cpu_cores for a in p.assignments)  # input-pipeline cores (saturn.planner.cores)
    host = any(a.host_mem_gb for a in p.assignments)  # host memory (saturn.profiles.host_memory)
    for col in ("job", "technique", "knobs", "node", "GPU ids", *(("CPU cores",) if cores else ()),
                *(("host GB",) if host else ()), "start", "end", "numbers"):
        t.add_column(col, justify="right" if col in ("start", "end") else "left", no_wrap=col == "job")
    rows = sorted(p.assignments, key=lambda a: (a.start_s, a.node, a.job))
    for a in rows[:TABLE_MAX_ROWS]:
        knobs = ", ".join(f"{k}={v}" for k, v in a.knobs.items())
        guess = a.provenance in GUESSES
        t.add_row(a.job, a.technique, knobs, a.node, ",".join(map(str, a.gpus)),
                  *((f"{a.cpu_cores:g}",) if cores else ()), *((f"{a.host_mem_gb:.1f}",) if host else ()),
                  duration(a.start_s), duration(a.end_s),
                  f"[bold yellow]GUESS: {a.provenance}[/]" if guess else (a.provenance or "-"))
    console.print(t)
    for job, why in sorted(p.ruled_out.items())[:TABLE_MAX_ROWS]:  # host memory (issue 33)
        console.print(f"  {job}: ruled out: " + "; ".join(why[:4]), highlight=False)
    if len(rows) > TABLE_MAX_ROWS:
        console.print(f"... and {len(rows) - TABLE_MAX_ROWS:,} more assignments (the first {TABLE_MAX_ROWS} by start "
                      "time are shown; --json writes them all)")
    _warn_guesses(p, workload)
    ms, lb = p.makespan_s, p.lower_bound_s
    console.print(f"[bold]makespan[/] {duration(ms)} ({ms:,.0f} s)   lower bound {duration(lb)} ({lb:,.0f} s)   "
                  f"ratio {ms / lb:.3f}" if lb > 0 else f"makespan {ms:,.0f} s")
    s = p.solver
    console.print(f"solver: {s.status}, certified gap {s.gap:.1%}, {s.time_s:.1f} s (best plan from {s.source})")
    if s.stop:
        console.print(f"  {s.stop}", highlight=False)
    for name, v in sorted(p.baselines.items(), key=lambda kv: kv[1]):
        console.print(f"  vs {BASELINE_LABELS.get(name, name):34s} {duration(v):>9s}  "
                      f"Saturn {1 - ms / v:6.1%} shorter ({v / ms:.2f}x)")
    if p.objective != "makespan":  # completion objectives (#16): value, own bound, baselines
        v, olb = p.objective_value or 0.0, p.objective_lower_bound or 0.0
        console.print(f"[bold]{p.objective}[/] {duration(v)} (bound {duration(olb)}; the solver status refers to it)")
        for name, bv in sorted(p.objective_baselines.items(), key=lambda kv: kv[1]):
            label = BASELINE_LABELS.get(name, name)
            console.print(f"  {p.objective} of {label:34s} {duration(bv):>9s} ({bv / max(v, 1e-9):.2f}x)")
    if json_out is not None:
        write_json(p.to_dict(), json_out)
        console.print(f"plan written to {json_out}")
    if gantt is not None:
        from saturn.planner.gantt import save_gantt

        save_gantt(p, cluster, gantt, title=f"{wl.name}: makespan {duration(ms)} (bound {duration(lb)})")
        console.print(f"Gantt chart written to {gantt}")


def _warn_guesses(p, workload: Path) -> None:
    """A plan resting on numbers nobody measured says so, loudly, on stderr (#15)."""
    from saturn.cli.common import err_console
    from saturn.planner.provenance import UNLABELLED, guessed

    g = guessed(p.assignments)
    if g:
        kinds = sorted({a.provenance for a in g})
        err_console.print(
            f"[bold yellow]WARNING:[/] {len(g)} of {len(p.assignments)} assignments rest on numbers nobody "
            f"measured ({', '.join(kinds)}; e.g. {g[0].job}: {g[0].source or 'no source'}). Times and choices "
            f"for rows marked GUESS may be wrong: measure them with `saturn profile {workload}` on such "
            "hardware (`saturn run` measures them in the jobs' own first steps when the hardware is here, "
            "or refuses with --require-measured).", highlight=False, soft_wrap=True)
    unl = [a for a in p.assignments if a.provenance == UNLABELLED]
    if unl:
        err_console.print(f"note: {len(unl)} assignment(s) rest on rows without a `source` column value "
                          "(origin unknown).", highlight=False, soft_wrap=True)
