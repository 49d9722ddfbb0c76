"""The one builder of an attempt (`saturn.runtime.attempt.Attempt`) for every backend: the local
process backend, Ray (files in the node's scratch directory, checkpoints in shared storage) and
each member of a SHARP group. What differs between them is where files go, passed in; which
steps, technique, knobs and devices an attempt gets is decided here only."""

from __future__ import annotations

import os
from typing import Any, Optional

from saturn.executor.state import JobState
from saturn.runtime.attempt import Attempt


def attempt_for(job: JobState, assignment: dict[str, Any], start_step: int, attempt: int, *,
                files_dir: str, checkpoint_dir: str, device_type: str, checkpoint_every: int = 0,
                grace_s: float = 60.0, env: Optional[dict[str, str]] = None) -> Attempt:
    """Attempt `attempt` of `job` from `start_step` to its end, as `assignment` (technique, knobs,
    gpus, node) places it; its log, progress and result files in `files_dir`."""
    if job.info.spec is None:
        raise ValueError(f"job {job.name}: no job spec to run (simulation-only job)")
    return Attempt(
        job=job.info.spec, attempt=int(attempt), technique=assignment["technique"],
        knobs=dict(assignment.get("knobs") or {}), gpus=[int(g) for g in assignment["gpus"]],
        start_step=int(start_step), num_steps=int(job.info.total_steps - start_step),
        checkpoint_dir=str(checkpoint_dir), device_type=device_type,
        log_path=os.path.join(files_dir, "log.txt"), progress_path=os.path.join(files_dir, "progress.jsonl"),
        result_path=os.path.join(files_dir, f"result-{attempt}.json"),
        checkpoint_every=int(checkpoint_every), grace_s=float(grace_s), env=dict(env or {}),
        node=assignment.get("node"))
