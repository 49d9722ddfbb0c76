"""`saturn results RUN [--sort loss] [--csv F | --json F]`: the sweep's results table.

A thin shell over `saturn.analysis` (the same DataFrame `saturn.results(run_dir)` returns): one row
per job, the hyperparameters that differ between jobs as columns, the best job starred.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from saturn.cli import flags
from saturn.errors import SaturnError


def _num(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def results_command(
    run_dir: Path = typer.Argument(..., help="Run directory of `saturn run` (or of an Orchestrator)."),
    sort: Optional[str] = typer.Option(None, "--sort", help="Sort by a column: loss (final loss), best_loss, "
                                       "wall_s, a hyperparameter such as optimizer.lr...; '-COL' descending."),
    csv_out: Optional[Path] = flags.output_file("--csv", help="Also write the table as CSV to this file."),
    json_out: Optional[Path] = flags.output_file("--json", help="Also write the table as JSON (a list of "
                                                 "rows) to this file ('-' = stdout).", stdout_ok=True),
) -> None:
    """One row per job: its swept hyperparameters, status, steps, final and best loss, time, technique,
    GPUs and checkpoint; the best job (lowest final loss of the completed jobs) starred."""
    from saturn.analysis import results, sort_results
    from saturn.cli.common import console, write_text

    if csv_out is not None and json_out is not None:
        raise SaturnError("give --csv or --json, not both")
    df = results(run_dir)
    if sort:
        df = sort_results(df, sort)
    if json_out is not None:
        text = json.dumps(json.loads(df.to_json(orient="records")), indent=2)
        if str(json_out) == "-":
            print(text)
            return
        write_text(text + "\n", json_out)
    if csv_out is not None:
        write_text(df.to_csv(index=False), csv_out)
    console.print(render(df, console.width), highlight=False)
    best = df.attrs.get("best")
    if best is not None:
        row = df[df["job"] == best].iloc[0]
        console.print(f"best: {best} (final loss {_num(row['final_loss'])}); checkpoint {row['checkpoint'] or '-'}",
                      highlight=False, soft_wrap=True)
    for out in (csv_out, json_out):
        if out is not None:
            console.print(f"wrote {out}", highlight=False)


def render(df: Any, width: int = 100) -> Any:
    """The rich table: hyperparameters under their last name when that is unambiguous, job names
    without their shared prefix, checkpoints by their step directory; narrower than 140 columns,
    GPU time and checkpoint are left to the CSV/JSON and the `best:` line."""
    from saturn.analysis.table import short_keys
    from saturn.fmt import compact_table, duration, short_names

    hp = list(df.attrs.get("hyperparameters") or [])
    heads = list(short_keys(hp).values())
    names = short_names(df["job"], max_len=24)
    wide = width >= 140
    t = compact_table(f"results of {df.attrs.get('run_dir', '')} (* = best)")
    t.add_column("job", no_wrap=True, min_width=max([len(n) for n in names.values()] + [3]) + 2)
    for h in heads:
        t.add_column(h, no_wrap=True)
    word = "slot" if df.attrs.get("cpu_slots") else "GPU"
    cols = ["status", "steps", "final loss", "best loss", "wall", *([f"{word} time"] if wide else []), "technique",
            f"{word}s", *(["checkpoint"] if wide else [])]
    for col in cols:
        t.add_column(col, no_wrap=True, justify="left" if col in ("status", "technique", "checkpoint") else "right")
    for r in df.to_dict("records"):
        ck = r["checkpoint"]
        cells = {"status": r["status"], "steps": f"{r['steps']}/{r['total_steps']}",
                 "final loss": _num(r["final_loss"]), "best loss": _num(r["best_loss"]),
                 "wall": duration(r["wall_s"]), f"{word} time": duration(r["gpu_s"]),
                 "technique": r["technique"] or "-", f"{word}s": _num(r["gpus"]),
                 "checkpoint": Path(ck).name if ck else "-"}
        t.add_row(("* " if r["best"] else "  ") + names[r["job"]], *[_num(r[h]) for h in hp], *[cells[c] for c in cols])
    return t
