"""The `saturn` command: one sub-command per stage of spec -> profiles -> plan -> execution."""

from __future__ import annotations

import sys

import typer

from saturn.cli.common import err_console, setup_logging
from saturn.cli.logs import logs_command
from saturn.cli.plan import plan_command
from saturn.cli.profile import profile_command
from saturn.cli.results import results_command
from saturn.cli.run import report_command, run_command, status_command
from saturn.cli.techniques import techniques_command
from saturn.cli.validate import validate_command
from saturn.errors import SaturnError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Saturn: plan and run many training jobs on a GPU cluster, jointly choosing "
                       "each job's parallelism, GPUs and start time.")


def _version(value: bool) -> None:
    if value:
        from saturn import __version__

        typer.echo(f"saturn {__version__}")
        raise typer.Exit()


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    setup_logging(verbose)
    from saturn.env import check_environment

    check_environment()  # every SATURN_* variable, like a flag: exit 2 naming it before any work


app.command("validate")(validate_command)
app.command("profile")(profile_command)
app.command("plan")(plan_command)
app.command("run")(run_command)
app.command("status")(status_command)
app.command("report")(report_command)
app.command("results")(results_command)
app.command("logs")(logs_command)
app.command("techniques")(techniques_command)


def run() -> None:
    """Console entry point: user errors exit 2 with a message, never a traceback.

    Click's own usage errors (unknown flag, missing argument) already exit 2 in standalone mode;
    SaturnError (bad spec, missing profiles...) propagates out of the app and is caught here.
    """
    try:
        app()
    except SaturnError as exc:
        from rich.markup import escape  # "[line 5]" in a message is text, not rich markup

        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    run()
