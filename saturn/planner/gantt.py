"""Gantt chart of a plan: one row per GPU, one labelled bar per job (matplotlib, Agg backend).

Imported lazily by the CLI so that planning never pays for matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from saturn.planner.plan import Plan, as_plan

Bar = tuple  # (job, node, gpu ids, start_s, end_s, label)


def draw_bars(ax: Any, bars: Sequence[Bar], rows: Sequence[tuple[str, int]], colors: dict,
              min_label_frac: float = 0.04) -> None:
    """One row per (node, GPU), one bar per job on each of its GPUs, labelled once in the middle.

    Shared by `saturn plan --gantt` (a plan) and `saturn report` (plan vs actual attempts)."""
    y = {r: i for i, r in enumerate(rows)}
    span = max([e for *_, e, _ in bars] + [1.0])
    for job, node, gpus, start, end, label in bars:
        for g in gpus:
            ax.barh(y.get((node, int(g)), 0), end - start, left=start, height=0.8,
                    color=colors.get(job, "grey"), edgecolor="black", linewidth=0.4)
        if end - start > min_label_frac * span:
            mid = y.get((node, int(sorted(gpus)[len(gpus) // 2])), 0)
            ax.text(start + (end - start) / 2, mid, f"{job}\n{label}", ha="center", va="center",
                    fontsize=7, clip_on=True)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{n} GPU{g}" for n, g in rows], fontsize=8)
    ax.invert_yaxis()


def job_colors(jobs: Iterable[str]) -> dict:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    return {j: cmap(i % 20) for i, j in enumerate(sorted(set(jobs)))}


def save_gantt(plan: Union[Plan, dict], cluster: Any, path: Union[str, Path], title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saturn.planner.inputs import normalize_cluster

    p = as_plan(plan)
    rows = [(n.name, g) for n in normalize_cluster(cluster) for g in range(n.gpus)]
    fig, ax = plt.subplots(figsize=(12, max(2.5, 0.35 * len(rows) + 1.5)))
    bars = [(a.job, a.node, a.gpus, a.start_s, a.start_s + a.duration_s,
             f"{a.technique}×{len(a.gpus)}") for a in p.assignments]
    draw_bars(ax, bars, rows, job_colors(a.job for a in p.assignments))
    ax.set_xlabel("time (s)")
    ax.axvline(p.makespan_s, color="red", linestyle="--", linewidth=1)
    if p.lower_bound_s:
        ax.axvline(p.lower_bound_s, color="gray", linestyle=":", linewidth=1)
    ax.set_title(title or f"makespan {p.makespan_s:,.0f}s (lower bound {p.lower_bound_s:,.0f}s)")
    return save_figure(fig, path, dpi=120)


def save_figure(fig: Any, path: Union[str, Path], dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure; its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
