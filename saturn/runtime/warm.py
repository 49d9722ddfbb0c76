"""Warm execution: one long-lived worker process per device slot, reused job after job.

Why: on a real GPU a cold launch pays the interpreter, the torch/deepspeed imports and the CUDA
context for every trial and every job attempt (13-35 s per launch in issue 14), more than many jobs
spend training. A `WarmPool` keeps one `saturn.runtime.warm_worker` per slot (a GPU, or a CPU
slot) that has paid all of that once. `launch.run_workers` uses the pool of the calling thread:

    pool = WarmPool("cpu")
    with using_pool(pool):                       # (saturn.runtime.routing) run_workers() here goes warm
        technique.run(job, [0, 1], knobs, 0, 100, "ckpt")
    pool.pids()                                  # {0: 4711, 1: 4712}: the same processes next job

Why long-lived workers rather than a pre-imported fork server (measured in scripts/bench_launch.py):
a forked child still pays the CUDA context and library loads per job (CUDA cannot be initialized
before fork), and forking a process that imported torch (thread pools) is fragile; a warm worker pays
nothing per job. Its risk, state leaking from one job to the next, is handled by checks: each job
gets its own process group (fresh rendezvous port, destroyed after the job), its own log, its own
env; after the job the worker reports its memory, and a worker whose memory did not come back to its
baseline, whose job failed, hung or was stopped, or that died, is killed and replaced. A job's
failure never reaches the caller as an exception: `run` returns the same result dicts as the cold
launcher (`launch.run_workers`), and `WarmUnavailable` (a worker that cannot start, a slot in use)
makes `run_workers` fall back to a cold launch.

Draining: a worker writes a finished job's staged checkpoint in the background while it takes
the next job (see `saturn.runtime.warm_worker`). The pool follows each drain from the worker's
"draining"/"drained" reports: `drain_state(path)` is "draining", "durable" or "lost" (the worker
died, or the write failed). A worker that must be replaced while it drains is retired instead of
killed: it finishes its drains and exits, and a fresh worker takes the slot meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from typing import Any, Optional, Sequence

from saturn.runtime import launch
from saturn.runtime.causes import MemoryWatch
from saturn.runtime.process import with_repo_on_path
from saturn.runtime.routing import current_env
from saturn.runtime.warm_handle import PRELOAD_ENV, Exited, Spawner, WarmUnavailable, WarmWorker
from saturn.runtime.worker import write_payload

log = logging.getLogger(__name__)
_MIB = 2**20


_shared: Optional["WarmPool"] = None
_shared_lock = threading.Lock()


def shared_pool(device_type: str = "auto", preload: Sequence[str] = ()) -> "WarmPool":
    """The process-wide pool (profiler trials and executor jobs share it, so workers warmed by
    `saturn profile` run the jobs of `saturn run` in the same process). Shut down at exit."""
    global _shared
    with _shared_lock:
        dtype = launch.resolve_device_type(device_type)
        if _shared is None or _shared.closed or _shared.device_type != dtype:
            if _shared is not None:
                _shared.shutdown()
            _shared = WarmPool(dtype, preload=preload)
        return _shared


def warm_enabled(default: bool = True) -> bool:
    """SATURN_WARM=0 forces cold launches everywhere (debugging, or a library that leaks)."""
    from saturn.env import warm

    v = warm()
    return default if v is None else v


# --------------------------------------------------------------------------------- the pool
class WarmPool:
    """Warm workers by slot for one device type ("cuda" | "cpu"; "auto" resolves now).

    env: extra environment for every worker (at start; per-job extras come with each job).
    start_timeout_s: how long a job waits for a (re)starting worker before launching cold.
    mem_tolerance_mb: memory a job may leave above the worker's baseline (taken after its first
        job, which loads the CUDA/cuBLAS/NCCL libraries for good) before the worker is replaced.
    max_jobs: replace a worker after that many jobs anyway (bounds slow leaks; 0 = never).
    drain_behind: a job's final checkpoint is written after it returns, while the worker takes
        the next job (its result says `durable: False`; see `drain_state`).
    preload: modules ("module", or "module:function" to call) every worker imports before it is
        ready, beyond torch: what the caller's jobs will import (the runtime knows no technique)."""

    def __init__(self, device_type: str = "auto", *, env: Optional[dict[str, str]] = None,
                 start_timeout_s: float = 300.0, mem_tolerance_mb: Optional[float] = None,
                 max_jobs: int = 200, drain_behind: bool = True, preload: Sequence[str] = ()):
        self.device_type = launch.resolve_device_type(device_type)
        self.env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.tolerance = float(mem_tolerance_mb if mem_tolerance_mb is not None else
                               (256 if self.device_type == "cuda" else 1024)) * _MIB
        self.max_jobs = max_jobs
        self.drain_behind = drain_behind  # False: a job's final save is durable when it returns
        self.preload = tuple(preload)
        self.closed = False
        self.replaced = 0  # workers killed and restarted (failures, leaks, hangs)
        self._workers: dict[int, WarmWorker] = {}
        self._retired: list[WarmWorker] = []  # replaced while draining: exit once drained
        self._drain_states: dict[str, dict] = {}  # checkpoint path -> {"state", "error", ...}
        self.drain_timeout_s = 3600.0  # at shutdown, how long draining workers are waited for
        self._lock = threading.Lock()
        self._spawner = Spawner()
        self._dir = tempfile.mkdtemp(prefix="saturn-warm-")

    # ------------------------------------------------------------------ workers by slot
    def _env(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        with_repo_on_path(env)
        env["PYTHONUNBUFFERED"] = "1"
        if self.preload:
            env[PRELOAD_ENV] = ",".join(self.preload)
        if self.device_type == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = str(slot)
        else:
            env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                       SATURN_TORCH_THREADS="1")
        env.update(self.env)
        return env

    def _spawn(self, slot: int) -> WarmWorker:
        w = WarmWorker(slot, self.device_type, self._env(slot),
                       os.path.join(self._dir, f"worker-{slot}.txt"), self._spawner)
        w.on_drain = self._on_drain
        self._workers[slot] = w
        return w

    def _on_drain(self, w: WarmWorker, msg: dict) -> None:
        state = "draining" if msg["event"] == "draining" else ("durable" if msg.get("ok") else "lost")
        self._drain_states[str(msg.get("path"))] = {
            "state": state, "slot": w.slot, "pid": w.pid, "error": msg.get("error", ""),
            "drain_s": msg.get("drain_s"), "t": time.time()}

    def drain_state(self, path: str) -> Optional[dict]:
        """How the background write of checkpoint `path` goes: {"state": "draining" | "durable" |
        "lost", "error", "drain_s", "slot", "pid"}, or None if no worker of this pool staged it."""
        st = self._drain_states.get(str(path))
        return dict(st) if st is not None else None

    def wait_drained(self, ckpt_dir: Optional[str], timeout_s: float = 3600.0) -> None:
        """Block while a worker still writes a checkpoint of `ckpt_dir` (a job must not start
        from an older checkpoint than the one its previous attempt is publishing)."""
        if not ckpt_dir:
            return
        d = os.path.normpath(str(ckpt_dir))
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and any(os.path.normpath(os.path.dirname(p)) == d
                                             for p in self.draining()):
            time.sleep(0.02)

    def draining(self) -> list[str]:
        """Checkpoint paths being written by this pool's workers now."""
        return sorted(p for p, st in self._drain_states.items() if st["state"] == "draining")

    def prestart(self, slots: list[int]) -> None:
        """Start workers for these slots now (they warm up in the background)."""
        with self._lock:
            for s in slots:
                if s not in self._workers or not self._workers[s].alive():
                    self._spawn(s)

    def pids(self) -> dict[int, int]:
        with self._lock:
            return {s: w.pid for s, w in self._workers.items() if w.alive()}

    def _acquire(self, slots: list[int]) -> list[WarmWorker]:
        if self.closed:
            raise WarmUnavailable("the warm pool was shut down")
        with self._lock:
            if any(self._workers.get(s) is not None and self._workers[s].busy for s in slots):
                raise WarmUnavailable(f"slots {slots}: a warm worker is busy with another job")
            ws = []
            for s in slots:
                w = self._workers.get(s)
                if w is None or not w.alive():
                    w = self._spawn(s)
                w.busy = True
                ws.append(w)
        try:
            for w in ws:
                w.wait_ready(self.start_timeout_s)
        except WarmUnavailable:
            self._release(ws, [False] * len(ws))
            raise
        return ws

    def start_times(self) -> list[float]:
        """Measured spawn -> ready seconds of this pool's current workers."""
        with self._lock:
            return [w.start_s for w in self._workers.values() if w.start_s is not None]

    def worker_starts(self, slots: list[int]) -> dict[int, Optional[float]]:
        """Per slot: 0 when its worker is up, else the seconds it still needs to start (from the
        start time measured on this pool's earlier workers; None when none has started yet).
        Starts the missing workers (in parallel, in the background)."""
        self.prestart(slots)
        with self._lock:
            measured = [w.start_s for w in self._workers.values() if w.start_s is not None]
            typical = max(measured) if measured else None
            out: dict[int, Optional[float]] = {}
            for s in slots:
                w = self._workers.get(s)
                if w is not None and w.ready is not None:
                    out[s] = 0.0
                elif w is not None and not w.ready and not w.replies.empty():
                    out[s] = 0.0  # its ready message is in: it is up
                else:
                    age = time.monotonic() - w.spawned_at if w is not None else 0.0
                    out[s] = None if typical is None else max(0.0, typical - age)
        return out

    def _release(self, ws: list[WarmWorker], keep: list[bool]) -> None:
        """Give workers back; the ones not kept are killed and started afresh (in the background)."""
        with self._lock:
            for w, k in zip(ws, keep):
                w.busy = False
                if k and w.alive() and not self.closed:
                    continue
                if w.alive() and w.draining and w.replied:
                    self._retire(w)  # idle but writing a checkpoint: let it finish, then exit
                else:
                    w.kill()
                if self._workers.get(w.slot) is w:
                    del self._workers[w.slot]
                    if not self.closed:
                        self.replaced += 1
                        self._spawn(w.slot)

    def _retire(self, w: WarmWorker) -> None:
        """Ask an idle worker to exit once its drains are written (it replies to nothing more);
        a reaper kills it if it is still there after `drain_timeout_s`."""
        with contextlib.suppress(OSError, ValueError):
            w.send({"op": "exit"})
        self._retired.append(w)

        def reap() -> None:
            end = time.monotonic() + self.drain_timeout_s
            while w.alive() and time.monotonic() < end:
                time.sleep(0.1)
            w.kill()

        threading.Thread(target=reap, name=f"warm-{w.slot}-retire", daemon=True).start()

    def _tolerance(self, key: str) -> float:
        """GPU memory must come back within `tolerance`; host RSS of a GPU worker gets at least
        2 GiB (allocator caches and library state; leaks there are bounded by `max_jobs`)."""
        if key == "rss" and self.device_type == "cuda":
            return max(self.tolerance, 2048 * _MIB)
        return self.tolerance

    def _clean(self, w: WarmWorker, mem: dict[str, float]) -> bool:
        """Memory back at the baseline? The first job settles the baseline (lazy library loads)."""
        w.jobs += 1
        if mem.get("dirty") or not mem:
            return False
        if w.jobs == 1:
            settled = {k: v for k, v in mem.items() if v <= w.baseline.get(k, v) + 8 * self.tolerance}
            if len(settled) < len(mem):
                return False
            w.baseline = {k: max(v, w.baseline.get(k, v)) for k, v in mem.items()}
            return True
        grown = {k: (v - w.baseline.get(k, v)) / _MIB for k, v in mem.items()
                 if v > w.baseline.get(k, v) + self._tolerance(k)}
        if grown:
            log.warning("warm worker %d (slot %d): memory not back to baseline after a job (+%s MiB); "
                        "replacing it", w.pid, w.slot, {k: round(v) for k, v in grown.items()})
        return not grown and not (self.max_jobs and w.jobs >= self.max_jobs)

    # -------------------------------------------------------------------------- one job
    def run(self, target: str, payload: dict[str, Any], devices: list[int], *, timeout_s: float = 600.0,
            log_path: Optional[str] = None, env: Optional[dict[str, str]] = None, grace_s: float = 60.0,
            stop_event: Optional[threading.Event] = None,
            abort_event: Optional[threading.Event] = None) -> dict[str, Any]:
        """Like `launch.run_workers`, on the warm workers of `devices` (rank r on devices[r])."""
        start = time.time()
        self.wait_drained(payload.get("checkpoint_dir"), timeout_s)  # resume from what is durable
        t_acquire = time.monotonic()
        ws = self._acquire([int(d) for d in devices])
        worker_start_s = time.monotonic() - t_acquire  # > 0 when a worker had to start (cold)
        rundir = tempfile.mkdtemp(prefix="saturn-job-", dir=self._dir)
        keep = [False] * len(ws)
        for w in ws:
            w.replied = False
        try:
            write_payload(rundir, target, payload)
            port = launch.free_port()
            for rank, w in enumerate(ws):
                w.send({"rundir": rundir, "rank": rank, "world": len(ws), "port": port,
                        "env": {**current_env(), **(env or {})}, "launch_time": start,
                        "drain_behind": self.drain_behind})
            watch = MemoryWatch([w.pid for w in ws])
            outcome, culprit, codes, mems = self._supervise(ws, timeout_s, grace_s, stop_event, abort_event,
                                                            watch)
            if outcome in ("done", "interrupted") and all(c == 0 for c in codes):
                keep = [self._clean(w, m) for w, m in zip(ws, mems)]  # a graceful stop keeps them too
            procs = [Exited(c) for c in codes]
            result = launch.collect(rundir, procs, outcome, culprit, watch)
            result["worker_start_s"] = round(worker_start_s, 4)
            if log_path:
                launch.write_log(rundir, len(ws), log_path)
            return result
        finally:
            self._release(ws, keep)
            shutil.rmtree(rundir, ignore_errors=True)

    def _supervise(self, ws: list[WarmWorker], timeout_s: float, grace_s: float,
                   stop_event: Optional[threading.Event], abort_event: Optional[threading.Event],
                   watch: MemoryWatch) -> tuple[str, int, list[Optional[int]], list[dict]]:
        """Wait for every rank's reply: (outcome, culprit rank, exit-code-like codes, memories).
        Codes as the cold launcher's: 0 job ok, 1 job failed, <0 killed/died, None still running."""
        n = len(ws)
        codes: list[Optional[int]] = [None] * n
        mems: list[dict] = [{} for _ in range(n)]
        deadline = time.monotonic() + timeout_s
        first_bad: Optional[int] = None
        bad_since = stop_since = None
        with launch.Signals() as sigs:
            while any(c is None for c in codes):
                watch.sample()
                for r, w in enumerate(ws):
                    if codes[r] is not None:
                        continue
                    try:
                        msg = w.replies.get_nowait()
                    except queue.Empty:
                        msg = None
                    if msg is not None and msg.get("event") == "done":
                        w.replied = True
                        codes[r], mems[r] = (0 if msg.get("ok") else 1), dict(msg.get("mem") or {})
                        if msg.get("dirty"):
                            mems[r]["dirty"] = float("inf")  # never back to baseline: replaced
                    elif msg is not None and msg.get("event") == "eof" or not w.alive():
                        code = w.reap()  # it died: how (never a timeout of ours, see reap)
                        codes[r] = code if code not in (None, 0) else -signal.SIGKILL
                    if codes[r] not in (None, 0) and first_bad is None:
                        first_bad, bad_since = r, time.monotonic()
                now = time.monotonic()
                stopping = sigs.received is not None or (stop_event is not None and stop_event.is_set())
                if stopping and stop_since is None:
                    stop_since = now
                    for w, c in zip(ws, codes):
                        if c is None:
                            w.signal(signal.SIGTERM)
                aborted = abort_event is not None and abort_event.is_set()
                late = (bad_since is not None and now - bad_since > min(grace_s, 5.0)) or now > deadline \
                    or (stop_since is not None and now - stop_since > grace_s) or aborted
                if late and any(c is None for c in codes):
                    for r, w in enumerate(ws):  # peers hang in a collective: kill, they are replaced
                        if codes[r] is None:
                            w.kill()
                            codes[r] = -signal.SIGKILL
                    break
                time.sleep(0.01)
        if first_bad is not None:
            return "failed", first_bad, codes, mems
        if stop_since is not None or (abort_event is not None and abort_event.is_set()):
            return "interrupted", 0, codes, mems
        if any(c != 0 for c in codes):
            return "timeout", 0, codes, mems
        return "done", 0, codes, mems

    def shutdown(self) -> None:
        """Stop every worker: an exit command (a draining worker first writes its checkpoints,
        waited for up to `drain_timeout_s`), then SIGKILL for the ones still busy."""
        with self._lock:
            self.closed = True
            ws, self._workers = list(self._workers.values()), {}
            ws += self._retired
            self._retired = []
        for w in ws:
            if not w.busy:
                with contextlib.suppress(OSError, ValueError):
                    w.send({"op": "exit"})
        end = time.monotonic() + 2.0
        for w in ws:
            drain_end = time.monotonic() + self.drain_timeout_s
            while w.alive() and (time.monotonic() < end or (w.draining and not w.busy
                                                             and time.monotonic() < drain_end)):
                time.sleep(0.02)
            w.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "WarmPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def _shutdown_shared() -> None:
    if _shared is not None:
        _shared.shutdown()


import atexit  # noqa: E402 - registered once the pool class exists

atexit.register(_shutdown_shared)
