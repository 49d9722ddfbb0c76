"""A job's techniques and pinned knobs checked against the technique registry.

Why here and not in `saturn.spec`: the spec is pure data (it imports no plug-in); whether a
technique exists and what its knobs accept is the registry's to say. Every front door runs this
one step where a workload or job comes in: `load_workload` below for YAML (the CLI, `saturn.api`),
`check_workload` for a Workload built in Python, `check_job` for `Orchestrator.submit`. Messages
are those `saturn validate` printed when the spec held these checks (field, value, file line).
"""

from __future__ import annotations

import os
from typing import Any, Union

from saturn.errors import SpecError
from saturn.numerics import numerics_conflict
from saturn.spec import limits as L
from saturn.spec.load import load_workload as load_spec
from saturn.spec.schema import Job, Workload
from saturn.techniques.registry import get_technique, technique_names, validate_knobs


def job_problems(job: Job) -> list[tuple[tuple, str, Any]]:
    """(field path inside the job, message, offending value) for each technique or knob problem."""
    known = technique_names()
    if job.techniques is not None:
        bad = [t for t in job.techniques if t not in known and ":" not in t]  # ':' = a user class by path
        if bad or not job.techniques:
            return [(("techniques",), f"unknown technique(s) {bad}; allowed: {known}", job.techniques)]
        for t in job.techniques:
            if ":" in t:
                try:
                    L.check_callable(t, "technique")
                except ValueError as exc:
                    return [(("techniques",), str(exc), job.techniques)]
    for tech, values in (job.knobs or {}).items():
        if tech not in known and ":" not in tech:
            return [((), f"knobs.{tech}: unknown technique; allowed: {known}", None)]
        if job.techniques is not None and tech not in job.techniques:
            return [((), f"knobs.{tech}: {tech!r} is not in this job's techniques {job.techniques}", None)]
        try:
            validate_knobs(tech, values)
        except (SpecError, ValueError) as exc:  # ValueError: a knob; SpecError: a path that does not import
            return [((), f"knobs.{tech}: {exc}" if isinstance(exc, SpecError) else str(exc), None)]
        if tech in known:
            conflict = get_technique(tech).knob_conflicts(job, dict(values))
            if conflict:
                return [((), f"knobs.{tech}: {conflict}", None)]
        conflict = numerics_conflict(job.numerics, tech, dict(values))
        if conflict:
            return [((), f"knobs.{tech}: {conflict}", None)]
    return []


def _message(job: Job, head: str, problems: list[tuple[tuple, str, Any]]) -> list[str]:
    out = []
    for loc, msg, got in problems:
        shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        out.append(f"{head}{'.' + '.'.join(loc) if loc else ''}: {msg}{shown}")
    return out


def check_job(job: Job) -> Job:
    """`job` if its techniques and knobs are valid, else a SpecError naming the field."""
    problems = _message(job, f"job {job.name!r}", job_problems(job))
    if problems:
        raise SpecError(problems[0] if len(problems) == 1 else "; ".join(problems))
    return job


def check_workload(wl: Workload) -> Workload:
    """`wl` if every job's techniques and knobs are valid, else one SpecError listing each."""
    problems = [p for i, j in enumerate(wl.jobs) for p in _message(j, f"jobs[{i}] (job {j.name!r})", job_problems(j))]
    if problems:
        where = getattr(wl, "path", None) or "workload"
        raise SpecError(f"{where}: {problems[0]}" if len(problems) == 1 else
                        f"{where}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))
    return wl


def load_workload(source: Union[str, os.PathLike]) -> Workload:
    """`saturn.spec.load_workload` with this step inside it (each problem at its YAML line)."""
    return load_spec(source, job_check=job_problems)
