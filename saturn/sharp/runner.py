"""Run a SHARP group as a job runner would run one job: resume, metrics lines, checkpoints,
graceful stop.

Why a module of its own: `SharpGroup` knows members and workers; this is the boundary to the
rest of Saturn, written to the same contract as `saturn.techniques.training.train` per member
(one metrics line per step `{"step": next step, "loss", "step_time_s", "wall"}`, technique-neutral
checkpoints in each job's own directory with the same meta, resume from the newest one), so an
executor runs a group by calling `run_group` in one worker process per group.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Optional

from saturn.sharp.group import SharpGroup
from saturn.sharp.jobs import build_member


def run_group(jobs: list[Any], *, checkpoint_root: str, knobs: Optional[dict[str, Any]] = None,
              device: Any = "cpu", workers: int = 1, end_steps: Optional[dict[str, int]] = None,
              checkpoint_every: int = 0, metrics_dir: Optional[str] = None,
              stop: Optional[threading.Event] = None,
              step_times: Optional[dict[str, float]] = None) -> dict[str, dict[str, Any]]:
    """Train `jobs` together until each reaches its end step (default: the job's total steps)
    or `stop` is set (then each checkpoints at its next step boundary). Returns per job:
    {"status": "completed" | "interrupted", "step", "checkpoint", "losses"}."""
    members = []
    for job in jobs:
        end = int((end_steps or {}).get(job.name) or getattr(job, "total_steps", None)
                  or job.steps)
        m = build_member(job, knobs, device, end_step=end,
                         ckpt_dir=os.path.join(checkpoint_root, job.name),
                         checkpoint_every=checkpoint_every,
                         step_time_s=(step_times or {}).get(job.name))
        m.meta = {"job": job.model_dump(mode="json"), "knobs": knobs or {}}
        members.append(m)
    last_end = {m.name: time.perf_counter() for m in members}

    def on_step(name: str, step: int, loss: float) -> None:
        now = time.perf_counter()
        dt, last_end[name] = now - last_end[name], now
        if metrics_dir:
            os.makedirs(metrics_dir, exist_ok=True)
            line = json.dumps({"step": step + 1, "loss": loss, "step_time_s": round(dt, 6),
                               "wall": time.time()}) + "\n"
            with open(os.path.join(metrics_dir, f"{name}.jsonl"), "a") as f:
                f.write(line)

    group = SharpGroup(members, workers, on_step=on_step)
    watcher = None
    if stop is not None:
        def watch() -> None:
            while not group.scheduler.all_finished:
                if stop.wait(0.05):
                    group.request_stop()
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    group.run()
    out = {}
    for m in members:
        out[m.name] = {"status": "completed" if m.step >= m.end_step else "interrupted",
                       "step": m.step, "checkpoint": m.checkpoints[-1] if m.checkpoints else None,
                       "losses": [list(x) for x in m.losses]}
        m.engine.close()
    return out
