"""Run a fused group as several jobs: each member keeps its own metrics, checkpoints and result.

Why a module of its own: `FusedEngine` knows stacked tensors; this is the boundary to the rest of
Saturn, written to the contract of `saturn.techniques.training.train` per member -- one metrics
line per step ({"step": next step, "loss", "step_time_s", "data_wait_s", "wall"}, fsync'd at
read-back boundaries), technique-neutral checkpoints in each member's own directory with the solo
meta (job, technique, knobs, loss), resume from the member's newest checkpoint -- so an executor
runs a group in one process and each member looks like a solo job to status and report.

Members leave the group between steps, at the next read-back boundary (at most `readback_every`
steps, or ~2 s, later), without stopping the others:
* a member that reaches its end step checkpoints and leaves ("completed");
* `FusedRun.leave(name)` (a cancelled or pruned job: `Orchestrator.cancel`, Optuna, Tune; the
  executor's per-member stop file, see `run_fused_attempt`) checkpoints it and leaves
  ("interrupted": it resumes from there, solo or in another group);
* `FusedRun.stop()` (SIGTERM to the runner) checkpoints every member ("interrupted").
The engine re-stacks the remaining members, so their losses and updates are unchanged.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from saturn.fused.engine import FusedEngine
from saturn.fused.grouping import TECHNIQUE
from saturn.techniques import checkpoint as ckpt
from saturn.techniques import step_io

READBACK_EVERY = 10


@dataclass
class Slot:
    """The runner's view of one member: where it is and where its files go."""

    job: Any
    end_step: int
    step: int = 0
    ckpt_dir: Optional[str] = None
    writer: Any = None  # step_io.MetricsWriter
    extra: dict[str, Any] = field(default_factory=dict)
    losses: list[list] = field(default_factory=list)
    checkpoint: Optional[str] = None
    status: str = "running"


