"""Live view of a run (rich): per job technique, GPUs, step/total, loss, ETA, plan vs actual;
cluster utilization; re-plans and switches."""

from __future__ import annotations

from typing import Any, Optional

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from saturn.executor.progress import EtaTracker, device_word
from saturn.executor.state import ACTIVE
from saturn.fmt import duration


def render(ex: Any, eta: Optional[EtaTracker] = None) -> Group:
    """The live table. ETA: started jobs only (saturn.executor.progress); a waiting job shows
    its planned end only."""
    st, now = ex.state, ex.backend.now()
    eta = eta or EtaTracker()
    word = device_word(ex)
    total = sum(ex.node_gpus.values()) or 1
    busy = len(st.busy_gpus())
    plan = {a["job"]: a for a in (st.plan or {}).get("assignments", [])}
    t = Table(expand=False)
    for col in ("job", "status", "technique", f"{word} ids", "step", "loss", "ETA", "planned end", "tries"):
        t.add_column(col, justify="right" if col in ("step", "loss", "ETA", "planned end", "tries") else "left",
                     no_wrap=col == "job")
    for js in st.jobs.values():
        seg = js.current or (js.segments[-1] if js.segments else None)
        a = plan.get(js.name)
        tech = seg.technique if seg and js.status in ACTIVE else (a["technique"] if a else "-")
        gpus = seg.gpus if seg and js.status in ACTIVE else (a["gpus"] if a else [])
        e = eta.job(ex, js)
        planned = st.plan_t0 + a["end_s"] if a else None
        style = {"completed": "green", "failed": "red", "running": "cyan", "stopping": "yellow",
                 "cancelled": "dim"}.get(js.status, "")
        t.add_row(js.name, Text(js.status, style=style), tech, ",".join(str(g) for g in gpus),
                  f"{max(js.progress_step, js.committed_step)}/{js.info.total_steps}",
                  f"{js.loss:.4g}" if js.loss is not None else "-", e.text() if e else "-", duration(planned),
                  str(js.attempts))
    ms = (st.plan or {}).get("makespan_s")
    run_eta = eta.run(ex)
    head = Text(f"t={duration(now)}  {word}s busy {busy}/{total} ({100 * busy / total:.0f}%)  plan v{st.plan_version} "
                f"(planned end {duration(st.plan_t0 + ms if ms is not None else None)}, ETA "
                f"{run_eta.text() if run_eta else '-'})  re-plans {st.replans}  switches {st.switches}")
    return Group(head, t)


class LiveDisplay:
    """`Executor(display=LiveDisplay())`; use as a context manager around run_until_done()."""

    def __init__(self, console: Optional[Console] = None, refresh_s: float = 1.0):
        self.console = console or Console()
        self.live: Optional[Live] = None
        self.refresh_s = refresh_s
        self.eta = EtaTracker()

    def __enter__(self) -> "LiveDisplay":
        self.live = Live(Text("starting..."), console=self.console, refresh_per_second=max(1, int(1 / self.refresh_s)),
                         transient=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None

    def update(self, ex: Any) -> None:
        self.eta.observe(ex.state)
        if self.live is not None:
            self.live.update(render(ex, self.eta))
