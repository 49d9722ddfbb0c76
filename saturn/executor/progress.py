"""Progress a person can trust, in a terminal or in a log file: ETAs with a range, and plain lines.

ETA (`EtaTracker`): a running job's ETA is its remaining steps at its measured step time
(`Estimator.remaining_s`), with a range from the spread of the step times measured so far (the
10th and 90th percentile of seconds per step between two progress reports, relative to their
median). The run's ETA is the current plan's remaining makespan, but never less than a running
job's own ETA, with the widest relative range of the running jobs. ETAs are never negative and a
job that has not started has none (its planned end is the plan's, shown apart).

`ProgressLines` is the display for output that is not a terminal (nohup, SLURM, CI, a pipe): one
plain line per event (a job starts, ends, fails; a new plan) and a status line at a steady interval
of wall time: jobs done / running / waiting, steps, the run's ETA and each running job's.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

from saturn.executor.state import ACTIVE, COMPLETED, FAILED, PENDING, TERMINAL
from saturn.fmt import duration

SAMPLES = 64  # step-time samples kept per job (the latest: the spread of the current option)


@dataclass(frozen=True)
class Eta:
    """Seconds left: `mid` (the estimate), `lo`..`hi` (its range); 0 <= lo <= mid <= hi."""

    mid: float
    lo: float
    hi: float

    def text(self) -> str:
        if self.hi - self.lo < 0.05 * max(self.mid, 1.0):
            return duration(self.mid)
        return f"{duration(self.mid)} ({duration(self.lo)}-{duration(self.hi)})"


def _eta(mid: float, lo_f: float = 1.0, hi_f: float = 1.0) -> Eta:
    mid = max(0.0, float(mid))
    return Eta(mid, max(0.0, min(mid, mid * lo_f)), max(mid, mid * hi_f))


class EtaTracker:
    """Step-time samples per job, taken from the state at each display update."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, float, int]] = {}  # job -> (attempt, t, step) last seen
        self._rates: dict[str, deque] = {}

    def observe(self, state: Any) -> None:
        for js in state.jobs.values():
            seg = js.current
            if seg is None or seg.last_progress is None:
                continue
            t, step = seg.last_progress
            prev = self._last.get(js.name)
            if prev is not None and prev[0] == seg.attempt and step > prev[2] and t > prev[1]:
                self._rates.setdefault(js.name, deque(maxlen=SAMPLES)).append((t - prev[1]) / (step - prev[2]))
            if prev is None or prev[0] != seg.attempt or step > prev[2]:
                self._last[js.name] = (seg.attempt, t, step)

    def spread(self, job: str) -> tuple[float, float]:
        """(p10 / median, p90 / median) of the job's step times; (1, 1) with fewer than 3."""
        r = sorted(self._rates.get(job, ()))
        if len(r) < 3:
            return 1.0, 1.0
        med = statistics.median(r)
        if med <= 0:
            return 1.0, 1.0
        q = statistics.quantiles(r, n=10, method="inclusive")
        return q[0] / med, q[-1] / med

    def job(self, ex: Any, js: Any) -> Optional[Eta]:
        """A started (running or stopping) job's ETA; None for any other."""
        if js.status not in ACTIVE or js.current is None:
            return None
        return _eta(ex.est.remaining_s(js, ex.backend.now()), *self.spread(js.name))

    def run(self, ex: Any) -> Optional[Eta]:
        """The run's ETA: the current plan's remaining makespan (at least every running job's
        ETA); None before a plan; 0 when every job has ended."""
        st, now = ex.state, ex.backend.now()
        if st.done():
            return _eta(0.0)
        jobs = [e for e in (self.job(ex, js) for js in st.jobs.values()) if e is not None]
        ms = (st.plan or {}).get("makespan_s")
        if ms is None and not jobs:
            return None
        mid = max([st.plan_t0 + float(ms) - now if ms is not None else 0.0] + [e.mid for e in jobs])
        lo_f = min([e.lo / e.mid for e in jobs if e.mid > 0] + [1.0])
        hi_f = max([e.hi / e.mid for e in jobs if e.mid > 0] + [1.0])
        return _eta(mid, lo_f, hi_f)


