"""A node's CPU cores shared among the jobs running on it: who is here, and each job's share.

Jobs co-located on a node register what they want (the planner's cores for the job, or their
tuner's ceiling) in one JSON file per node; each job's tuner polls `share(job)` and resizes its
pipeline when jobs start or end. The share is max-min fair (water-filling): a job never gets more
than it asked for, and what small jobs leave is split among the bigger ones.

Concurrency: every read-modify-write holds a file lock (filelock) and replaces the file atomically;
entries whose process died are dropped on the next access, so a killed job gives its cores back.
"""

from __future__ import annotations

import json
import os
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
    def __init__(self, path: str | os.PathLike, capacity: int):
        self.path = Path(path)
        self.capacity = int(capacity)
        self.lock = FileLock(str(self.path) + ".lock")

    def _read(self) -> dict[str, dict]:
        try:
            jobs = json.loads(self.path.read_text()).get("jobs", {})
        except (OSError, ValueError):
            jobs = {}
        return {j: e for j, e in jobs.items() if pid_alive(int(e.get("pid", 0)))}

    def _write(self, jobs: dict[str, dict]) -> None:
        tmp = self.path.with_suffix(self.path.suffix + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"capacity": self.capacity, "jobs": jobs}))
        os.replace(tmp, self.path)

    def register(self, job: str, want: int, pid: int | None = None) -> int:
        with self.lock:
            jobs = self._read()
            jobs[job] = {"want": int(want), "pid": int(pid or os.getpid())}
            self._write(jobs)
            return fair_shares(self.capacity, {j: e["want"] for j, e in jobs.items()})[job]

    def unregister(self, job: str) -> None:
        with self.lock:
            jobs = self._read()
            jobs.pop(job, None)
            self._write(jobs)

    def shares(self) -> dict[str, int]:
        with self.lock:
            jobs = self._read()
        return fair_shares(self.capacity, {j: e["want"] for j, e in jobs.items()})

    def share(self, job: str, default: int = 1) -> int:
        return self.shares().get(job, default)

