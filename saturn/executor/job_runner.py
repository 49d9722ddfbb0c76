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


def _report_new(spec, latest_checkpoint, read_meta, seen: list) -> None:
    try:
        path = latest_checkpoint(spec["checkpoint_dir"])
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


def main(spec_path: str) -> int:
    _die_with_parent()
    with open(spec_path) as f:
        spec = json.load(f)
    from saturn.spec.schema import Job
    from saturn.techniques import get_technique
    from saturn.techniques.checkpoint import latest_checkpoint

    job = Job.model_validate(spec["job"])
    start_path = latest_checkpoint(spec["checkpoint_dir"])
    stop = threading.Event()
    seen: list[Optional[Any]] = [start_path, True]
    watcher = threading.Thread(target=_watch, args=(spec, stop, seen), daemon=True)
    watcher.start()
    try:
        res = get_technique(spec["technique"]).run(
            job, spec["gpus"], spec.get("knobs") or {}, int(spec["start_step"]), int(spec["num_steps"]),
            spec["checkpoint_dir"], device_type=spec.get("device_type", "auto"), log_path=spec.get("log_path"),
            checkpoint_every=int(spec.get("checkpoint_every") or 0), metrics_path=spec.get("progress_path"),
            grace_s=float(spec.get("grace_s", 60.0)))
        result = res.to_dict()
    except BaseException as exc:  # noqa: BLE001 - report, never hang the executor
        import traceback

        traceback.print_exc()
        result = {"status": "failed", "step": int(spec["start_step"]), "checkpoint": None, "losses": [],
                  "reason": f"{type(exc).__name__}: {exc}"[:2000]}
    stop.set()
    watcher.join(timeout=5)
    tmp = spec["result_path"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, spec["result_path"])
    return 0


if __name__ == "__main__":
    rc = main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
