"""Execute trials: place them on free devices, run several side by side, time them out.

Each trial gets concrete device ids from the free pool and runs in its own thread; a technique's
`trial()` runs its steps in worker processes (by default the warm workers of
`saturn.runtime.warm.shared_pool`, one long-lived process per device that is replaced after a
failure), so threads are enough to overlap trials. With `isolation="process"` the `trial()` call
itself also runs in a fresh process (for techniques that train in-process), which a timeout can kill.

Nothing a trial does can crash the profiler: an exception, a wrong return type, a hang past the
timeout all become an outcome dict with status 'failed' or 'timeout' and a reason.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from saturn.profiler.search import Search, SearchStuck, Skip, TrialSpec
from saturn.runtime.causes import error_type, status_of_exception
from saturn.runtime.process import call_in_process

log = logging.getLogger(__name__)

# Outcome = dict with the TrialResult fields (status, step_time_s, peak_mem_gb, startup_s, reason)
Outcome = dict
ExecuteFn = Callable[[TrialSpec, list[int], float], Outcome]


def outcome_of(result: Any) -> Outcome:
    """A technique's return value as an outcome dict (anything unexpected becomes 'failed')."""
    from saturn.techniques.base import TrialResult

    if isinstance(result, TrialResult):
        out = result.to_dict()
    elif isinstance(result, dict) and "status" in result:
        out = dict(result)
    else:
        return {"status": "failed", "reason": f"trial() returned {type(result).__name__}, "
                                              "not a TrialResult"}
    if out.get("status") not in ("ok", "oom", "host_oom", "failed", "timeout"):
        return {"status": "failed", "reason": f"trial() returned unknown status {out.get('status')!r}"}
    if out["status"] == "ok":
        step = out.get("step_time_s")
        try:
            ok = step is not None and float(step) > 0 and float(step) < float("inf")
        except (TypeError, ValueError):
            ok = False
        if not ok:
            return {**out, "status": "failed",
                    "reason": f"trial() said ok but gave no valid step time ({step!r})"}
    return out


def call_trial(technique: Any, job: Any, devices: list[int], trial: TrialSpec,
               timeout_s: float, warm: Optional[bool] = None) -> Outcome:
    """`technique.trial(...)` with every exception turned into a 'failed' outcome. Techniques that
    launch workers (`launch.run_workers`) run the trial on the process-wide warm pool, so a trial
    pays no interpreter/import/CUDA start-up, and the pool's workers go on to run the jobs of a
    `saturn run` in the same process (warm=False or SATURN_WARM=0: cold processes)."""
    from saturn.runtime.routing import using_pool
    from saturn.runtime.warm import shared_pool, warm_enabled
    from saturn.techniques.registry import WARM_PRELOAD

    use = warm if warm is not None else warm_enabled()
    try:
        with using_pool(shared_pool(preload=WARM_PRELOAD) if use else None):
            result = technique.trial(job, devices, trial.knobs_dict, trial.steps, timeout_s)
        return outcome_of(result)
    except Exception as exc:  # noqa: BLE001 - a broken technique is a result, not a crash
        tb = traceback.format_exc(limit=3).strip().splitlines()
        # the cause from the exception's type (saturn.runtime.causes), never from its words
        return {"status": status_of_exception(exc), "error_type": error_type(exc),
                "reason": f"trial() raised {type(exc).__name__}: {str(exc)[:300]}"
                          + (f" ({tb[-2].strip()[:200]})" if len(tb) >= 2 else "")}


def _technique(name: str) -> Any:
    """A technique instance; a user class by import path skips the built-in discovery (cheap)."""
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        return getattr(importlib.import_module(module), attr)()
    from saturn.techniques.registry import get_technique

    return get_technique(name)


def _trial(technique_name: str, job: Any, devices: list[int], trial: TrialSpec,
           timeout_s: float) -> Outcome:
    return call_trial(_technique(technique_name), job, devices, trial, timeout_s, warm=False)


def call_trial_in_process(technique_name: str, job: Any, devices: list[int], trial: TrialSpec,
                          timeout_s: float, grace_s: float = 10.0) -> Outcome:
    """Run the `trial()` call in a fresh spawned process; kill it after timeout + grace."""
    return call_in_process(_trial, (technique_name, job, devices, trial, timeout_s), timeout_s, grace_s)


def pick_devices(free: list[int], n: int) -> list[int]:
    """`n` of the free ids, as tightly packed as possible (neighbouring GPUs usually share the
    fastest links, and it leaves the largest contiguous block free for the next trial)."""
    ids = sorted(free)
    best = min(range(len(ids) - n + 1), key=lambda i: (ids[i + n - 1] - ids[i], i))
    return ids[best:best + n]


@dataclass
class _Running:
    trial: TrialSpec
    devices: list[int]
    started: float
    deadline: float
    abandoned: bool = False
    release_at: Optional[float] = None  # abandoned: give the devices back then at the latest


@dataclass
class RunStats:
    run: int = 0
    timed_out: int = 0
    skipped: list[Skip] = field(default_factory=list)
    wall_s: float = 0.0
    busy_s: float = 0.0  # sum over trials of their wall time (sequential cost)
    device_s: float = 0.0  # sum over trials of wall time x devices


