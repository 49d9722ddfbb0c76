"""Shared by every scripts/bench_*.py: the machine-readable JSON and the BENCHMARKS.md section.

Each benchmark owns one section of BENCHMARKS.md between `<!-- bench:NAME -->` markers and one
`benchmarks/NAME.json`; both record the command, the machine and the date, and are written
atomically (write-then-rename) so an interrupted run leaves the previous results intact.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """A one-line description: CPU count and model, GPU model and count when there is one."""
    cpu = platform.processor() or platform.machine()
    desc = f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()}"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", {torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
        desc += f", torch {torch.__version__}"
    except ImportError:
        pass
    return desc


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT),
                                                         *sys.argv[1:]])


def stamp() -> dict[str, str]:
    return {"command": command(), "machine": machine(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def atomic_write(path: Any, text: str) -> None:
    """Write-then-rename: a reader (or a cut-off run) sees the old file or the new one."""
    _atomic_write(Path(path), text)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(name: str, data: dict[str, Any], root: Path = ROOT) -> Path:
    return write_json_at(root / "benchmarks" / f"{name}.json", data)


def write_json_at(path: Path, data: dict[str, Any]) -> Path:
    """`data` with the command, machine and date, atomically at `path`."""
    _atomic_write(Path(path), json.dumps({**stamp(), **data}, indent=2, default=str) + "\n")
    return Path(path)


def write_section(name: str, title: str, body: str, root: Path = ROOT,
                  recorded: Optional[dict[str, Any]] = None) -> Path:
    """Replace (or append) this benchmark's section of BENCHMARKS.md. `recorded` (command, machine,
    date): the run's own, when the section is rendered later from its recorded JSON."""
    path = root / "BENCHMARKS.md"
    text = (path.read_text() if path.exists()
            else "# Benchmarks\n\nEach section is written by the script it names; numbers are from one run.\n")
    s = {**stamp(), **{k: v for k, v in (recorded or {}).items()
                       if k in ("command", "machine", "date")}}
    section = (f"<!-- bench:{name} -->\n## {title}\n\n`{s['command']}` — {s['machine']} — "
               f"{s['date']}\n\n{body.strip()}\n<!-- /bench:{name} -->")
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->",
                         re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + section + "\n"
    _atomic_write(path, text)
    return path


def md_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
