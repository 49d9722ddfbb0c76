"""Plumbing shared by every `saturn` command: console, JSON output, logging, exit codes.

Exit codes: 0 success; 2 a user error (bad spec, missing profiles, bad flag) with a short message
and no traceback; 1 an unexpected failure (a bug: the traceback is shown so it can be reported).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

# Rich wraps at 80 columns when output is not a terminal; piped tables should not wrap.
_WIDTH = None if sys.stdout.isatty() else 200
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_path=False)])


def write_json(data: Any, path: Path | str) -> None:
    """Write-then-rename, so a reader never sees half a file. '-' means stdout."""
    text = json.dumps(data, indent=2, default=str)
    if str(path) == "-":
        print(text)
        return
    write_text(text + "\n", path)


def write_text(text: str, path: Path | str) -> None:
    """Write-then-rename with the permissions a plain `open(path, "w")` gives (the user's umask:
    mkstemp's private 0600 would hide a results file from the user's group)."""
    path = Path(path)  # its directory exists: checked with the flag (saturn.cli.flags), never created here
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
