"""The files an executor writes into its run directory besides the journal and the metrics.

Why a module of its own: a run directory is read by people and tools after the run (`saturn
status`, `saturn report`, a user reading why a job failed), so what is written there, under which
name, and how (write-then-rename: never half-written) is decided in one place:

* `RUN/jobs/<job>/error.txt`: why a job failed for good, with the attempt logs that exist.
* `RUN/plan.json` (the plan in force) and `RUN/plans/plan-v<N>.json` (every adopted version).

The metrics files (`RUN/jobs/<job>/metrics.jsonl`) are `saturn.executor.metrics`'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional


def write_error_file(d: Path, job: str, reason: str) -> Optional[Path]:
    """Write job `job`'s failure cause to `d/error.txt` (d: its job directory); its path, or None
    when it cannot be written (the cause is journaled either way)."""
    logs = [str(p) for p in (d / "log.txt", d / "runner.txt") if p.exists()]
    try:
        d.mkdir(parents=True, exist_ok=True)
        path = d / "error.txt"
        tmp = d / ".error.txt.tmp"
        tmp.write_text(f"job {job} failed: {reason}\n" + "".join(f"attempt log: {p}\n" for p in logs))
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def write_plan_files(run_dir: Path, version: int, plan_dict: dict) -> None:
    """Keep plan version `version` as `plans/plan-v<version>.json` and make it `plan.json`."""
    d = run_dir / "plans"
    d.mkdir(parents=True, exist_ok=True)
    text = json.dumps(plan_dict, indent=1)
    (d / f"plan-v{version}.json").write_text(text)
    tmp = run_dir / ".plan.json.tmp"
    tmp.write_text(text)
    os.replace(tmp, run_dir / "plan.json")
