"""Launching: which planned jobs start now, and starting them on the backend.

Why a module of its own: a launch is where the plan meets processes; what may start (GPUs free,
every job the plan put before it on those GPUs finished: plan order, not wall-clock) is a pure
rule (`ready_to_launch`), and what a launch writes first (its journal event, before the backend is
asked) is fixed here. `Launching` is a part of `saturn.executor.loop.Executor` (its attributes are
the executor's).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from saturn.executor.metrics import PROGRESS_FILE
from saturn.executor.state import OFF_GPU, RunState


class Launching:
    """The executor's launching (see the module docstring)."""

    state: RunState
    backend: Any
    measurer: Any
    run_dir: Any
    _shutdown: Optional[str]
    _skipped_ckpts: set
    emit: Callable[..., None]
    job_dir: Callable[[str], Any]
    _warn: Callable[[str, str], None]

    def check_checkpoints(self, js: Any) -> None:
        """Report (once each) checkpoints in the job's directory that its runner will skip: another
        job's, another definition's, past the job's end, or damaged (saturn.training.checkpoint)."""
        if self.run_dir is None or js.info.spec is None:
            return
        d = self.job_dir(js.name) / "ckpt"
        if not d.is_dir():
            return
        try:
            from saturn.training.catalog import Owner, refused_checkpoints
        except ImportError:  # torch-less installs: the runners still check
            return
        for path, why in refused_checkpoints(str(d), Owner.of(js.info.spec, js.info.total_steps)):
            if path not in self._skipped_ckpts:
                self._skipped_ckpts.add(path)
                self._warn(js.name, f"skipping checkpoint {path}: {why}; the previous valid one is used")

    def _launch_ready(self) -> None:
        if self._shutdown is not None:
            return
        from saturn.executor import sharp_dispatch

        for a in ready_to_launch(self.state.plan, self.state):
            if sharp_dispatch.launch(self, a):  # a SHARP group member: the group starts as one attempt
                continue
            js = self.state.jobs[a["job"]]
            self.check_checkpoints(js)
            prog = self.job_dir(js.name) / PROGRESS_FILE if self.run_dir is not None else None
            self.emit("launch", job=js.name, technique=a["technique"], knobs=a.get("knobs") or {},
                      node=a["node"], gpus=list(a["gpus"]), start_step=js.committed_step,
                      progress_offset=prog.stat().st_size if prog is not None and prog.exists() else 0)
            if self.measurer is not None:
                self.measurer.on_launch(js.name, a["technique"], a.get("knobs") or {}, len(a["gpus"]),
                                        js.committed_step)
            pid = self.backend.launch(js, a, js.committed_step, js.attempts)
            if pid is not None:
                assert js.current is not None  # the launch event above opened the segment
                js.current.pid = pid
                self.emit("spawned", job=js.name, pid=pid)


def ready_to_launch(plan: Optional[dict], state: RunState) -> list[dict]:
    """Assignments of pending jobs whose GPUs are free and whose plan predecessors (earlier
    assignments sharing a GPU) are finished."""
    if not plan:
        return []
    busy = state.busy_gpus()
    order = sorted(plan.get("assignments", []), key=lambda a: (a["start_s"], a["job"]))
    out: list[dict] = []
    claimed: set[tuple[str, int]] = set()
    for i, a in enumerate(order):
        js = state.jobs.get(a["job"])
        if js is None or js.status != "pending":
            continue
        gpus = {(a["node"], int(g)) for g in a["gpus"]}
        if gpus & set(busy) or gpus & claimed:
            continue
        blocked = False
        for b in order[:i]:
            if b["node"] != a["node"] or not gpus & {(b["node"], int(g)) for g in b["gpus"]}:
                continue
            bj = state.jobs.get(b["job"])
            if bj is not None and bj.status not in OFF_GPU:  # a finishing job's GPUs are free
                blocked = True
                break
        if not blocked:
            out.append(a)
            claimed |= gpus
    return out
