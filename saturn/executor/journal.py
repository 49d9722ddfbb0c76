"""The run directory's durable journal: SQLite (WAL), one row per event.

Every state change of the executor is an event, and the executor changes its state *only* by
applying events (`apply_event`), the same function `replay` uses on `--resume`. So the state after
a crash is exactly the state the journal describes: nothing the executor acted on is missing.

Tables: `events` (seq, t, wall, kind, job, data JSON) is the source of truth; `plans` (version, t0,
reason, plan JSON) and `checkpoints` (job, step, path, t) are denormalized views for `saturn status`
/ `report` and for humans with the sqlite3 shell.

Durability: WAL with `synchronous=FULL`, so an event the executor acted on survives a power loss,
not only a process kill. An existing journal is checked when opened (0 bytes, not a database,
failed `quick_check`, missing tables): a damaged journal is a `JournalError` naming the file and
what to do (exit 2), never an empty run that "resumes" as a success.

Liveness: the executor records its pid/host in `meta` and touches `RUN_DIR/heartbeat` every poll;
`executor_liveness` tells a running executor from a dead one for `saturn status`.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from saturn.errors import SaturnError
from saturn.executor.state import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHING,
    PENDING,
    RUNNING,
    STOPPING,
    JobInfo,
    JobState,
    RunState,
    Segment,
    option_key,
)

JOURNAL_FILE = "journal.sqlite"
HEARTBEAT_FILE = "heartbeat"
HEARTBEAT_STALE_S = 30.0  # no heartbeat for this long and no live pid: the executor is dead
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL,
    wall REAL NOT NULL, kind TEXT NOT NULL, job TEXT, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plans (version INTEGER PRIMARY KEY, t0 REAL NOT NULL, reason TEXT,
    makespan_s REAL, plan TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL,
    step INTEGER NOT NULL, path TEXT, t REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class JournalError(SaturnError):
    """The run journal is damaged or empty: the run cannot be resumed or reported from it."""


def _damaged(path: Path, what: str) -> JournalError:
    return JournalError(
        f"run journal {path} {what}. It cannot be resumed or reported. Keep it for inspection (e.g. "
        f"`sqlite3 {path} .recover`), and start the workload again with a new --run-dir; checkpoints "
        f"under {path.parent / 'jobs'}/*/ckpt are not used by a new run.")


def _not_created(path: Path, exc: BaseException) -> JournalError:
    why = getattr(exc, "strerror", None) or str(exc)
    return JournalError(f"run journal {path}: cannot be created ({why}); free space on its disk (or pick a "
                        "writable --run-dir) and start the run again")


class Journal:
    """Append-only event log. `path=None` keeps it in memory (simulations, benchmarks)."""

    def __init__(self, path: Union[str, Path, None]):
        self.path = None if path is None else Path(path)
        existed = self.path is not None and self.path.exists()
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _not_created(self.path, exc) from None
            if existed and self.path.stat().st_size == 0 and not Path(str(self.path) + "-wal").exists():
                raise _damaged(self.path, "is empty (0 bytes; the run was cut before it was written)")
        try:
            self.db = sqlite3.connect(":memory:" if self.path is None else str(self.path),
                                      isolation_level=None, check_same_thread=False)
            if self.path is not None:
                if existed:
                    self._check()
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
        except sqlite3.OperationalError as exc:
            if existed or self.path is None:
                raise _damaged(self.path or Path(":memory:"), f"is not a readable SQLite database ({exc})") from exc
            raise _not_created(self.path, exc) from None  # a new journal: the disk, not the file
        except sqlite3.DatabaseError as exc:
            raise _damaged(self.path or Path(":memory:"), f"is not a readable SQLite database ({exc})") from exc

    def _check(self) -> None:
        assert self.path is not None  # only an on-disk journal is checked
        ok = self.db.execute("PRAGMA quick_check").fetchone()
        if not ok or ok[0] != "ok":
            raise _damaged(self.path, f"is corrupt (sqlite quick_check: {ok[0] if ok else 'no answer'})")
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"events", "meta"} <= tables:
            raise _damaged(self.path, "is not a Saturn run journal (no events/meta tables)")

    def append(self, t: float, kind: str, data: dict[str, Any]) -> None:
        job = data.get("job")
        if self.path is not None:  # fsync every state change; per-step progress (re-derivable from
            sync = "NORMAL" if kind == "progress" else "FULL"  # progress.jsonl) rides on the next fsync
            if sync != getattr(self, "_sync", "FULL"):
                self.db.execute(f"PRAGMA synchronous={sync}")
                self._sync = sync
        with self.db:
            self.db.execute("INSERT INTO events (t, wall, kind, job, data) VALUES (?, ?, ?, ?, ?)",
                            (float(t), time.time(), kind, job, json.dumps(data, default=str)))
            if kind == "plan":
                self.db.execute("INSERT OR REPLACE INTO plans VALUES (?, ?, ?, ?, ?)",
                                (int(data["version"]), float(data["t0"]), data.get("reason", ""),
                                 float(data["plan"].get("makespan_s", 0.0)),
                                 json.dumps(data["plan"])))
            elif kind in ("checkpoint", "finished", "durable") and data.get("checkpoint") \
                    and data.get("durable") is not False and data.get("ok", True):
                self.db.execute("INSERT INTO checkpoints (job, step, path, t) VALUES (?, ?, ?, ?)",
                                (job, int(data["step"]), data["checkpoint"], float(t)))

    def events(self) -> Iterator[tuple[float, str, dict[str, Any]]]:
        try:
            for t, kind, data in self.db.execute("SELECT t, kind, data FROM events ORDER BY seq"):
                yield t, kind, json.loads(data)
        except (sqlite3.DatabaseError, ValueError) as exc:
            raise _damaged(self.path or Path(":memory:"), f"has an unreadable event ({exc})") from exc

    def set_meta(self, key: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def plans(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT version, t0, reason, plan FROM plans ORDER BY version")
        return [{"version": v, "t0": t0, "reason": r, "plan": json.loads(p)} for v, t0, r, p in rows]

    def close(self) -> None:
        self.db.close()


def record_executor(journal: Journal, run_dir: Union[str, Path]) -> None:
    """Note which process drives the run now (for `executor_liveness`) and start its heartbeat."""
    journal.set_meta("executor", {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
    heartbeat(run_dir, force=True)


_last_beat: dict[str, float] = {}


def heartbeat(run_dir: Union[str, Path, None], force: bool = False) -> None:
    """Touch RUN_DIR/heartbeat (at most once a second)."""
    if run_dir is None:
        return
    now = time.monotonic()
    key = str(run_dir)
    if not force and now - _last_beat.get(key, -1e9) < 1.0:
        return
    _last_beat[key] = now
    p = Path(run_dir) / HEARTBEAT_FILE
    try:
        p.touch()
        os.utime(p)
    except OSError:
        pass


def executor_liveness(run_dir: Union[str, Path], journal: Journal) -> dict[str, Any]:
    """{"state": "running" | "dead" | "finished", pid, host, heartbeat_age_s, detail}.

    Finished = the journal's last run event is run_finished/run_stopped. Otherwise the executor is
    running when, on this host, a process holds the run directory's lock (a reused pid does not
    count), or, on another host, when the heartbeat is fresh; else it is dead and the run can be
    resumed."""
    ex = journal.get_meta("executor") or {}
    pid, host = ex.get("pid"), ex.get("host")
    p = Path(run_dir) / HEARTBEAT_FILE
    age = time.time() - p.stat().st_mtime if p.exists() else None
    last = None
    for _, kind, _ in journal.events():
        if kind in ("run_started", "resumed", "run_finished", "run_stopped"):
            last = kind
    out = {"pid": pid, "host": host, "heartbeat_age_s": None if age is None else round(age, 1)}
    if last in ("run_finished", "run_stopped"):
        return {**out, "state": "finished" if last == "run_finished" else "stopped", "detail": ""}
    if host == socket.gethostname() and pid:
        alive = _holds_run_lock(run_dir)
    else:
        alive = age is not None and age < HEARTBEAT_STALE_S
    if alive:
        return {**out, "state": "running", "detail": ""}
    beat = f"last heartbeat {age:.0f} s ago" if age is not None else "no heartbeat"
    return {**out, "state": "dead", "detail": f"the executor (pid {pid} on {host}) is gone, {beat}; "
            f"continue with `saturn run --resume {run_dir}`"}


def run_liveness(run_dir: Union[str, Path]) -> dict[str, Any]:
    """`executor_liveness` of a run directory (raises JournalError for a damaged journal)."""
    path = Path(run_dir) / JOURNAL_FILE
    if not path.exists():
        raise JournalError(f"{run_dir} is not a run directory (no {JOURNAL_FILE})")
    j = Journal(path)
    try:
        return executor_liveness(run_dir, j)
    finally:
        j.close()


def mark_dead_jobs(summary: dict[str, Any], liveness: dict[str, Any]) -> dict[str, Any]:
    """In a `report.summarize` dict: jobs shown running by a dead executor are "dead"."""
    summary["executor"] = liveness
    if liveness.get("state") == "dead":
        for j in summary.get("jobs", []):
            if j.get("status") in ("running", "stopping", "finishing"):
                j["status"] = "dead"
    return summary


def _holds_run_lock(run_dir: Union[str, Path]) -> bool:
    """On this host, an executor runs the directory exactly while it holds its lock (run_lock.py):
    the kernel frees it when the process dies, whatever became of the pid since."""
    from saturn.executor.run_lock import RunLockedError, check_not_locked

    try:
        check_not_locked(run_dir)
    except RunLockedError:
        return True
    return False


def open_journal(run_dir: Union[str, Path, None]) -> Journal:
    return Journal(None if run_dir is None else Path(run_dir) / JOURNAL_FILE)


# ------------------------------------------------------------------------------ state transitions
def apply_event(state: RunState, t: float, kind: str, d: dict[str, Any]) -> None:
    """The one place the run state changes. Unknown kinds are ignored (forward compatibility)."""
    js: Optional[JobState] = state.jobs.get(d.get("job", "")) if "job" in d else None
    if kind == "run_started":
        state.started_wall = float(d.get("wall", 0.0))
    elif kind == "job_added":
        info = JobInfo(**d["info"])
        if info.name in state.jobs:  # re-submitted after a cancel: a fresh job of the same name
            old = state.jobs[info.name]
            state.jobs[info.name] = JobState(info=info, committed_step=old.committed_step,
                                             checkpoint=old.checkpoint)
        else:
            state.jobs[info.name] = JobState(info=info)
    elif kind == "plan":
        state.plan, state.plan_t0 = d["plan"], float(d["t0"])
        state.plan_version = int(d["version"])
        if d.get("reason") not in ("initial", "given", "resume", "retime"):
            state.replans += 1
    elif kind == "launch" and js is not None:
        js.status = RUNNING
        js.stop_reason = ""
        js.segments.append(Segment(attempt=len(js.segments) + 1, technique=d["technique"],
                                   knobs=dict(d.get("knobs") or {}), node=d["node"],
                                   gpus=[int(g) for g in d["gpus"]], start_step=int(d["start_step"]),
                                   launched_at=t, progress_offset=d.get("progress_offset")))
        js.progress_step = int(d["start_step"])
    elif kind == "progress" and js is not None:
        seg = js.current
        step = int(d["step"])
        if seg is not None:
            # Only a report of a new step moves the step clock: a checkpoint of an earlier (or the
            # same) step is published later, while training goes on (background saves), and its
            # time says nothing about the step rate.
            if seg.first_progress is None:
                seg.first_progress = seg.last_progress = (t, step)
            elif seg.last_progress is not None and step > seg.last_progress[1]:
                js.observe(seg.technique, len(seg.gpus), t - seg.last_progress[0], step - seg.last_progress[1])
                if seg.startup_s is None:  # launch -> first step, from the first two reports
                    (t0, s0), rate = seg.first_progress, (t - seg.first_progress[0]) / (step - seg.first_progress[1])
                    seg.startup_s = max(0.0, (t0 - seg.launched_at) - (s0 - seg.start_step) * rate)
                    js.startup_obs.append(seg.startup_s)
                seg.last_progress = (t, step)
        js.progress_step = max(js.progress_step, step)
        if d.get("loss") is not None:
            js.loss = float(d["loss"])
    elif kind == "checkpoint" and js is not None:
        if int(d["step"]) > js.committed_step and js.failures > 0:
            js.failures -= 1  # retry rule (#16): a checkpoint past the committed step earns back one retry
        if int(d["step"]) >= js.committed_step:
            js.committed_step = int(d["step"])
            js.checkpoint = d.get("checkpoint") or js.checkpoint
            if d.get("loss") is not None:
                js.loss = float(d["loss"])
    elif kind == "stop_requested" and js is not None:
        js.status = STOPPING
        js.stop_reason = d.get("reason", "")
        if js.current is not None:
            js.current.stop_requested_at = t
    elif kind == "finished" and js is not None:
        _finish(state, js, t, d)
    elif kind == "durable" and js is not None and js.status == FINISHING:
        _durable(js, t, d)
    elif kind == "cancel" and js is not None:
        if js.status not in (RUNNING, STOPPING):
            js.status = CANCELLED
            js.reason = d.get("reason", "cancelled")
    elif kind == "infeasible" and js is not None:
        js.infeasible.add(option_key(d["technique"], int(d["gpus"])))
        if d.get("reason"):
            js.infeasible_why[option_key(d["technique"], int(d["gpus"]))] = str(d["reason"])
    elif kind == "job_failed" and js is not None:
        js.status = FAILED
        js.reason = d.get("reason", "")
        js.log = d.get("log")
    elif kind == "spawned" and js is not None:
        if js.current is not None:
            js.current.pid = int(d["pid"])
    elif kind == "switch":
        state.switches += 1


def _finish(state: RunState, js: JobState, t: float, d: dict[str, Any]) -> None:
    """A launch ended: close its segment, commit its checkpoint, decide the job's next status."""
    seg = js.current
    status = d["status"]
    step = int(d.get("step", js.committed_step))
    if seg is not None:
        seg.ended_at, seg.end_step, seg.status = t, step, status
        seg.phases = dict(d.get("phases") or {})
        if seg.stop_requested_at is not None and status == "interrupted":
            js.checkpoint_obs.append(max(0.0, t - seg.stop_requested_at))
    if status == "completed" and d.get("durable") is False and d.get("checkpoint"):
        # GPUs free, result not yet durable: committed once the "durable" event says so
        js.status = FINISHING
        js.pending_checkpoint, js.pending_step = d["checkpoint"], step
        js.progress_step = max(js.progress_step, step)
        if d.get("loss") is not None:
            js.loss = float(d["loss"])
        return
    if step >= js.committed_step:
        js.committed_step = step
        js.checkpoint = d.get("checkpoint") or js.checkpoint
    js.progress_step = js.committed_step
    if d.get("loss") is not None:
        js.loss = float(d["loss"])
    if status == "completed":
        js.status = COMPLETED
        js.early_stopped = step < js.info.total_steps
        js.failures = 0
    elif status == "interrupted":  # a stop we asked for: neither costs nor earns back a retry
        js.status = CANCELLED if js.stop_reason == "cancel" else PENDING
    else:  # failed / oom / lost: back to pending; the executor decides on retry or failure
        js.status = PENDING
        if status != "lost":
            js.failures += 1
        js.reason = d.get("reason", "")
        if js.stop_reason == "cancel":
            js.status = CANCELLED


