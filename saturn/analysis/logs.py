"""`saturn logs RUN JOB [-f]`: a job's log, and with `-f` its progress as it trains.

`jobs/<job>/log.txt` holds each attempt's own output (its losses at every reporting boundary,
warnings, tracebacks), appended when the attempt ends (ranks' outputs are gathered then, so lines of
several ranks never interleave). While an attempt runs, `-f` also shows its live losses from
`progress.jsonl` (flushed by the training loop at every boundary), marked `(live)`: one line per
poll at most. Following ends when the job has ended (journal) or the run's executor is gone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional, Union

from saturn.errors import SaturnError

PathLike = Union[str, Path]


def job_dir(run_dir: PathLike, job: str) -> Path:
    """The job's folder in the run; a SaturnError naming the run's jobs when it has no such job."""
    from saturn.executor.report import load_run

    state, journal = load_run(run_dir)
    journal.close()
    if job not in state.jobs:
        raise SaturnError(f"run {run_dir} has no job {job!r}; its jobs: {', '.join(state.jobs) or 'none'}")
    return Path(run_dir) / "jobs" / job


def _job_ended(run_dir: PathLike, job: str) -> bool:
    from saturn.executor.journal import run_liveness
    from saturn.executor.report import load_run
    from saturn.executor.state import TERMINAL

    state, journal = load_run(run_dir)
    journal.close()
    js = state.jobs.get(job)
    return js is None or js.status in TERMINAL or run_liveness(run_dir)["state"] != "running"


class _Tail:
    """New whole lines of a file since the last read (a rewritten, shorter file is read anew)."""

    def __init__(self, path: Path, offset: int = 0):
        self.path, self.offset = path, offset

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(0, 2)
                if f.tell() < self.offset:
                    self.offset = 0
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode("utf-8", "replace").splitlines()


def show_log(run_dir: PathLike, job: str, say: Callable[[str], None], *, follow: bool = False,
             poll_s: float = 1.0, max_s: Optional[float] = None) -> int:
    """Print the job's log (and, following, what comes next until the job ends or `max_s`
    seconds pass); the number of lines printed."""
    d = job_dir(run_dir, job)
    log, prog = _Tail(d / "log.txt"), _Tail(d / "progress.jsonl")
    prog.read()  # live lines start from now: the log already holds the ended attempts' losses
    n = 0
    for line in log.read():
        say(line)
        n += 1
    if not (d / "log.txt").exists() and not follow:
        say(f"(no log yet: {d / 'log.txt'} is written when the job's first attempt ends; "
            f"follow it with `saturn logs {run_dir} {job} -f`)")
    t0 = time.monotonic()
    while follow:
        ended = _job_ended(run_dir, job)
        live = prog.read()
        if live:
            try:
                rec = json.loads(live[-1])
                say(f"step {rec['step']}  loss {float(rec['loss']):.4g}  (live)")
                n += 1
            except (ValueError, KeyError, TypeError):
                pass
        for line in log.read():
            say(line)
            n += 1
        if ended or (max_s is not None and time.monotonic() - t0 >= max_s):
            break
        time.sleep(poll_s)
    return n
