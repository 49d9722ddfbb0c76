"""`saturn techniques`: the registered parallelism techniques, their typed knobs and requirements."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def techniques_command() -> None:
    """Print a table of every registered technique (built-in or registered by a user): each knob
    with its type, default and range (pin one in YAML: `knobs: {fsdp: {cpu_offload: true}}`)."""
    from saturn.techniques import get_technique, technique_names
    from saturn.techniques.knobs import knob_infos

    table = Table(title="Parallelism techniques", show_lines=True)
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("knobs (type = default, range): what it does")
    table.add_column("requires")
    for name in technique_names():
        t = get_technique(name)
        infos = knob_infos(getattr(t, "knob_type", None))
        if infos:
            help_ = dict(t.knobs)  # a technique may word its help at length in `knobs`
            knobs = "\n".join(f"[bold]{escape(k.name)}[/bold] " + escape(
                f"({k.type} = {k.default!r}{', ' + k.limits if k.limits else ''}): {help_.get(k.name, k.help)}")
                for k in infos)
        else:
            knobs = "\n".join(f"[bold]{k}[/bold]: {v}" for k, v in t.knobs.items()) or "-"
        table.add_row(name, knobs, t.requires or "-")
    Console().print(table)
