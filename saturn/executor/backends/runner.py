"""What a job runner runs for the executor: one attempt of one job (`run_spec`, the entry
`saturn.runtime.job_runner` calls: `python -m saturn.runtime.job_runner SPEC.json ENTRY`).

SPEC.json: a `saturn.runtime.attempt.Attempt` (`Attempt.write`), built by
`saturn.executor.backends.attempts.attempt_for`, or a SHARP group's spec.

It calls `get_technique(technique).run(...)` in the main thread (so the launcher's SIGTERM handling
turns our SIGTERM into "checkpoint and exit"), while a watcher thread appends one JSONL line to
`progress_path` per new checkpoint ({"attempt", "step", "loss", "checkpoint", "wall"}): the
techniques' `run()` has no per-step callback, so progress is reported at checkpoint granularity
(`checkpoint_every`). `metrics_path=progress_path` is passed too, for techniques that write per-step
lines themselves. The `RunResult` is written atomically to `result_path` (`RunResult.write`); no result file means the
runner died (the executor then resumes from the newest checkpoint on disk).

Warm attempts (the default where the technique trains through `launch.run_workers`) skip the runner
process: `saturn.runtime.job_runner.WarmAttempt` calls the same `run_attempt` in a thread of the
executor, and the workers are the warm pool's long-lived processes (see saturn.runtime.warm).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, Optional

from saturn.runtime.attempt import Attempt, RunResult
from saturn.training.catalog import Owner, latest_checkpoint, read_meta

ENTRY = "saturn.executor.backends.runner:run_spec"  # what spawn_runner's runner process calls


def run_spec(spec: dict[str, Any]) -> None:
    """The runner process's work: a SHARP or fused group attempt, or one job's attempt."""
    if spec.get("kind") == "fused":  # a fused group attempt (saturn.fused.runner)
        from saturn.fused.runner import run_fused_attempt

        run_fused_attempt(spec)
        return
    if "members" in spec:  # a SHARP group attempt (saturn.executor.sharp_dispatch)
        from saturn.sharp.runner import run_group_attempt

        run_group_attempt(spec)
        return
    run_attempt(Attempt.from_dict(spec))


def _append(path: str, rec: dict[str, Any]) -> None:
    line = (json.dumps(rec) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _watch(att: Attempt, stop: threading.Event, seen: list) -> None:
    while True:
        _report_new(att, seen)
        if stop.wait(0.2):
            _report_new(att, seen)
            return


def _report_new(att: Attempt, seen: list) -> None:
    try:
        path = latest_checkpoint(att.checkpoint_dir, Owner.of(att.job, att.end_step))
        if not path or path == seen[0]:
            return
        meta = read_meta(path)
    except (OSError, ValueError, KeyError):
        return
    seen[0] = path
    if int(meta["step"]) <= att.start_step and seen[1]:
        return
    seen[1] = True
    _append(att.progress_path, {"attempt": att.attempt, "step": int(meta["step"]),
                                "loss": meta.get("loss"), "checkpoint": path, "wall": time.time()})


def run_attempt(att: Attempt, stop_event: Optional[threading.Event] = None,
                runner_log: Optional[str] = None) -> RunResult:
    """Run one attempt and write its result file (see the module doc); returns the result.
    `stop_event` (warm attempts, which run in a thread of the executor) is the graceful stop that
    SIGTERM is for a cold runner; a crash of the technique becomes a "failed" result."""
    from saturn.spec.schema import Job
    from saturn.techniques import get_technique

    start_path = latest_checkpoint(att.checkpoint_dir, Owner.of(att.job, att.end_step))
    stop = threading.Event()
    seen: list[Optional[Any]] = [start_path, True]
    watcher = threading.Thread(target=_watch, args=(att, stop, seen), daemon=True)
    watcher.start()
    extra = {"stop_event": stop_event} if stop_event is not None else {}
    try:
        job = Job.model_validate(att.job)
        result = get_technique(att.technique).run(
            job, att.gpus, att.knobs, att.start_step, att.num_steps, att.checkpoint_dir,
            device_type=att.device_type, log_path=att.log_path, checkpoint_every=att.checkpoint_every,
            metrics_path=att.progress_path, grace_s=att.grace_s, **extra)
    except BaseException as exc:  # noqa: BLE001 - report, never hang the executor
        import traceback

        text = traceback.format_exc()
        if runner_log:
            with open(runner_log, "a") as f:
                f.write(text)
        else:
            sys.stderr.write(text)
        result = RunResult(status="failed", step=att.start_step, reason=f"{type(exc).__name__}: {exc}"[:2000])
    stop.set()
    watcher.join(timeout=5)
    result.write(att.result_path)
    return result


def is_warm_capable(technique: str) -> bool:
    """Whether a technique trains through `launch.run_workers` (and so can use warm workers);
    others train in their runner process and are launched cold."""
    try:
        from saturn.techniques import get_technique
        from saturn.techniques.common import LaunchedTechnique

        return isinstance(get_technique(technique), LaunchedTechnique)
    except Exception:  # noqa: BLE001 - unknown/broken technique: the cold runner reports it
        return False
