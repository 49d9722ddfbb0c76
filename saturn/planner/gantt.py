"""Gantt chart of a plan: one row per GPU, one labelled bar per job (matplotlib, Agg backend),
with each job's phases drawn inside its bar (`draw_phases`): launch, training steps, the blocking
part of its saves, teardown, and (run charts) the checkpoint draining behind after the GPU is free.

Imported lazily by the CLI so that planning never pays for matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from saturn.planner.plan import Plan, as_plan

Bar = tuple  # (job, node, gpu ids, start_s, end_s, label)


def draw_bars(ax: Any, bars: Sequence[Bar], rows: Sequence[tuple[str, int]], colors: dict,
              min_label_frac: float = 0.04, device: str = "GPU") -> None:
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
    ax.set_yticklabels([f"{n} {device} {g}" for n, g in rows], fontsize=8)
    ax.invert_yaxis()


Span = tuple  # (node, gpu ids, phase, start_s, end_s)
# Overlays on the job's colour ("steps" has none: the plain bar is training). Draining is a strip
# at the bottom of the row: the GPU is free then, and the next job's bar may already be there.
PHASE_STYLE: dict[str, dict[str, Any]] = {"launch": {"color": "white", "alpha": 0.6, "hatch": "//", "label": "launch"},
               "save": {"color": "black", "alpha": 0.45, "hatch": "xx", "label": "save (blocking)"},
               "teardown": {"color": "white", "alpha": 0.35, "hatch": "..", "label": "teardown"},
               "draining": {"color": "black", "alpha": 0.85, "hatch": "", "label": "checkpoint draining"}}


def sequential_spans(start: float, end: float, parts: Sequence[tuple[str, float]],
                     rest: str = "teardown") -> list[tuple[str, float, float]]:
    """Phases laid end to end from `start`, clipped at `end`; what is left before `end` is `rest`
    (unmeasured time: teardown, result hand-off)."""
    out, t = [], start
    for name, secs in parts:
        e = min(end, t + max(0.0, float(secs or 0.0)))
        if e > t:
            out.append((name, t, e))
        t = e
    if end - t > 1e-6 * max(1.0, end - start):
        out.append((rest, t, end))
    return out


def plan_phase_parts(phases: dict) -> list[tuple[str, float]]:
    """A plan assignment's phases ({phase: {"s", "source"}}) in time order, as drawn."""
    def sec(k: str) -> float:
        v = phases.get(k) or {}
        return float(v.get("s", 0.0)) if isinstance(v, dict) else float(v or 0.0)

    return [("launch", sec("launch")), ("steps", sec("steps") + sec("checkpoints")),
            ("save", sec("final_save"))]


def plan_drain_s(phases: dict) -> float:
    """Seconds a plan assignment's final checkpoint drains after its bar ends (0: none planned)."""
    v = phases.get("drain") or {}
    return float(v.get("s", 0.0)) if isinstance(v, dict) else float(v or 0.0)


def plan_spans(a: Any, t0: float = 0.0) -> list[Span]:
    """A plan assignment's (object or dict) phase spans on the clock `t0 + start_s`."""
    get = (lambda k: a[k]) if isinstance(a, dict) else (lambda k: getattr(a, k))
    phases = get("phases") or {}
    if not phases:
        return []
    start, end = t0 + float(get("start_s")), t0 + float(get("end_s"))
    out = [(get("node"), get("gpus"), ph, s0, s1)
           for ph, s0, s1 in sequential_spans(start, end, plan_phase_parts(phases))]
    drain = plan_drain_s(phases)
    if drain > 0:
        out.append((get("node"), get("gpus"), "draining", end, end + drain))
    return out


def draw_phases(ax: Any, spans: Sequence[Span], rows: Sequence[tuple[str, int]]) -> None:
    """Overlay phases on the bars drawn by `draw_bars`, and a legend of those present."""
    from matplotlib.patches import Patch

    y = {r: i for i, r in enumerate(rows)}
    seen = []
    for node, gpus, phase, start, end in spans:
        st = PHASE_STYLE.get(phase)
        if st is None or end <= start:
            continue
        if phase not in seen:
            seen.append(phase)
        for g in gpus:
            row = y.get((node, int(g)), 0)
            if phase == "draining":
                ax.barh(row + 0.3, end - start, left=start, height=0.16, color=st["color"],
                        alpha=st["alpha"], linewidth=0)
            else:
                ax.barh(row, end - start, left=start, height=0.8, color=st["color"], alpha=st["alpha"],
                        hatch=st["hatch"], edgecolor="black", linewidth=0)
    if seen:
        handles = [Patch(facecolor=PHASE_STYLE[p]["color"], alpha=PHASE_STYLE[p]["alpha"],
                         hatch=PHASE_STYLE[p]["hatch"], edgecolor="black", label=PHASE_STYLE[p]["label"])
                   for p in PHASE_STYLE if p in seen]
        ax.legend(handles=handles, fontsize=7, loc="upper right", framealpha=0.8)


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
    nodes = normalize_cluster(cluster)
    cpu = bool(nodes) and all(str(getattr(n, "gpu_type", "")).lower() == "cpu" for n in nodes)
    draw_bars(ax, bars, rows, job_colors(a.job for a in p.assignments), device="slot" if cpu else "GPU")
    draw_phases(ax, [sp for a in p.assignments for sp in plan_spans(a)], rows)
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