class FusedRun:
    """One fused attempt: `run()` trains until every member has left; `leave`/`stop` may be
    called from other threads."""

    def __init__(self, jobs: Sequence[Any], *, device: Any = "cpu",
                 end_steps: Optional[dict[str, int]] = None,
                 ckpt_dirs: Optional[dict[str, str]] = None,
                 metrics_paths: Optional[dict[str, str]] = None, checkpoint_every: int = 0,
                 readback_every: int = READBACK_EVERY, knobs: Optional[dict[str, Any]] = None,
                 max_grad_norm: Optional[dict[str, float]] = None,
                 line_extra: Optional[dict[str, dict[str, Any]]] = None):
        if readback_every < 1:
            raise ValueError(f"readback_every must be >= 1, got {readback_every}")
        self.knobs = dict(knobs or {})
        self.checkpoint_every, self.readback_every = int(checkpoint_every), int(readback_every)
        self.slots: dict[str, Slot] = {}
        resume = {}
        for job in jobs:
            end = int((end_steps or {}).get(job.name) or job.total_steps)
            d = (ckpt_dirs or {}).get(job.name)
            path = ckpt.latest_checkpoint(d, ckpt.Owner.of(job, end)) if d else None
            if path:
                resume[job.name] = path
            self.slots[job.name] = Slot(job, end, ckpt_dir=d, extra=dict((line_extra or {}).get(job.name) or {}),
                                        writer=step_io.MetricsWriter((metrics_paths or {}).get(job.name)))
        self.engine = FusedEngine(jobs, device, max_grad_norm=max_grad_norm, checkpoints=resume)
        for name, meta in self.engine.resumed.items():
            self.slots[name].step = int(meta["step"])
            self.slots[name].checkpoint = resume[name]
        self._leaving: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def leave(self, name: str) -> None:
        """Member `name` checkpoints and leaves at the next boundary; the others go on."""
        if name not in self.slots:
            raise KeyError(f"no member {name!r} in this fused group (members: {list(self.slots)})")
        with self._lock:
            self._leaving.add(name)

    def stop(self) -> None:
        self._stop.set()

    # ---------------------------------------------------------------------------------- loop
    def run(self) -> dict[str, dict[str, Any]]:
        """Train until every member has left; returns per member {"status": "completed" |
        "interrupted", "step", "checkpoint", "losses"} (the solo `RunResult` fields)."""
        for name in list(self.engine.names):
            if self.slots[name].step >= self.slots[name].end_step:
                self._retire(name, "completed", save=False)
        pending: list[tuple[list[str], list[int], torch.Tensor]] = []
        t_block = time.perf_counter()
        while self.engine.width:
            names = self.engine.names
            steps = [self.slots[n].step for n in names]
            pending.append((names, steps, self.engine.step(steps)))
            for n in names:
                self.slots[n].step += 1
            due = [n for n in names if self._checkpoint_due(self.slots[n])]
            ending = [n for n in names if self.slots[n].step >= self.slots[n].end_step]
            with self._lock:
                leaving = sorted(self._leaving & set(names))
            if not (len(pending) >= self.readback_every or due or ending or leaving
                    or self._stop.is_set() or time.perf_counter() - t_block > 2.0):
                continue
            t_block = self._boundary(pending, t_block)
            pending = []
            for n in ending:
                self._retire(n, "completed")
            for n in leaving:
                if n not in ending:
                    self._retire(n, "interrupted")
            if self._stop.is_set():
                for n in list(self.engine.names):
                    self._retire(n, "interrupted")
            for n in due:
                if n in self.engine.names:
                    s = self.slots[n]
                    s.checkpoint = self._save(s)
        return {n: {"status": s.status, "step": s.step, "checkpoint": s.checkpoint,
                    "losses": s.losses} for n, s in self.slots.items()}

    def _checkpoint_due(self, s: Slot) -> bool:
        return bool(self.checkpoint_every and s.ckpt_dir and s.step % self.checkpoint_every == 0
                    and s.step < s.end_step)

    def _boundary(self, pending: list[tuple[list[str], list[int], torch.Tensor]], t_block: float) -> float:
        """Read the block's losses back (the one host sync), write every member's lines."""
        values = torch.cat([losses for _, _, losses in pending]).tolist() if pending else []
        now, wall = time.perf_counter(), time.time()
        per_step = (now - t_block) / max(1, len(pending))
        i = 0
        for j, (names, steps, _) in enumerate(pending):
            for n, s in zip(names, steps):
                slot = self.slots[n]
                slot.losses.append([s, values[i]])
                slot.writer.add(s + 1, values[i], per_step, wall - per_step * (len(pending) - 1 - j))
                i += 1
        for slot in self.slots.values():
            slot.writer.flush()
        return now

    def _save(self, s: Slot) -> Optional[str]:
        if not s.ckpt_dir:
            return s.checkpoint
        loss = s.losses[-1][1] if s.losses else None
        meta = {"job": s.job.model_dump(mode="json"), "technique": TECHNIQUE, "knobs": self.knobs,
                "loss": loss, "world_size": 1}
        path = self.engine.save(s.job.name, s.ckpt_dir, s.step, meta)
        if s.writer.path:  # the solo job runner's checkpoint line
            s.writer.lines.append(json.dumps({**s.extra, "step": s.step, "loss": loss, "checkpoint": path,
                                              "wall": time.time()}) + "\n")
            s.writer.flush()
        return path

    def _retire(self, name: str, status: str, save: bool = True) -> None:
        s = self.slots[name]
        if save and (s.checkpoint is None or ckpt.read_meta(s.checkpoint)["step"] != s.step):
            s.checkpoint = self._save(s)
        s.status = status
        self.engine.remove(name)
        with self._lock:
            self._leaving.discard(name)


def stop_file(job_dir: str, attempt: int) -> str:
    """The file whose appearance makes one member of a running fused attempt leave it."""
    return os.path.join(job_dir, f"leave-{attempt}")
