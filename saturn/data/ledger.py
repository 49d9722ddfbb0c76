"""A node's CPU cores shared among the jobs running on it: who is here, and each job's share.

Jobs co-located on a node register what they want (the planner's cores for the job, or their
tuner's ceiling) in one JSON file per node; each job's tuner polls `share(job)` and resizes its
pipeline when jobs start or end. The starting shares are max-min fair (water-filling): a job never
gets more than it asked for, and what small jobs leave is split among the bigger ones.

Then the shares follow the GPUs' data wait: every tuning window a job `report`s the fraction of
the window its training loop waited for data. A job that waits (>= `hi`) takes one core -- a free
one if the node has any, else one from the job that waits least among those that do not wait
(< `lo`, reported within `fresh_s`) and hold more than one. One core per report keeps each move a
small step whose effect the next window measures; the two thresholds keep two jobs that both wait,
or both do not, from trading a core back and forth. A job that starts or ends resets the shares
to the fair split of who is there.

Concurrency: every read-modify-write holds a file lock (filelock) and replaces the file atomically;
entries whose process died are dropped on the next access, so a killed job gives its cores back.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from filelock import FileLock

from saturn.runtime.process import pid_alive


def fair_shares(capacity: int, wants: dict[str, int]) -> dict[str, int]:
    """Max-min fair integer split of `capacity` cores (every job gets at least 1)."""
    out: dict[str, int] = {}
    left, todo = int(capacity), sorted(wants, key=lambda j: (wants[j], j))
    while todo:
        fair = max(1, left // len(todo))
        j = todo.pop(0)
        out[j] = max(1, min(int(wants[j]), fair))
        left -= out[j]
    spare = max(0, left)
    for j in sorted(out, key=lambda j: (out[j] - wants[j], j)):  # hand out rounding leftovers
        if spare and out[j] < wants[j]:
            out[j] += 1
            spare -= 1
    return out


class CoreLedger:
    def __init__(self, path: str | os.PathLike, capacity: int, *, hi: float = 0.05, lo: float = 0.01,
                 fresh_s: float = 10.0):
        self.path = Path(path)
        self.capacity = int(capacity)
        self.hi, self.lo, self.fresh_s = float(hi), float(lo), float(fresh_s)
        self.lock = FileLock(str(self.path) + ".lock")

    def _read(self) -> tuple[dict[str, dict], int]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            doc = {}
        jobs = doc.get("jobs", {})
        live = {j: e for j, e in jobs.items() if pid_alive(int(e.get("pid", 0)))}
        if len(live) != len(jobs):  # a job died: its cores go back to the fair split
            _reset(live, self.capacity)
        return live, int(doc.get("moves", 0))

    def _write(self, jobs: dict[str, dict], moves: int) -> None:
        tmp = self.path.with_suffix(self.path.suffix + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"capacity": self.capacity, "jobs": jobs, "moves": moves}))
        os.replace(tmp, self.path)

    def register(self, job: str, want: int, pid: int | None = None) -> int:
        with self.lock:
            jobs, moves = self._read()
            jobs[job] = {"want": int(want), "pid": int(pid or os.getpid())}
            _reset(jobs, self.capacity)
            self._write(jobs, moves)
            return int(jobs[job]["share"])

    def unregister(self, job: str) -> None:
        with self.lock:
            jobs, moves = self._read()
            if jobs.pop(job, None) is not None:
                _reset(jobs, self.capacity)
            self._write(jobs, moves)

    def shares(self) -> dict[str, int]:
        with self.lock:
            jobs, _ = self._read()
        return {j: int(e["share"]) for j, e in jobs.items()}

    def share(self, job: str, default: int = 1) -> int:
        return self.shares().get(job, default)

    def moves(self) -> int:
        """Cores moved between jobs by `report` since the ledger file was created."""
        with self.lock:
            return self._read()[1]

    def report(self, job: str, wait_frac: float) -> int:
        """Record `job`'s data-wait fraction for the last window; if it waits, move one core to it
        (see the module docstring). Returns its share."""
        with self.lock:
            jobs, moves = self._read()
            me = jobs.get(job)
            if me is None:
                return 1
            now = time.time()
            me["wait"], me["t"] = float(wait_frac), now
            if wait_frac >= self.hi:
                spare = self.capacity - sum(int(e["share"]) for e in jobs.values())
                donors = [j for j, e in jobs.items() if j != job and int(e["share"]) > 1
                          and e.get("wait", 1.0) < self.lo and now - e.get("t", 0.0) <= self.fresh_s]
                if spare > 0 or donors:
                    if spare <= 0:
                        donor = min(donors, key=lambda j: (jobs[j]["wait"], -int(jobs[j]["share"]), j))
                        jobs[donor]["share"] = int(jobs[donor]["share"]) - 1
                    me["share"] = int(me["share"]) + 1
                    moves += 1
            self._write(jobs, moves)
            return int(me["share"])


def _reset(jobs: dict[str, dict], capacity: int) -> None:
    """Every job back to the fair split of the node (a job arrived or left)."""
    fair = fair_shares(capacity, {j: int(e["want"]) for j, e in jobs.items()})
    for j, e in jobs.items():
        e["share"] = fair[j]


def ledger_path() -> Path:
    """One core ledger per node and user (SATURN_DATA_LEDGER overrides: tests)."""
    import tempfile

    from saturn.env import data_ledger

    return data_ledger() or Path(tempfile.gettempdir()) / f"saturn-data-cores-{os.getuid()}.json"
