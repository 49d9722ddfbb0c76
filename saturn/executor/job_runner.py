"""One attempt of one job, in its own process: `python -m saturn.executor.job_runner SPEC.json`.

SPEC.json (written by `ProcessBackend.launch`): job (Job.model_dump), technique, knobs, gpus,
start_step, num_steps, checkpoint_dir, device_type, log_path, progress_path, result_path,
checkpoint_every, attempt, grace_s.

It calls `get_technique(technique).run(...)` in the main thread (so the launcher's SIGTERM handling
turns our SIGTERM into "checkpoint and exit"), while a watcher thread appends one JSONL line to
`progress_path` per new checkpoint ({"attempt", "step", "loss", "checkpoint", "wall"}): the
techniques' `run()` has no per-step callback, so progress is reported at checkpoint granularity
(`checkpoint_every`). `metrics_path=progress_path` is passed too, for techniques that write per-step
lines themselves. The `RunResult` is written atomically to `result_path`; no result file means the
runner died (the executor then resumes from the newest checkpoint on disk).

Warm attempts (the default where the technique trains through `launch.run_workers`) skip the runner
process: `WarmAttempt` calls the same `run_attempt` in a thread of the executor, and the workers
are the warm pool's long-lived processes (see saturn.techniques.warm).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Optional


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _append(path: str, rec: dict[str, Any]) -> None:
    line = (json.dumps(rec) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _watch(spec: dict[str, Any], stop: threading.Event, seen: list) -> None:
    from saturn.techniques.checkpoint import latest_checkpoint, read_meta

    while True:
        _report_new(spec, latest_checkpoint, read_meta, seen)
        if stop.wait(0.2):
            _report_new(spec, latest_checkpoint, read_meta, seen)
            return


def _owner(spec: dict[str, Any]) -> Any:
    from saturn.techniques.checkpoint import Owner

    return Owner.of(spec["job"], int(spec["start_step"]) + int(spec["num_steps"]))


def _report_new(spec, latest_checkpoint, read_meta, seen: list) -> None:
    try:
        path = latest_checkpoint(spec["checkpoint_dir"], _owner(spec))
        if not path or path == seen[0]:
            return
        meta = read_meta(path)
    except (OSError, ValueError, KeyError):
        return
    seen[0] = path
    if int(meta["step"]) <= int(spec["start_step"]) and seen[1]:
        return
    seen[1] = True
    _append(spec["progress_path"], {"attempt": spec.get("attempt"), "step": int(meta["step"]),
                                    "loss": meta.get("loss"), "checkpoint": path, "wall": time.time()})


def run_attempt(spec: dict[str, Any], stop_event: Optional[threading.Event] = None,
                runner_log: Optional[str] = None) -> dict[str, Any]:
    """Run one attempt and write its result file (see the module doc); returns the result.
    `stop_event` (warm attempts, which run in a thread of the executor) is the graceful stop that
    SIGTERM is for a cold runner; a crash of the technique becomes a "failed" result."""
    from saturn.spec.schema import Job
    from saturn.techniques import get_technique
    from saturn.techniques.checkpoint import latest_checkpoint

    start_path = latest_checkpoint(spec["checkpoint_dir"], _owner(spec))
    stop = threading.Event()
    seen: list[Optional[Any]] = [start_path, True]
    watcher = threading.Thread(target=_watch, args=(spec, stop, seen), daemon=True)
    watcher.start()
    extra = {"stop_event": stop_event} if stop_event is not None else {}
    try:
        job = Job.model_validate(spec["job"])
        res = get_technique(spec["technique"]).run(
            job, spec["gpus"], spec.get("knobs") or {}, int(spec["start_step"]), int(spec["num_steps"]),
            spec["checkpoint_dir"], device_type=spec.get("device_type", "auto"), log_path=spec.get("log_path"),
            checkpoint_every=int(spec.get("checkpoint_every") or 0), metrics_path=spec.get("progress_path"),
            grace_s=float(spec.get("grace_s", 60.0)), **extra)
        result = res.to_dict()
    except BaseException as exc:  # noqa: BLE001 - report, never hang the executor
        import traceback

        text = traceback.format_exc()
        if runner_log:
            with open(runner_log, "a") as f:
                f.write(text)
        else:
            sys.stderr.write(text)
        result = {"status": "failed", "step": int(spec["start_step"]), "checkpoint": None, "losses": [],
                  "reason": f"{type(exc).__name__}: {exc}"[:2000]}
    stop.set()
    watcher.join(timeout=5)
    tmp = spec["result_path"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, spec["result_path"])
    return result


def main(spec_path: str) -> int:
    _die_with_parent()
    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get("kind") == "fused":  # a fused group attempt (saturn.fused.runner)
        from saturn.fused.runner import run_fused_attempt

        run_fused_attempt(spec)
        return 0
    if "members" in spec:  # a SHARP group attempt (saturn.executor.sharp_dispatch)
        from saturn.sharp.runner import run_group_attempt

        run_group_attempt(spec)
        return 0
    run_attempt(spec)
    return 0


class WarmAttempt:
    """An attempt run in a thread of the executor on warm workers (`saturn.techniques.warm`),
    with the part of `subprocess.Popen`'s interface the backends use: `pid` (None: no runner
    process), `poll()`, `terminate()` (graceful stop: checkpoint and exit) and `kill()` (SIGKILL
    the attempt's workers; the pool replaces them). The thread only supervises: training runs in
    the workers, so a crash, hang or OOM there never reaches the executor."""

    pid: Optional[int] = None

    def __init__(self, spec: dict[str, Any], pool: Any, env: Optional[dict[str, str]] = None,
                 runner_log: Optional[str] = None):
        self.spec, self.pool, self.env, self.runner_log = spec, pool, dict(env or {}), runner_log
        self.returncode: Optional[int] = None
        self._stop, self._abort = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"attempt-{spec.get('attempt')}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from saturn.techniques.warm import using_pool

        try:
            with using_pool(self.pool, abort=self._abort, env=self.env):
                run_attempt(self.spec, self._stop, self.runner_log)
            self.returncode = 0
        except BaseException:  # noqa: BLE001 - run_attempt already reports; never kill the executor
            self.returncode = 1

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        self._thread.join(timeout)
        return self.returncode

    def terminate(self) -> None:
        self._stop.set()

    def kill(self) -> None:
        self._abort.set()
        self._stop.set()
        self._thread.join(15)


def is_warm_capable(technique: str) -> bool:
    """Whether a technique trains through `launch.run_workers` (and so can use warm workers);
    others train in their runner process and are launched cold."""
    try:
        from saturn.techniques import get_technique
        from saturn.techniques.common import LaunchedTechnique

        return isinstance(get_technique(technique), LaunchedTechnique)
    except Exception:  # noqa: BLE001 - unknown/broken technique: the cold runner reports it
        return False


if __name__ == "__main__":
    rc = main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
