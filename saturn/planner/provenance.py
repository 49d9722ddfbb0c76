"""Where each planned number came from: measured here / measured elsewhere / estimated (the
prior cost model, `saturn.prior.cost_model`) / extrapolated / simulated / guessed / unlabelled.

Why: a plan built on extrapolated sample rows looks exactly like one built on measurements, and a
user acting on it (buying GPU hours, choosing a technique) must be told. The profile row an
assignment rests on carries a free-text `source` ("profiler", "sample: extrapolated from ...",
"simulated ...") and, for rows the profile store wrote, the `host` that measured it; this module
turns them into one label per assignment, which the plan JSON records and `saturn plan` prints.
Pure pandas (the planner side never imports torch).
"""

from __future__ import annotations

import json
import socket
from typing import Any, Iterable, Optional

import pandas as pd

MEASURED_HERE, MEASURED_ELSEWHERE = "measured here", "measured elsewhere"
EXTRAPOLATED, SIMULATED, GUESSED, UNLABELLED = "extrapolated", "simulated", "guessed", "unlabelled"
ESTIMATED = "estimated"  # the prior cost model (FLOPs and bytes / machine rates, calibrated)
GUESSES = (ESTIMATED, EXTRAPOLATED, SIMULATED, GUESSED)  # numbers nobody measured for this option
_MEASURED_SOURCES = ("profiler", "measured", "executor", "observed", "run:")  # run: a job's own steps (inrun)


def classify(row: Any, host: Optional[str] = None) -> str:
    """The provenance label of one profile row (a dict or Series with `source` and maybe `host`)."""
    get = row.get if hasattr(row, "get") else (lambda k, d=None: d)
    src = get("source", None)
    src = "" if src is None or (isinstance(src, float) and src != src) else str(src).strip().lower()
    if not src:
        return UNLABELLED
    if src.startswith("estimate"):  # the prior ("estimated: ...") and other estimates ("estimate: ...")
        return ESTIMATED
    if "simulat" in src:
        return SIMULATED
    if "extrapolat" in src:
        return EXTRAPOLATED
    if src.startswith(("sample", "guess", "default", "synthetic")):
        return GUESSED
    if src.startswith(_MEASURED_SOURCES):
        h = get("host", None)
        h = None if h is None or (isinstance(h, float) and h != h) else str(h)
        return MEASURED_HERE if h and h == (host or socket.gethostname()) else MEASURED_ELSEWHERE
    return UNLABELLED


def nobody_measured(row: Any) -> bool:
    """Whether a row's numbers are unmeasured (estimated, extrapolated, simulated, guessed): what
    `saturn run` measures from the jobs' own first steps. A row with no `source` at all (a
    hand-made table) is taken as given."""
    label = classify(row)
    if label == UNLABELLED:
        get = row.get if hasattr(row, "get") else (lambda k, d=None: d)
        return str(get("source", "") or "").strip().lower().startswith("estimat")
    return label not in (MEASURED_HERE, MEASURED_ELSEWHERE)


def is_measured(row: Any) -> bool:
    """Whether a profile row is a measurement (here or elsewhere), by its `source`."""
    return classify(row) in (MEASURED_HERE, MEASURED_ELSEWHERE)


def _canon(knobs: Any) -> str:
    if knobs is None or (isinstance(knobs, float) and knobs != knobs) or knobs == "":
        return "{}"
    obj = json.loads(knobs) if isinstance(knobs, str) else knobs
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def annotate(plan: Any, profiles: pd.DataFrame, host: Optional[str] = None) -> Any:
    """Set `provenance` (and `source`, the row's own text) on every assignment of `plan` from the
    row it rests on: same job, technique, knobs and GPU count. Returns the plan."""
    index: dict[tuple, dict] = {}
    if profiles is not None and len(profiles) and "job" in profiles.columns:
        for r in profiles.to_dict("records"):
            try:
                key = (str(r["job"]), str(r["technique"]), _canon(r.get("knobs")), int(r["gpus"]))
            except (TypeError, ValueError):
                continue
            index.setdefault(key, r)
    for a in plan.assignments:
        r = index.get((a.job, a.technique, _canon(a.knobs), len(a.gpus)))
        a.provenance = classify(r, host) if r is not None else UNLABELLED
        src = None if r is None else r.get("source")
        a.source = None if src is None or (isinstance(src, float) and src != src) else str(src)
    return plan


def guessed(assignments: Iterable[Any]) -> list[Any]:
    return [a for a in assignments if getattr(a, "provenance", None) in GUESSES]


def summary(assignments: Iterable[Any]) -> dict[str, Any]:
    """{"counts": {label: n}, "guessed_jobs": [...], "unlabelled_jobs": [...]} for the plan JSON."""
    assignments = list(assignments)
    counts: dict[str, int] = {}
    for a in assignments:
        p = getattr(a, "provenance", None) or UNLABELLED
        counts[p] = counts.get(p, 0) + 1
    return {"counts": counts, "guessed_jobs": sorted(a.job for a in guessed(assignments)),
            "unlabelled_jobs": sorted(a.job for a in assignments if getattr(a, "provenance", None) == UNLABELLED)}
