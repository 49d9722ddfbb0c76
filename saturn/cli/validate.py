"""`saturn validate`: expand and check workload specs, print each one's job table."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from saturn.cli import flags
from saturn.cli.common import console, write_json
from saturn.spec import Workload
from saturn.techniques.checks import load_workload


def job_rows(workload: Workload) -> list[dict]:
    from saturn.zoo import param_count

    rows = []
    for job in workload.jobs:
        params = param_count(job.model)
        rows.append({
            "job": job.name, "model": job.model.label(),
            "params_m": round(params / 1e6, 1) if params else None,
            "batch_size": job.batch_size, "seq_len": job.seq_len, "steps": job.total_steps,
            "optimizer": job.optimizer.model_dump(), "precision": job.precision,
            "techniques": job.techniques or "all", "gpus": job.gpus or "auto",
            "signature": job.signature,
        })
    return rows


def validate_command(
    workloads: List[Path] = typer.Argument(..., help="Workload YAML file(s)."),
    json_out: Optional[Path] = flags.output_file("--json", help="Write the job tables as JSON to this file "
                                                 "('-' for stdout).", stdout_ok=True),
) -> None:
    """Validate workload specs and print the expanded jobs with their profile signatures."""
    out = {}
    for path in workloads:
        wl = load_workload(path)
        rows = job_rows(wl)
        out[str(path)] = {"name": wl.name, "cluster": wl.cluster.model_dump(exclude_none=True),
                          "jobs": rows}
        if json_out is None or str(json_out) != "-":
            _print_table(wl, rows)
    if json_out is not None:
        write_json(out, json_out)


def _print_table(wl: Workload, rows: list[dict]) -> None:
    table = Table(title=f"{wl.name}: {len(rows)} jobs, {len({r['signature'] for r in rows})} "
                        "distinct profiles")
    for col in ("job", "model", "params (M)", "batch", "seq", "steps", "optimizer", "precision",
                "GPUs", "signature"):
        table.add_column(col)
    for r in rows:
        opt = " ".join(f"{v}" if k == "name" else f"{k}={v}" for k, v in r["optimizer"].items())
        table.add_row(r["job"], r["model"], str(r["params_m"] or "-"), str(r["batch_size"]),
                      str(r["seq_len"]), str(r["steps"]), opt, r["precision"], str(r["gpus"]),
                      r["signature"])
    console.print(table)
