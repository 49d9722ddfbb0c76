"""The options of one job: its allowed techniques and GPU counts, and per (technique, GPU
count) the cell the profiler searches and the prior estimates (feasibility, candidate knob
settings with the job's pinned knobs laid over them).

Shared by the profiler (`session`) and the prior (`saturn.prior.rows`), so both enumerate the
same options.
"""

from __future__ import annotations

from typing import Any

from saturn.numerics import numerics_conflict
from saturn.profiler.search import CellInput


def job_signature(job: Any) -> str:
    return str(job.signature)


def gpu_counts(job: Any, max_gpus: int) -> list[int]:
    """The job's allowed counts, or 1, 2, 4, ... up to the largest node."""
    if getattr(job, "gpus", None):
        return sorted(set(int(g) for g in job.gpus))
    out, g = [], 1
    while g <= max_gpus:
        out.append(g)
        g *= 2
    return out


def allowed_techniques(job: Any) -> list[str]:
    if getattr(job, "techniques", None):
        return list(job.techniques)
    from saturn.techniques.registry import technique_names

    return technique_names()


def cell_for(tech: Any, name: str, job: Any, sig: str, g: int) -> CellInput:
    try:
        feas = tech.feasible(job, g)
        if not feas:
            return CellInput(sig, name, g, infeasible_reason=getattr(feas, "reason", "") or
                             f"{name} is not feasible on {g} GPUs")
    except Exception as exc:  # noqa: BLE001
        return CellInput(sig, name, g, infeasible_reason=f"feasible() raised {type(exc).__name__}: {exc}")
    try:
        cands = pinned_candidates(tech.candidates(job, g) or [], (getattr(job, "knobs", None) or {}).get(name))
        conflicts = getattr(tech, "knob_conflicts", None)
        if conflicts is not None:  # the job's policy (e.g. precision fp32) forbids some settings
            cands = [c for c in cands if not conflicts(job, c)]
        numerics = getattr(job, "numerics", "exact")  # exact: nothing that rounds state (saturn.numerics)
        cands = [c for c in cands if not numerics_conflict(numerics, name, c)]
    except Exception as exc:  # noqa: BLE001
        return CellInput(sig, name, g, infeasible_reason=f"candidates() raised {type(exc).__name__}: {exc}")
    return CellInput(sig, name, g, candidates=cands)  # [] = nothing to try (reported as skipped)


def pinned_candidates(cands: list, pinned: Any) -> list[dict]:
    """The candidates with the job's pinned knobs (YAML `knobs:`) laid over them, duplicates dropped."""
    out: list[dict] = []
    for c in cands:
        c = {**dict(c), **(pinned or {})}
        if c not in out:
            out.append(c)
    return out
