"""Loss curves of a run: one PNG, loss against step (left) and against run time (right), one
colour per job, each labelled by the hyperparameters that tell it apart (`lr=0.003`).

Steps come from `jobs/<job>/metrics.jsonl` (each trained step once); run times from the journal's
progress events (the run clock at which the executor learned of each step), so a job that waited,
was switched or retried shows where its time went.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from saturn.analysis.table import hyperparameters, short_keys, step_losses
from saturn.parse import finite_or_none

PathLike = Union[str, Path]


def label(job: str, hp: dict[str, Any]) -> str:
    """`lr=0.003 model.name=gpt2-tiny`: a job's swept values (saturn.analysis.table.short_keys
    names), or the job's own name when nothing was swept."""
    if not hp:
        return job
    shown = short_keys(list(hp))
    return " ".join(f"{shown[k]}={v:.3g}" if isinstance(v, float) else f"{shown[k]}={v}" for k, v in hp.items())


def timed_losses(journal: Any) -> dict[str, list[tuple[float, float]]]:
    """{job: [(run seconds, loss)]} from the journal's progress events."""
    out: dict[str, list[tuple[float, float]]] = {}
    for t, kind, d in journal.events():
        if kind == "progress":
            f = finite_or_none(d.get("loss"))
            if f is not None and d.get("job"):
                out.setdefault(str(d["job"]), []).append((float(t), f))
    return out


def draw_curves(run_dir: PathLike, out: PathLike) -> Path:
    """Write the two-panel loss-curve PNG of the run in `run_dir` to `out`; its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saturn.executor.report import load_run
    from saturn.planner.gantt import job_colors, save_figure

    run_dir = Path(run_dir)
    state, journal = load_run(run_dir)
    try:
        timed = timed_losses(journal)
    finally:
        journal.close()
    hp = hyperparameters({name: js.info.spec for name, js in state.jobs.items()})
    colors = job_colors(state.jobs)
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(13, 5))
    for name in state.jobs:
        steps = step_losses(run_dir / "jobs" / name / "metrics.jsonl")
        if steps:
            by_step.plot([s + 1 for s, _ in steps], [v for _, v in steps], color=colors[name], lw=1.2,
                         label=label(name, hp[name]))
        if timed.get(name):
            by_time.plot([t for t, _ in timed[name]], [v for _, v in timed[name]], color=colors[name], lw=1.2)
    by_step.set(xlabel="step", ylabel="training loss", title="loss vs step")
    by_time.set(xlabel="run time (s)", ylabel="training loss", title="loss vs run time")
    if by_step.lines:
        by_step.legend(fontsize="small")
    else:
        by_step.text(0.5, 0.5, "no losses recorded yet", ha="center", transform=by_step.transAxes)
    return save_figure(fig, out)
