"""Can Saturn write there? Checked before any work, for output files, run directories and the
profile store -- one rule, so every command refuses the same paths with the same words.

Why probing instead of `os.access`: as root `os.access` says yes to a mode-0555 directory and to
read-only mounts alike; creating (and removing) a temp file is the only test that tells the truth.
Pure standard library (the planner side imports it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

from saturn.errors import SaturnError

PathLike = Union[str, "os.PathLike[str]"]


def check_output_file(path: PathLike, what: str) -> None:
    """Refuse an output file Saturn could not write: a directory, a file under a directory that does
    not exist (Saturn creates no directory the user did not name), or one that cannot be written."""
    p = Path(path)
    if p.is_dir():
        raise SaturnError(f"{what} {p}: is a directory; give a file path, e.g. {p / 'out'}")
    parent = p.parent
    if not parent.exists():
        raise SaturnError(f"{what} {p}: directory {parent} does not exist; create it first (Saturn creates "
                          "no directories you did not name)")
    if not parent.is_dir():
        raise SaturnError(f"{what} {p}: {parent} is not a directory")
    probe_writable(parent, f"{what} {p}")
    if p.exists():
        try:
            with open(p, "a"):
                pass
        except OSError as exc:
            raise SaturnError(f"{what} {p}: the file is not writable ({exc.strerror or exc})") from None


def check_writable_dir(directory: PathLike, what: str, hint: str = "pick a writable location") -> None:
    """`directory` is a writable directory, or can be created under its nearest existing ancestor;
    else a SaturnError naming `what`, the directory, the cause and `hint` (the fix)."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise SaturnError(f"{what} {d}: exists and is not a directory; {hint}")
    anc = d
    while not anc.exists() and anc != anc.parent:
        if anc.is_symlink():  # a dangling link: mkdir would fail on it (FileExistsError) mid-run
            raise SaturnError(f"{what} {d}: {anc} is a link to {os.readlink(anc)}, which does not exist; "
                              f"remove the link or create its target; {hint}")
        anc = anc.parent
    if not anc.is_dir():
        raise SaturnError(f"{what} {d}: {anc} is a file, so the directory cannot be created there; {hint}")
    probe_writable(anc, f"{what} {d}", hint)


def probe_writable(directory: PathLike, what: str, hint: str = "pick a writable location") -> None:
    """Create and remove a temp file in `directory`; a SaturnError naming `what` if that fails."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".saturn-probe-")
    except OSError as exc:
        raise SaturnError(f"{what}: cannot write in {directory} ({exc.strerror or exc}); {hint}") from None
    os.close(fd)
    os.unlink(tmp)
