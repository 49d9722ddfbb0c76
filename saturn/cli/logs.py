"""`saturn logs RUN JOB [-f]`: a job's log (a thin shell over saturn.analysis.logs)."""

from __future__ import annotations

from pathlib import Path

import typer


def logs_command(
    run_dir: Path = typer.Argument(..., help="Run directory of `saturn run`."),
    job: str = typer.Argument(..., help="Job name (as in `saturn status RUN`)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep following: live losses while the job "
                                "trains, each attempt's output when it ends; stops when the job ends."),
) -> None:
    """A job's own output: its losses at each reporting boundary, warnings, errors."""
    from saturn.analysis.logs import show_log

    try:
        show_log(run_dir, job, lambda s: print(s, flush=True), follow=follow)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
