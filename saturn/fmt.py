"""How Saturn writes durations and job names for people: one format everywhere (plan, run, status,
report, results), so `2m18s` in the plan and in the report mean the same thing.

Durations: `56.3s` under a minute, `2m18s` under an hour, `1h02m` beyond (never negative: a
negative time left is shown as `0.0s`). Job names: a sweep's names share a long prefix and differ
at the end (`medium-lr=0.001`, `medium-lr=0.003`); a narrow table must cut the shared prefix, never
the differing tail.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable


def duration(s: Any) -> str:
    """Seconds as `56.3s`, `2m18s` or `1h02m`; '-' for None and non-finite values."""
    try:
        x = float(s)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(x):
        return "-"
    x = max(0.0, x)
    if x < 59.95:
        return f"{x:.1f}s"
    r = int(round(x))
    if r < 3600:
        return f"{r // 60}m{r % 60:02d}s"
    return f"{r // 3600}h{(r % 3600) // 60:02d}m"


def short_names(names: Iterable[str], max_len: int = 28) -> dict[str, str]:
    """{name: shown name}: names longer than `max_len` lose the prefix they all share (shown as
    '…'), so what tells them apart stays; unchanged when they fit or share no prefix."""
    names = list(names)
    if not names or max(len(n) for n in names) <= max_len or len(names) < 2:
        return {n: n for n in names}
    prefix = os.path.commonprefix(names)
    cut = max(0, min(len(prefix), max(len(n) for n in names) - max_len + 1))
    if cut < 2:
        return {n: n for n in names}
    return {n: "…" + n[cut:] for n in names}


def compact_table(title: str = "", **kw: Any) -> Any:
    """A rich Table that fits a 100-column terminal: a rule under the header instead of a box, one
    space between columns (every column drawn with a box costs three characters more)."""
    from rich import box
    from rich.table import Table

    return Table(title=title or None, box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False,
                 title_justify="left", **kw)
