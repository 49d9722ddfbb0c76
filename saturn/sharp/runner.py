"""Run a SHARP group as a job runner would run one job: resume, metrics lines, checkpoints,
graceful stop.

Why a module of its own: `SharpGroup` knows members and workers; this is the boundary to the
rest of Saturn, written to the same contract as `saturn.training.loop.train` per member
(one metrics line per step `{"step": next step, "loss", "step_time_s", "wall"}`, technique-neutral
checkpoints in each job's own directory with the same meta, resume from the newest one), so an
executor runs a group by calling `run_group` in one runner process per group
(`run_group_attempt`, which `python -m saturn.runtime.job_runner GROUP_SPEC.json` calls; the
executor side is `saturn.executor.sharp_dispatch`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

from saturn.sharp.group import SharpGroup
from saturn.sharp.jobs import build_member


def _append(path: str, rec: dict[str, Any]) -> None:
    """One JSON line in one write(2) on an O_APPEND file: a reader never sees half a line
    from two writers, and a kill leaves at most a torn last line (readers skip it)."""
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    finally:
        os.close(fd)


def run_group(jobs: list[Any], *, checkpoint_root: Optional[str] = None,
              knobs: Optional[dict[str, Any]] = None, device: Any = "cpu", workers: int = 1,
              end_steps: Optional[dict[str, int]] = None, checkpoint_every: int = 0,
              metrics_dir: Optional[str] = None, stop: Optional[threading.Event] = None,
              step_times: Optional[dict[str, float]] = None,
              ckpt_dirs: Optional[dict[str, str]] = None,
              metrics_paths: Optional[dict[str, str]] = None,
              line_extra: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, dict[str, Any]]:
    """Train `jobs` together until each reaches its end step (default: the job's total steps)
    or `stop` is set (then each checkpoints at its next step boundary). Returns per job:
    {"status": "completed" | "interrupted", "step", "checkpoint", "losses"}.

    Per job, checkpoints go to `ckpt_dirs[name]` (default `checkpoint_root/name`) and metrics
    lines to `metrics_paths[name]` (default `metrics_dir/name.jsonl`); with explicit
    `metrics_paths` a line per published checkpoint (`{"step", "loss", "checkpoint", "wall"}`)
    is appended too, as the solo job runner reports them; `line_extra[name]` is merged into
    each of that job's lines (the executor's attempt number)."""
    paths = {}
    for job in jobs:
        ck = (ckpt_dirs or {}).get(job.name) or (
            os.path.join(checkpoint_root, job.name) if checkpoint_root else None)
        mp = (metrics_paths or {}).get(job.name) or (
            os.path.join(metrics_dir, f"{job.name}.jsonl") if metrics_dir else None)
        paths[job.name] = (ck, mp, dict((line_extra or {}).get(job.name) or {}))
    members = []
    for job in jobs:
        end = int((end_steps or {}).get(job.name) or getattr(job, "total_steps", None)
                  or job.steps)
        m = build_member(job, knobs, device, end_step=end, ckpt_dir=paths[job.name][0],
                         checkpoint_every=checkpoint_every,
                         step_time_s=(step_times or {}).get(job.name))
        m.meta = {"job": job.model_dump(mode="json"), "knobs": knobs or {}}
        members.append(m)
    last_end = {m.name: time.perf_counter() for m in members}

    def on_step(name: str, step: int, loss: float) -> None:
        now = time.perf_counter()
        dt, last_end[name] = now - last_end[name], now
        _, mp, extra = paths[name]
        if mp:
            _append(mp, {**extra, "step": step + 1, "loss": loss, "step_time_s": round(dt, 6),
                         "wall": time.time()})

    def on_checkpoint(name: str, step: int, path: str, loss: Optional[float]) -> None:
        _, mp, extra = paths[name]
        if mp and metrics_paths:
            _append(mp, {**extra, "step": step, "loss": loss, "checkpoint": path,
                         "wall": time.time()})

    group = SharpGroup(members, workers, on_step=on_step, on_checkpoint=on_checkpoint)
    if stop is not None:
        def watch() -> None:
            while not group.scheduler.all_finished:
                if stop.wait(0.05):
                    group.request_stop()
                    return

        threading.Thread(target=watch, daemon=True).start()
    try:
        group.run()
    finally:
        for m in members:
            m.engine.close()
    return {m.name: {"status": "completed" if m.step >= m.end_step else "interrupted",
                     "step": m.step, "checkpoint": m.checkpoints[-1] if m.checkpoints else None,
                     "losses": [list(x) for x in m.losses]} for m in members}


def _newest(ckpt_dir: str, default_step: int, member: dict[str, Any]) -> tuple[int, Optional[str]]:
    from saturn.training.catalog import Owner, latest_checkpoint, read_meta

    try:
        path = latest_checkpoint(ckpt_dir, Owner.of(member["job"], member.get("end_step")))
        return (int(read_meta(path)["step"]), path) if path else (default_step, None)
    except (OSError, ValueError, KeyError):
        return default_step, None


def run_group_attempt(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One attempt of a SHARP group in this (runner) process; writes every member's result
    file (atomically, as `job_runner.run_attempt` does for one job). SIGTERM = every member
    checkpoints at its next step boundary and the attempt ends "interrupted".

    Devices: on CPU slots, one worker thread per slot; on CUDA, the group's GPUs become
    CUDA_VISIBLE_DEVICES and the group runs on the first of them (multi-GPU SHARP is a
    separate issue), set before torch is imported."""
    cpu = spec.get("device_type") == "cpu"
    gpus = [int(g) for g in spec.get("gpus") or [0]]
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if cpu else ",".join(str(g) for g in gpus)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    members = spec["members"]
    results: dict[str, dict[str, Any]]
    try:
        import torch

        from saturn.spec.schema import Job

        if cpu or not torch.cuda.is_available():
            device, workers = "cpu", max(1, len(gpus))
            torch.set_num_threads(1)  # one thread per slot, as a solo job's CPU worker
        else:
            device, workers = "cuda:0", 1
        jobs = [Job.model_validate(m["job"]) for m in members]
        knobs = {k: v for k, v in (spec.get("knobs") or {}).items() if k != "group"}
        results = run_group(
            jobs, knobs=knobs, device=device, workers=workers,
            checkpoint_every=int(spec.get("checkpoint_every") or 0), stop=stop,
            ckpt_dirs={m["job"]["name"]: m["checkpoint_dir"] for m in members},
            metrics_paths={m["job"]["name"]: m["progress_path"] for m in members},
            line_extra={m["job"]["name"]: {"attempt": m.get("attempt")} for m in members})
        for r in results.values():
            r["reason"] = ""
    except BaseException as exc:  # noqa: BLE001 - report per member, never hang the executor
        import traceback

        sys.stderr.write(traceback.format_exc())
        reason = f"SHARP group {spec.get('group')}: {type(exc).__name__}: {exc}"[:2000]
        results = {}
        for m in members:
            step, path = _newest(m["checkpoint_dir"], int(m["start_step"]), m)
            results[m["job"]["name"]] = {"status": "failed", "step": step, "checkpoint": path,
                                         "losses": [], "reason": reason}
    for m in members:
        tmp = m["result_path"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump({**results[m["job"]["name"]], "group": spec.get("group")}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, m["result_path"])
    return results