class Runner:
    """Drive a `Search` to completion on a device pool.

    `execute(trial, devices, timeout_s)` runs one trial (in a worker thread) and returns an
    outcome dict. `on_result(trial, outcome, devices, wall_s)` is called in the caller's thread for
    each finished trial (persist it there). A trial still running `grace_s` after its timeout is
    recorded as a timeout and abandoned; its devices return to the pool when its thread ends, or
    `grace_s` later at the latest. `budget_s`: no new trial starts after that many seconds.
    """

    def __init__(self, devices: list[int], execute: ExecuteFn, *,
                 timeout_s: Callable[[TrialSpec], float] | float = 600.0, grace_s: float = 30.0,
                 budget_s: Optional[float] = None,
                 on_result: Optional[Callable[[TrialSpec, Outcome, list[int], float], None]] = None,
                 on_progress: Optional[Callable[["Runner", Search], None]] = None,
                 clock: Callable[[], float] = time.monotonic, poll_s: float = 0.2):
        if not devices:
            raise ValueError("the profiler needs at least one device")
        self.devices = list(devices)
        self.execute = execute
        self.timeout_for = timeout_s if callable(timeout_s) else (lambda _t, v=float(timeout_s): v)
        self.grace_s = float(grace_s)
        self.budget_s = budget_s
        self.on_result = on_result
        self.on_progress = on_progress
        self.clock = clock
        self.poll_s = poll_s
        self.stats = RunStats()
        self.done_count = 0
        self._events: "queue.Queue[tuple[int, Outcome]]" = queue.Queue()
        self._running: dict[int, _Running] = {}
        self._next_id = 0

    def running(self) -> list[TrialSpec]:
        return [r.trial for r in self._running.values() if not r.abandoned]

    def run(self, search: Search) -> RunStats:
        start = self.clock()
        free = list(self.devices)
        stopped = False
        try:
            while True:
                now = self.clock()
                # 1. timeouts: record, abandon, keep the devices quarantined for a while
                for rid, r in list(self._running.items()):
                    if not r.abandoned and now > r.deadline:
                        r.abandoned, r.release_at = True, now + self.grace_s
                        self._finish(search, r, {"status": "timeout", "reason": (
                            f"trial did not return within {r.deadline - r.started:.0f}s "
                            "(timeout + grace); abandoned")}, now)
                        self.stats.timed_out += 1
                    elif r.abandoned and r.release_at is not None and now > r.release_at:
                        log.warning("devices %s of a hung trial are reused", r.devices)
                        free.extend(r.devices)
                        del self._running[rid]
                # 2. budget
                if (not stopped and self.budget_s is not None and now - start >= self.budget_s):
                    stopped = True
                    self.stats.skipped.extend(search.skip_remaining(
                        f"time budget of {self.budget_s / 60:.3g} min spent"))
                # 3. place ready trials on free devices (largest first, smaller ones backfill)
                for trial in ([] if stopped else search.ready()):
                    if trial.gpus > len(self.devices):
                        search.start(trial)
                        self._finish_direct(search, trial, {"status": "failed", "reason": (
                            f"needs {trial.gpus} devices; this machine lends {len(self.devices)}")})
                        continue
                    if trial.gpus <= len(free):
                        ids = pick_devices(free, trial.gpus)
                        free = [d for d in free if d not in ids]
                        search.start(trial)
                        self._launch(trial, ids)
                if self.on_progress:
                    self.on_progress(self, search)
                if search.done() and not any(not r.abandoned for r in self._running.values()):
                    break
                stuck = search.stuck()
                if stuck:  # no result can ever come: waiting would poll forever
                    raise SearchStuck("internal error: the profiler's search has nothing ready or running "
                                      f"but is not done; stuck cells: {'; '.join(stuck)}")
                # 4. wait for a trial to finish (or the next deadline)
                try:
                    rid, outcome = self._events.get(timeout=self.poll_s)
                except queue.Empty:
                    continue
                ended = self._running.pop(rid, None)
                if ended is None:
                    continue  # an abandoned trial whose devices were already reclaimed
                free.extend(ended.devices)
                if not ended.abandoned:
                    self._finish(search, ended, outcome, self.clock())
        finally:
            self.stats.wall_s = self.clock() - start
        return self.stats

    def _launch(self, trial: TrialSpec, ids: list[int]) -> None:
        rid = self._next_id
        self._next_id += 1
        timeout = float(self.timeout_for(trial))
        now = self.clock()
        self._running[rid] = _Running(trial, ids, now, now + timeout + self.grace_s)

        def work() -> None:
            try:
                out = self.execute(trial, ids, timeout)
            except BaseException as exc:  # noqa: BLE001 - nothing escapes a worker thread
                out = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            self._events.put((rid, out))

        threading.Thread(target=work, name=f"trial-{trial.label()}", daemon=True).start()
        self.stats.run += 1

    def _finish(self, search: Search, r: _Running, outcome: Outcome, now: float) -> None:
        wall = now - r.started
        self.stats.busy_s += wall
        self.stats.device_s += wall * len(r.devices)
        self._record(search, r.trial, outcome, r.devices, wall)

    def _finish_direct(self, search: Search, trial: TrialSpec, outcome: Outcome) -> None:
        self._record(search, trial, outcome, [], 0.0)

    def _record(self, search: Search, trial: TrialSpec, outcome: Outcome, devices: list[int],
                wall: float) -> None:
        self.done_count += 1
        if self.on_result is not None:
            try:
                self.on_result(trial, outcome, devices, wall)
            except Exception:  # noqa: BLE001 - persisting must not lose the search state
                log.exception("could not store the result of %s", trial.label())
        search.record(trial, outcome.get("status", "failed"), outcome.get("step_time_s"), wall_s=wall or None)