def device_word(ex: Any) -> str:
    """'slot' on CPU slots, 'GPU' otherwise."""
    types = {str(getattr(n, "gpu_type", "") or "").lower() for n in getattr(ex, "nodes", [])}
    return "slot" if types == {"cpu"} else "GPU"


class ProgressLines:
    """The executor display for non-terminal output (see the module docstring)."""

    def __init__(self, say: Callable[[str], None] = print, every_s: float = 10.0):
        self.say, self.every_s = say, every_s
        self.eta = EtaTracker()
        self._seen: dict[str, tuple[str, int]] = {}  # job -> (status, attempts)
        self._plan = 0
        self._last_status = time.monotonic()
        self._final = False

    def __enter__(self) -> "ProgressLines":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def update(self, ex: Any) -> None:
        st, now = ex.state, ex.backend.now()
        self.eta.observe(st)
        stamp = f"[t={duration(now)}]"
        if st.plan_version != self._plan and st.plan:
            self._plan = st.plan_version
            e = self.eta.run(ex)
            self.say(f"{stamp} plan v{st.plan_version}: {len(st.plan.get('assignments', []))} assignments, "
                     f"planned end in {e.text() if e else '-'}")
        word = device_word(ex)
        for js in st.jobs.values():
            was = self._seen.get(js.name)
            self._seen[js.name] = (js.status, js.attempts)
            if was == (js.status, js.attempts):
                continue
            seg = js.segments[-1] if js.segments else None
            if js.status in ACTIVE and seg is not None and (was is None or was[1] != js.attempts):
                ids = ",".join(str(g) for g in seg.gpus)
                self.say(f"{stamp} started {js.name}: {seg.technique} on {seg.node} {word}"
                         f"{'s' if len(seg.gpus) > 1 else ''} {ids} from step {seg.start_step}"
                         + (f" (attempt {js.attempts})" if js.attempts > 1 else ""))
            elif js.status == COMPLETED:
                loss = f", loss {js.loss:.4g}" if js.loss is not None else ""
                self.say(f"{stamp} completed {js.name}: {js.committed_step}/{js.info.total_steps} steps{loss}")
            elif js.status == FAILED:
                self.say(f"{stamp} FAILED {js.name}: {(js.reason or 'no cause recorded').splitlines()[0][:300]}")
            elif js.status in TERMINAL or (js.status == PENDING and was is not None and was[0] in ACTIVE):
                self.say(f"{stamp} {js.name}: {js.status}" + (f" ({js.stop_reason})" if js.stop_reason else ""))
        if time.monotonic() - self._last_status >= self.every_s or (st.done() and not self._final):
            self._final = st.done()
            self.say(self.status_line(ex))

    def status_line(self, ex: Any) -> str:
        self._last_status = time.monotonic()
        st = ex.state
        jobs = list(st.jobs.values())
        done = sum(j.status in TERMINAL for j in jobs)
        running = [j for j in jobs if j.status in ACTIVE]
        steps = sum(max(j.progress_step, j.committed_step) for j in jobs)
        total = sum(j.info.total_steps for j in jobs)
        e = self.eta.run(ex)
        per_job = "; ".join(f"{j.name} {max(j.progress_step, j.committed_step)}/{j.info.total_steps}"
                            + (f" ETA {je.text()}" if (je := self.eta.job(ex, j)) is not None else "")
                            for j in running)
        return (f"[t={duration(ex.backend.now())}] jobs {done}/{len(jobs)} done, {len(running)} running, "
                f"{len(jobs) - done - len(running)} waiting; steps {steps}/{total}; "
                f"ETA {e.text() if e else '-'}" + (f" | {per_job}" if per_job else ""))


class Displays:
    """Several displays on one executor (a live table or progress lines, tracker followers)."""

    def __init__(self, *displays: Any):
        self.displays = [d for d in displays if d is not None]

    def __enter__(self) -> "Displays":
        for d in self.displays:
            d.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for d in reversed(self.displays):
            d.__exit__(*exc)

    def update(self, ex: Any) -> None:
        for d in self.displays:
            d.update(ex)
