"""Run a fused group as several jobs: each member keeps its own metrics, checkpoints and result.

Why a module of its own: `FusedEngine` knows stacked tensors; this is the boundary to the rest of
Saturn, written to the contract of `saturn.training.loop.train` per member -- one metrics
line per step ({"step": next step, "loss", "step_time_s", "data_wait_s", "wall"}, fsync'd at
read-back boundaries), technique-neutral checkpoints in each member's own directory with the solo
meta (job, technique, knobs, loss), resume from the member's newest checkpoint -- so an executor
runs a group in one process and each member looks like a solo job to status and report.

Members leave (and waiting jobs of the same shape join: `FusedRun.join`, a refill) between steps,
at the next read-back boundary (at most `readback_every` steps, or ~2 s, later), without
stopping the others:
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
from typing import Any, Callable, Optional, Sequence

import torch

from saturn.fused.engine import FusedEngine
from saturn.fused.grouping import TECHNIQUE
from saturn.training import catalog as ckpt
from saturn.training import step_io

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
                 line_extra: Optional[dict[str, dict[str, Any]]] = None,
                 on_leave: Optional[Callable[[str, dict[str, Any]], None]] = None):
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
        self.on_leave = on_leave  # called with (name, result) as each member leaves
        self._leaving: set[str] = set()
        self._joining: list[tuple[Any, Optional[int], Optional[str], Optional[str], dict[str, Any]]] = []
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

    def join(self, job: Any, *, end_step: Optional[int] = None, ckpt_dir: Optional[str] = None,
             metrics_path: Optional[str] = None, extra: Optional[dict[str, Any]] = None) -> None:
        """A waiting job of the group's shape takes a free slot at the next boundary (resumed from
        its newest checkpoint in `ckpt_dir`, if any); refused now if it cannot fuse with them."""
        from saturn.fused.grouping import check_group

        if job.name in self.slots:
            raise ValueError(f"job {job.name!r} is already a member of this fused group")
        check_group([next(iter(self.slots.values())).job, job])
        with self._lock:
            self._joining.append((job, end_step, ckpt_dir, metrics_path, dict(extra or {})))

    def _admit(self) -> None:
        with self._lock:
            joining, self._joining = self._joining, []
        for job, end_step, d, mp, extra in joining:
            end = int(end_step or job.total_steps)
            path = ckpt.latest_checkpoint(d, ckpt.Owner.of(job, end)) if d else None
            slot = Slot(job, end, ckpt_dir=d, extra=extra, writer=step_io.MetricsWriter(mp), checkpoint=path)
            self.engine.add(job, path)
            if path:
                slot.step = int(ckpt.read_meta(path)["step"])
            self.slots[job.name] = slot

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
            self._boundary(pending, t_block)
            pending = []
            for n in ending:
                self._retire(n, "completed")
            for n in leaving:
                if n not in ending:
                    self._retire(n, "interrupted")
            if self._stop.is_set():
                for n in list(self.engine.names):
                    self._retire(n, "interrupted")
            elif self._joining:
                self._admit()
            for n in due:
                if n in self.engine.names:
                    s = self.slots[n]
                    s.checkpoint = self._save(s)
            t_block = time.perf_counter()  # saves, leaves and joins are not steps: not timed as one
        return {n: self.result(n) for n in self.slots}

    def result(self, name: str) -> dict[str, Any]:
        s = self.slots[name]
        return {"status": s.status, "step": s.step, "checkpoint": s.checkpoint, "losses": s.losses}

    def _checkpoint_due(self, s: Slot) -> bool:
        return bool(self.checkpoint_every and s.ckpt_dir and s.step % self.checkpoint_every == 0
                    and s.step < s.end_step)

    def _boundary(self, pending: list[tuple[list[str], list[int], torch.Tensor]], t_block: float) -> None:
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
        if self.on_leave is not None:
            self.on_leave(name, self.result(name))


# ------------------------------------------------------------------ the executor's group attempt
def write_result(path: str, result: dict[str, Any]) -> None:
    """A member's result file, atomically (the executor reads it as the member's attempt result)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_fused_attempt(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One attempt of a fused group in this (runner) process, for `saturn.executor.job_runner`.
    Spec: group, members [{job, attempt, start_step, checkpoint_dir, progress_path, result_path,
    leave_path}], knobs, gpus, device_type, checkpoint_every. Each member's result file is written
    when it leaves (so the executor sees it finish while the others train); a member leaves when
    its `leave_path` appears (a per-job stop); SIGTERM checkpoints every member."""
    import signal
    import sys

    cpu = spec.get("device_type") == "cpu"
    gpus = [int(g) for g in spec.get("gpus") or [0]]
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if cpu else ",".join(str(g) for g in gpus[:1])
    members = {m["job"]["name"]: m for m in spec["members"]}
    written: dict[str, dict[str, Any]] = {}
    run: Optional[FusedRun] = None
    stop = threading.Event()

    def on_leave(name: str, result: dict[str, Any]) -> None:
        written[name] = {**result, "reason": "", "group": spec.get("group")}
        write_result(members[name]["result_path"], written[name])

    def watch() -> None:  # per-member leave files, and SIGTERM
        while not stop.wait(0.1):
            if run is None:
                continue
            for name, m in members.items():
                if name not in written and os.path.exists(m["leave_path"]):
                    run.leave(name)
        if run is not None:
            run.stop()

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=watch, daemon=True).start()
    try:
        from saturn.spec.schema import Job

        device = "cpu" if cpu or not torch.cuda.is_available() else "cuda:0"
        if device == "cpu":
            torch.set_num_threads(max(1, len(gpus)))
        run = FusedRun([Job.model_validate(m["job"]) for m in members.values()], device=device,
                       ckpt_dirs={n: m["checkpoint_dir"] for n, m in members.items()},
                       metrics_paths={n: m["progress_path"] for n, m in members.items()},
                       checkpoint_every=int(spec.get("checkpoint_every") or 0),
                       knobs={k: v for k, v in (spec.get("knobs") or {}).items() if k != "group"},
                       line_extra={n: {"attempt": m.get("attempt")} for n, m in members.items()},
                       on_leave=on_leave)
        if stop.is_set():
            run.stop()
        run.run()
    except BaseException as exc:  # noqa: BLE001 - report per member, never hang the executor
        import traceback

        sys.stderr.write(traceback.format_exc())
        reason = f"fused group {spec.get('group')}: {type(exc).__name__}: {exc}"[:2000]
        for name, m in members.items():
            if name in written:
                continue
            job = m["job"]
            path = ckpt.latest_checkpoint(m["checkpoint_dir"], ckpt.Owner.of(job)) \
                if os.path.isdir(m["checkpoint_dir"]) else None
            step = int(ckpt.read_meta(path)["step"]) if path else int(m["start_step"])
            written[name] = {"status": "failed", "step": step, "checkpoint": path, "losses": [],
                             "reason": reason, "group": spec.get("group")}
            write_result(m["result_path"], written[name])
    finally:
        stop.set()
    return written
