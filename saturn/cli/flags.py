"""Every flag of every `saturn` command, checked when the command line is parsed -- before any work.

Why one place: a flag is user input like a spec field. A NaN time limit, a negative retry count or a
`--json` into a missing directory must be refused at once, with exit 2 and one line naming the flag
and what it accepts -- never a traceback an hour into a run, never a silent default. Commands
declare their flags with `number`, `choice`, `output_file` and `run_dir`, which attach the check as
the option's callback; the ranges live in `saturn.ranges.RANGES` (shared with the Python API), so
the help text, the check and the tests read the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import typer

from saturn import paths
from saturn.errors import SaturnError
from saturn.ranges import RANGES

DEVICES = ("auto", "cuda", "cpu")


def _callback(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def cb(value: Any) -> Any:
        return check(value)
    return cb


def number(default: Any, flag: str, *, help: str) -> Any:
    """A typer option whose value must lie in RANGES[flag] (the range is appended to the help)."""
    rng = RANGES[flag]
    return typer.Option(default, flag, help=f"{help} ({rng.describe()}.)",
                        callback=_callback(lambda v: rng.check(flag, v)))


def choice(default: str, flag: str, choices: Sequence[str], *, help: str) -> Any:
    def check(v: Any) -> Any:
        if v is not None and v not in choices:
            raise SaturnError(f"{flag} must be one of {' | '.join(choices)} (got {v!r})")
        return v
    return typer.Option(default, flag, help=help, callback=_callback(check))


def output_file(flag: str, *, help: str, stdout_ok: bool = False) -> Any:
    """An optional output file: its directory must exist and be writable, the path no directory."""
    return typer.Option(None, flag, help=help,
                        callback=_callback(lambda v: check_output_file(flag, v, stdout_ok=stdout_ok)))


def run_dir(flag: str, *, help: str) -> Any:
    return typer.Option(None, flag, help=help, callback=_callback(lambda v: check_run_dir(flag, v)))


def check_output_file(flag: str, path: Optional[Path], *, stdout_ok: bool = False) -> Optional[Path]:
    if path is not None and not (stdout_ok and str(path) == "-"):
        paths.check_output_file(path, flag)
    return path


def check_run_dir(flag: str, path: Optional[Path]) -> Optional[Path]:
    if path is not None:
        paths.check_writable_dir(path, flag)
    return path


def check_devices_here(device_type: str, flag: str = "--devices") -> None:
    """`cuda` needs a CUDA device on this machine (checked before profiling or launching)."""
    if device_type != "cuda":
        return
    try:
        import torch

        ok = torch.cuda.is_available()
    except ImportError:
        ok = False
    if not ok:
        raise SaturnError(f"{flag} cuda: torch sees no CUDA device on this machine; use --devices cpu "
                          "(or auto), or run where the GPUs are")
