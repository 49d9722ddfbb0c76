"""`saturn techniques`: the registered parallelism techniques, their knobs and requirements."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def techniques_command() -> None:
    """Print a table of every registered technique (built-in or registered by a user)."""
    from saturn.techniques import get_technique, technique_names

    table = Table(title="Parallelism techniques", show_lines=True)
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("knobs")
    table.add_column("requires")
    for name in technique_names():
        t = get_technique(name)
        knobs = "\n".join(f"[bold]{k}[/bold]: {v}" for k, v in t.knobs.items()) or "-"
        table.add_row(name, knobs, t.requires or "-")
    Console().print(table)
