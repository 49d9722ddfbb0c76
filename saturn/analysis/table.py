"""A run's results as one table: a row per job, its swept hyperparameters as columns.

Why the hyperparameters are "the fields that differ": a sweep's jobs share most of their
definition (data, precision, sequence length...), and a results table that shows every field hides
the one that matters (the learning rate) among twenty that do not. So each job's definition (the
`Job` the journal keeps) is flattened to dotted names (`optimizer.lr`, `model.name`) and only the
names whose values are not the same for every job become columns.

Losses come from `jobs/<job>/metrics.jsonl` (each trained step once, from the attempt whose
checkpoint kept it): `final_loss` is the last step's, `best_loss` the lowest. The best job is the
completed job with the lowest final loss (any job with a loss when none completed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Union

import pandas as pd

from saturn.errors import SaturnError
from saturn.parse import finite_or_none, jsonl_records

PathLike = Union[str, Path]
RESULT_COLUMNS = ("status", "steps", "total_steps", "final_loss", "best_loss", "wall_s", "gpu_s",
                  "technique", "gpus", "checkpoint", "best")
SORT_ALIASES = {"loss": "final_loss", "time": "wall_s", "name": "job"}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'lr': 1e-3}} -> {'optimizer.lr': 1e-3}; lists become tuples (hashable)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = tuple(d) if isinstance(d, list) else d
    return out


def hyperparameters(specs: dict[str, Optional[dict]]) -> dict[str, dict[str, Any]]:
    """{job: {field: value}} for the fields of the jobs' definitions that differ between jobs
    (not the name); a job without a definition (a pure simulation) has none."""
    flat = {job: _flatten({k: v for k, v in (spec or {}).items() if k != "name"}) for job, spec in specs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    differ = [k for k in keys if len({repr(f.get(k)) for f in flat.values()}) > 1]
    return {job: {k: f.get(k) for k in differ} for job, f in flat.items()}


def short_keys(keys: list[str]) -> dict[str, str]:
    """{dotted name: shown name}: its last part (`lr`) where no other key ends the same way, else
    the whole dotted name (`model.name`, `data.name`)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}


def step_losses(path: Path) -> list[tuple[int, float]]:
    """[(0-based step, loss)] of a metrics.jsonl, each step once (its last record), in order."""
    recs, _ = jsonl_records(path, required=("step",))
    by_step: dict[int, float] = {}
    for r in recs:
        f = finite_or_none(r.get("loss"))
        if f is not None:
            by_step[int(r["step"])] = f
    return sorted(by_step.items())


def results(run_dir: PathLike) -> pd.DataFrame:
    """One row per job of the run in `run_dir`: `job`, its swept hyperparameters, then
    RESULT_COLUMNS (`gpus` = the GPU count of its last attempt; `wall_s` = seconds its attempts
    held devices; `gpu_s` = that times their GPU counts). `df.attrs` has `hyperparameters` (the
    swept columns), `best` (the best job's name, or None) and `cpu_slots` (`gpus` counts CPU slots)."""
    from saturn.executor.report import load_run

    run_dir = Path(run_dir)
    state, journal = load_run(run_dir)
    try:
        last_t = max([t for t, _, _ in journal.events()] + [0.0])
        nodes = journal.get_meta("nodes") or []
    finally:
        journal.close()
    hp = hyperparameters({name: js.info.spec for name, js in state.jobs.items()})
    rows = []
    for name, js in state.jobs.items():
        losses = step_losses(run_dir / "jobs" / name / "metrics.jsonl")
        spans = [((s.ended_at if s.ended_at is not None else last_t) - s.launched_at, len(s.gpus))
                 for s in js.segments]
        last = js.segments[-1] if js.segments else None
        final = losses[-1][1] if losses else finite_or_none(js.loss)
        rows.append({"job": name, **hp[name], "status": js.status,
                     "steps": max(js.progress_step, js.committed_step), "total_steps": js.info.total_steps,
                     "final_loss": final, "best_loss": min((v for _, v in losses), default=final),
                     "wall_s": sum(d for d, _ in spans) if spans else None,
                     "gpu_s": sum(d * g for d, g in spans) if spans else None,
                     "technique": last.technique if last else None, "gpus": len(last.gpus) if last else None,
                     "checkpoint": js.checkpoint, "best": False})
    swept = sorted({k for h in hp.values() for k in h})
    df = pd.DataFrame(rows, columns=["job", *swept, *RESULT_COLUMNS])
    best = best_job(df)
    if best is not None:
        df.loc[df["job"] == best, "best"] = True
    cpu = bool(nodes) and all(str(n.get("gpu_type", "")).lower() == "cpu" for n in nodes)
    df.attrs.update(hyperparameters=swept, best=best, run_dir=str(run_dir), cpu_slots=cpu)
    return df


def best_job(df: pd.DataFrame) -> Optional[str]:
    """The completed job with the lowest final loss (any job with a loss if none completed)."""
    def pick(rows: pd.DataFrame) -> Optional[str]:
        rows = rows[[finite_or_none(v) is not None for v in rows["final_loss"]]]
        return None if rows.empty else str(rows.loc[rows["final_loss"].astype(float).idxmin(), "job"])

    if df.empty:
        return None
    return pick(df[df["status"] == "completed"]) or pick(df)


def sort_results(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """`df` sorted by column `by` (ascending, missing values last; `-col` descending; aliases:
    loss = final_loss, time = wall_s, name = job). An unknown column is a SaturnError naming the
    columns there are."""
    desc = by.startswith("-")
    col = SORT_ALIASES.get(by.lstrip("-"), by.lstrip("-"))
    if col not in df.columns:
        raise SaturnError(f"--sort {by}: no such column; sort by one of: "
                          f"{', '.join(['loss', *map(str, df.columns)])} (a leading '-' sorts descending)")
    vals = list(df[col])
    gone = [v is None or (isinstance(v, float) and math.isnan(v)) for v in vals]
    present = [i for i in range(len(vals)) if not gone[i]]
    try:
        present.sort(key=lambda i: vals[i], reverse=desc)
    except TypeError:  # mixed types in a swept column: compare their text
        present.sort(key=lambda i: str(vals[i]), reverse=desc)
    missing = [i for i in range(len(vals)) if gone[i]]  # last, whatever the direction
    out = df.iloc[present + missing].reset_index(drop=True)
    out.attrs.update(df.attrs)
    return out