def _durable(js: JobState, t: float, d: dict[str, Any]) -> None:
    """A finishing job's final checkpoint was published (ok) or lost while being written: then the
    job resumes from the newest durable checkpoint the event names (no retry is charged)."""
    seg = js.segments[-1] if js.segments else None
    if seg is not None:
        seg.durable_at, seg.drain_s = t, d.get("drain_s")
    if d.get("ok"):
        js.committed_step = max(js.committed_step, js.pending_step)
        js.checkpoint = js.pending_checkpoint
        js.status = COMPLETED
        js.early_stopped = js.committed_step < js.info.total_steps
        js.failures = 0
    else:
        step = int(d.get("step", js.committed_step))
        if seg is not None:  # the attempt's steps past `step` were not kept: they run again
            seg.end_step = min(seg.end_step if seg.end_step is not None else step, step)
        js.committed_step = step
        js.checkpoint = d.get("checkpoint")
        js.progress_step = step
        js.status = PENDING
        js.reason = d.get("reason", "")
    js.pending_checkpoint, js.pending_step = None, 0


def replay(journal: Journal) -> RunState:
    """Rebuild the run state from the journal (what `--resume` starts from)."""
    state = RunState()
    last_t = 0.0
    for t, kind, d in journal.events():
        apply_event(state, t, kind, d)
        last_t = max(last_t, t)
    state.clock_offset = last_t
    return state
