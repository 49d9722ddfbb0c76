"""What a run directory says: status (live or finished), plan vs actual, prediction error, Gantt.

Everything is derived from the journal alone, so `saturn status DIR` works while a run is going on
(SQLite WAL readers do not block the writer) and `saturn report DIR` after a crash.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Union

from saturn.executor.journal import JOURNAL_FILE, Journal, replay
from saturn.executor.state import RunState


def load_run(run_dir: Union[str, Path]) -> tuple[RunState, Journal]:
    from saturn.executor.loop import ExecutorError

    path = Path(run_dir) / JOURNAL_FILE
    if not path.exists():
        raise ExecutorError(f"{run_dir} is not a run directory (no {JOURNAL_FILE})")
    j = Journal(path)
    return replay(j), j


def summarize(run_dir: Union[str, Path]) -> dict[str, Any]:
    """Per-job and whole-run numbers: planned vs actual runtime, prediction error, utilization."""
    state, journal = load_run(run_dir)
    plans = journal.plans()
    first = plans[0]["plan"] if plans else {"assignments": []}
    planned = {a["job"]: a for a in first.get("assignments", [])}
    nodes = journal.get_meta("nodes") or []
    total_gpus = sum(int(n["gpus"]) for n in nodes) or 1
    last_t = max([t for t, _, _ in journal.events()] + [0.0])
    jobs, busy = [], 0.0
    end_all = 0.0
    for js in state.jobs.values():
        segs = js.segments
        start = min((s.launched_at for s in segs), default=None)
        end = max((s.ended_at if s.ended_at is not None else last_t for s in segs), default=None)
        for s in segs:
            busy += ((s.ended_at if s.ended_at is not None else last_t) - s.launched_at) * len(s.gpus)
        if end is not None:
            end_all = max(end_all, end)
        p = planned.get(js.name)
        pred = (p["end_s"] - p["start_s"]) if p else None
        actual = sum(((s.ended_at if s.ended_at is not None else last_t) - s.launched_at) for s in segs) if segs else None
        err = (actual - pred) / pred if pred and actual is not None and js.status == "completed" else None
        cur = segs[-1] if segs else None
        jobs.append({"job": js.name, "status": js.status, "steps": js.committed_step,
                     "progress": max(js.progress_step, js.committed_step), "total_steps": js.info.total_steps,
                     "technique": cur.technique if cur else None, "gpus": len(cur.gpus) if cur else None,
                     "attempts": len(segs), "loss": js.loss, "start_s": start, "end_s": end,
                     "planned_runtime_s": pred, "actual_runtime_s": actual, "prediction_error": err,
                     "reason": js.reason[-300:] if js.reason else "",
                     "group": next((s.knobs["group"] for s in reversed(segs) if s.knobs.get("group")), None)})
    groups: dict[str, list[str]] = {}  # SHARP groups the members ran in (saturn.executor.sharp_dispatch)
    for j in jobs:
        if j["group"]:
            groups.setdefault(j["group"], []).append(j["job"])
    makespan = end_all
    return {"run_dir": str(run_dir), "jobs": jobs, "makespan_s": makespan,
            "planned_makespan_s": first.get("makespan_s"), "plan_versions": len(plans),
            "replans": state.replans, "switches": state.switches,
            "gpu_utilization": busy / (makespan * total_gpus) if makespan > 0 else None,
            "done": state.done(), "total_gpus": total_gpus, "sharp_groups": groups,
            "data": _data_summary(run_dir)}  # data-wait phase + input tuner decisions (saturn.data)


def _data_summary(run_dir: Union[str, Path]) -> dict[str, Any]:
    from saturn.data.report import data_summary

    return data_summary(run_dir)


def gantt(run_dir: Union[str, Path], out: Union[str, Path]) -> Path:
    """Plan (first version) vs actual (every attempt) as a two-panel Gantt chart PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saturn.planner.gantt import draw_bars, job_colors

    state, journal = load_run(run_dir)
    plans = journal.plans()
    nodes = journal.get_meta("nodes") or [{"name": "node0", "gpus": 1}]
    rows = [(n["name"], g) for n in nodes for g in range(int(n["gpus"]))]
    colors = job_colors(state.jobs)
    fig, axes = plt.subplots(2, 1, figsize=(12, 2 + 0.5 * len(rows) * 2), sharex=True)
    last_t = max([t for t, _, _ in journal.events()] + [0.0])
    panels = [("plan (v1)", [(a["job"], a["node"], a["gpus"], plans[0]["t0"] + a["start_s"], plans[0]["t0"] + a["end_s"],
                              f"{a['technique']}x{len(a['gpus'])}") for a in plans[0]["plan"]["assignments"]] if plans else []),
              ("actual", [(js.name, s.node, s.gpus, s.launched_at, s.ended_at if s.ended_at is not None else last_t,
                           f"{s.technique}x{len(s.gpus)}") for js in state.jobs.values() for s in js.segments])]
    for ax, (title, bars) in zip(axes, panels):
        draw_bars(ax, bars, rows, colors, min_label_frac=0.0)
        ax.set_title(title)
    axes[-1].set_xlabel("seconds since run start")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def fmt_s(x: Optional[float]) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if x >= 3600:
        return f"{x / 3600:.1f}h"
    if x >= 60:
        return f"{x / 60:.1f}m"
    return f"{x:.1f}s"
