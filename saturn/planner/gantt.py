"""Gantt chart of a plan: one row per GPU, one labelled bar per job (matplotlib, Agg backend).

Imported lazily by the CLI so that planning never pays for matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from saturn.planner.plan import Plan, as_plan


def save_gantt(plan: Union[Plan, dict], cluster: Any, path: Union[str, Path], title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saturn.planner.inputs import normalize_cluster

    p = as_plan(plan)
    nodes = normalize_cluster(cluster)
    rows = [(n.name, g) for n in nodes for g in range(n.gpus)]
    y = {r: i for i, r in enumerate(rows)}
    cmap = plt.get_cmap("tab20")
    jobs = sorted({a.job for a in p.assignments})
    color = {j: cmap(i % 20) for i, j in enumerate(jobs)}
    ms = p.makespan_s or 1.0
    fig, ax = plt.subplots(figsize=(12, max(2.5, 0.35 * len(rows) + 1.5)))
    for a in p.assignments:
        for g in a.gpus:
            ax.barh(y[(a.node, g)], a.duration_s, left=a.start_s, height=0.8, color=color[a.job], edgecolor="black", linewidth=0.4)
        mid = y[(a.node, sorted(a.gpus)[len(a.gpus) // 2])]
        if a.duration_s > 0.04 * ms:
            ax.text(a.start_s + a.duration_s / 2, mid, f"{a.job}\n{a.technique}×{len(a.gpus)}", ha="center", va="center", fontsize=7, clip_on=True)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{n} GPU{g}" for n, g in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    ax.axvline(p.makespan_s, color="red", linestyle="--", linewidth=1)
    if p.lower_bound_s:
        ax.axvline(p.lower_bound_s, color="gray", linestyle=":", linewidth=1)
    ax.set_title(title or f"makespan {p.makespan_s:,.0f}s (lower bound {p.lower_bound_s:,.0f}s)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
