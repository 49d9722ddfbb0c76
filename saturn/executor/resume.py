"""Resume: continue a run from its journal after its executor died or was stopped.

Why a module of its own: resuming is the one path that starts from a directory instead of a
workload: the run state is replayed from the journal, attempts that died with the previous
executor are closed as "lost" at their newest checkpoint on disk (their stale processes killed),
drains that were cut are decided from what was published, and only then is the run re-planned.
`Executor.resume` (saturn.executor.loop) calls `resume` with its own class, so a subclass
(`RayExecutor`) resumes as itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Union

import pandas as pd

from saturn.executor.backends.process import latest_checkpoint_step
from saturn.executor.config import ExecutorConfig, ExecutorError
from saturn.executor.journal import Journal, JournalError, record_executor, replay
from saturn.executor.run_lock import RunLock
from saturn.executor.state import ACTIVE, FINISHING
from saturn.runtime.job_runner import RUNNER_MARKER
from saturn.runtime.process import kill_stale


def resume_run(cls: Any, run_dir: Union[str, Path], backend_factory, *, config: Optional[ExecutorConfig] = None,
               display: Any = None) -> Any:
    """Continue a run from its journal as an executor of class `cls`: jobs that were running when
    the executor died are resumed from their newest checkpoint on disk (their processes died with it)."""
    run_dir = Path(run_dir)
    path = run_dir / "journal.sqlite"
    if not path.exists():
        raise ExecutorError(f"{run_dir} is not a run directory (no journal.sqlite); "
                            "start a run with `saturn run WORKLOAD.yaml --run-dir DIR`")
    lock = RunLock.acquire(run_dir, create_dir=False)  # before anything is written (run_lock.py)
    try:
        return _resume_locked(cls, run_dir, path, lock, backend_factory, config, display)
    except BaseException:
        lock.release()
        raise


def _resume_locked(cls: Any, run_dir: Path, path: Path, lock: RunLock, backend_factory,
                   config: Optional[ExecutorConfig], display: Any) -> Any:
    journal = Journal(path)
    if not any(kind == "run_started" for _, kind, _ in journal.events()):
        raise JournalError(f"run journal {path} holds no run (no events): it was cut before the run "
                           "started, so nothing can be resumed; start the run again with a new --run-dir")
    state = replay(journal)
    record_executor(journal, run_dir)
    cfg = config or ExecutorConfig(**{k: v for k, v in (journal.get_meta("config") or {}).items()
                                      if k in ExecutorConfig.__dataclass_fields__})
    nodes = journal.get_meta("nodes") or []
    rows = [r for _, kind, d in journal.events() if kind == "profiles" for r in d["rows"]]
    backend = backend_factory(state.clock_offset)
    ex = cls([], [SimpleNamespace(**n) for n in nodes], pd.DataFrame(rows), backend, run_dir=run_dir,
             config=cfg, display=display, run_lock=lock, _journal=journal, _state=state)
    ex.emit("resumed", wall=time.time())
    for js in list(state.jobs.values()):
        seg = js.current
        if js.status in ACTIVE and seg is not None:
            kill_stale(seg.pid, RUNNER_MARKER)  # a runner that outlived its executor
            ex.check_checkpoints(js)
            step, ckpt = latest_checkpoint_step(ex.job_dir(js.name) / "ckpt", js.info.spec,
                                                js.info.total_steps) if ex.run_dir else (None, None)
            if step is None or step < js.committed_step:
                step, ckpt = js.committed_step, js.checkpoint
            ex.emit("finished", job=js.name, status="lost", step=step, checkpoint=ckpt,
                    reason="the executor stopped while this attempt ran")
    for js in list(state.jobs.values()):  # its drain died with the executor, or finished
        if js.status == FINISHING:
            ex.settle_drain(js, None, "the executor stopped while this job's final checkpoint "
                                       "was being written")
    for js in state.jobs.values():  # steps logged after the executor's last read
        if ex.metrics is not None and js.segments:
            ex.metrics.reconcile(js.name, js.segments)
    ex.housekeeping()
    if not state.done():
        ex.replan("resume", force=True)
    return ex

