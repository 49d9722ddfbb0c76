"""Where jobs actually run: a `Backend` launches, polls and stops job attempts.

The executor loop is identical for both backends:
* `SimulatedBackend`: a virtual clock; a job progresses at (profiled step time x its noise factor),
  after its start-up; stops cost a checkpoint time; early stops, crashes and OOMs can be injected.
  Used by tests and by `scripts/bench_introspection.py`.
* `ProcessBackend`: each attempt is `python -m saturn.executor.job_runner SPEC.json`, a child
  process in its own session that calls the technique's `run()` on exactly the assigned devices and
  reports progress (JSONL, one line per checkpoint) and its `RunResult` (JSON) in the job's
  directory. SIGTERM to it = checkpoint and exit ("interrupted"); it dies with the executor
  (PDEATHSIG), and so do its workers. Warm (the default; `warm=False` or SATURN_WARM=0 for cold):
  an attempt of a technique that trains through `launch.run_workers` runs the same runner code in
  a thread (`job_runner.WarmAttempt`) on the long-lived workers of a `saturn.techniques.warm`
  pool, so it does not pay interpreter, imports and CUDA context again; a failed, hung or leaking
  worker is replaced by the pool, and the attempt ends as "failed" like a cold one.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

from saturn.executor.job_runner import WarmAttempt, is_warm_capable
from saturn.executor.state import JobState
from saturn.techniques.launch import log_tail
from saturn.techniques.warm import warm_enabled


@dataclass
class BackendEvent:
    """kind: "progress" (step, loss), "checkpoint" (step, checkpoint, loss), "finished"
    (status completed|interrupted|failed|oom, step, checkpoint, reason, losses; durable False:
    the checkpoint is still being written, a "durable" event follows) or "durable" (status
    durable|lost; step/checkpoint: the one to resume from when lost; drain_s)."""

    kind: str
    job: str
    t: float
    step: int = 0
    loss: Optional[float] = None
    status: Optional[str] = None
    checkpoint: Optional[str] = None
    reason: str = ""
    losses: list = field(default_factory=list)
    step_time_s: Optional[float] = None  # progress: the step's own time (metrics line), when reported
    durable: bool = True
    phases: dict = field(default_factory=dict)  # the attempt's measured phases (training.train)
    drain_s: Optional[float] = None


class Backend(Protocol):
    def now(self) -> float: ...

    def launch(self, job: JobState, assignment: dict, start_step: int, attempt: int) -> Optional[int]:
        """Start an attempt of `job` at `start_step`; returns a process id when there is one."""

    def poll(self) -> list[BackendEvent]: ...

    def stop(self, job: str) -> None:
        """Ask the attempt to checkpoint and exit (answered later by a "finished" event)."""

    def wait(self, timeout_s: float) -> None:
        """Block (or advance the virtual clock) until something may have happened."""

    def shutdown(self) -> None: ...


# ---------------------------------------------------------------------------------- simulation
@dataclass
class _SimJob:
    name: str
    launched: float
    start_step: int
    startup: float
    step_time: float
    target: int  # step at which it ends by itself (total, or an early stop)
    early: bool
    stop_at: Optional[float] = None  # stop requested: ends at stop_at + checkpoint
    crash_step: Optional[int] = None
    oom: bool = False
    last_ckpt: int = 0

    def step_at(self, t: float) -> int:
        if t < self.launched + self.startup:
            return self.start_step
        return min(self.target, self.start_step + int((t - self.launched - self.startup) / self.step_time + 1e-9))

    def natural_end(self) -> float:
        return self.launched + self.startup + (self.target - self.start_step) * self.step_time


class SimulatedBackend:
    """Jobs on a virtual clock.

    true_step_time: job -> {(technique, gpus): seconds per step} or a callable(job, technique,
        gpus, knobs) -> seconds; profile x noise in benchmarks.
    startup: callable(job, technique, gpus) -> seconds (default 0).
    stop_after: job -> step at which the job ends by itself (early stop, e.g. by HPO).
    crash_at: job -> step at which its first attempt crashes (a killed worker).
    oom: set of (job, technique, gpus) that fail with OOM shortly after start.
    checkpoint_s: seconds to checkpoint on a stop. checkpoint_every: periodic checkpoints (steps),
        which bound what a crash loses.
    """

    t: float  # the virtual clock (seconds); declared here for subclasses defined inside functions

    def __init__(self, step_time, *, startup=None, stop_after: Optional[dict] = None,
                 crash_at: Optional[dict] = None, oom: Optional[set] = None, checkpoint_s: float = 5.0,
                 checkpoint_every: int = 0, progress: bool = True, start_time: float = 0.0):
        self._step_time = step_time
        self._startup = startup or (lambda job, tech, g: 0.0)
        self.stop_after = dict(stop_after or {})
        self.crash_at = dict(crash_at or {})
        self.oom = set(oom or ())
        self.checkpoint_s = checkpoint_s
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.t = start_time
        self.jobs: dict[str, _SimJob] = {}
        self._reported: dict[str, int] = {}
        self.launches: list[tuple[float, str, str, int, int]] = []  # (t, job, technique, gpus, start)

    def now(self) -> float:
        return self.t

    def _true_step(self, job: str, tech: str, gpus: int, knobs: dict) -> float:
        st = self._step_time
        if callable(st):
            return float(st(job, tech, gpus, knobs))
        return float(st[job][(tech, gpus)])

    def launch(self, job: JobState, assignment: dict, start_step: int, attempt: int) -> Optional[int]:
        tech, g = assignment["technique"], len(assignment["gpus"])
        target = min(job.info.total_steps, self.stop_after.get(job.name, job.info.total_steps))
        crash = self.crash_at.pop(job.name, None)
        sj = _SimJob(job.name, self.t, start_step, float(self._startup(job.name, tech, g)),
                     self._true_step(job.name, tech, g, assignment.get("knobs") or {}), max(target, start_step),
                     target < job.info.total_steps,
                     crash_step=crash if crash is not None and crash > start_step else None,
                     oom=(job.name, tech, g) in self.oom, last_ckpt=start_step)
        self.jobs[job.name] = sj
        self._reported[job.name] = start_step
        self.launches.append((self.t, job.name, tech, g, start_step))
        return None

    def stop(self, job: str) -> None:
        sj = self.jobs.get(job)
        if sj is not None and sj.stop_at is None:
            sj.stop_at = self.t

    def _end(self, sj: _SimJob) -> tuple[float, str, int]:
        """(time, status, step) at which this attempt ends if nothing else happens."""
        if sj.oom:
            return sj.launched + sj.startup, "oom", sj.start_step
        ends = [(sj.natural_end(), "completed", sj.target)]
        if sj.crash_step is not None and sj.crash_step < sj.target:
            tc = sj.launched + sj.startup + (sj.crash_step - sj.start_step) * sj.step_time
            ends.append((tc, "failed", sj.crash_step))
        if sj.stop_at is not None:
            ends.append((sj.stop_at + self.checkpoint_s, "interrupted", sj.step_at(sj.stop_at)))
        return min(ends, key=lambda e: e[0])

    def next_event_time(self) -> float:
        return min((self._end(sj)[0] for sj in self.jobs.values()), default=math.inf)

    def wait(self, timeout_s: float) -> None:
        self.t = max(self.t, min(self.t + max(0.0, timeout_s), self.next_event_time()))

    def poll(self) -> list[BackendEvent]:
        out = []
        for name, sj in list(self.jobs.items()):
            end_t, status, step = self._end(sj)
            if end_t <= self.t + 1e-9:
                ckpt: Optional[str] = f"sim://{name}/step-{step}"
                if status == "failed":  # a crash keeps only the last periodic checkpoint
                    every = self.checkpoint_every
                    step = sj.start_step + ((step - sj.start_step) // every * every if every else 0)
                    ckpt = f"sim://{name}/step-{step}" if step > sj.start_step else None
                if status == "oom":
                    ckpt = None
                out.append(BackendEvent("finished", name, end_t, step=step, status=status, checkpoint=ckpt,
                                        reason=f"simulated {status}" if status in ("failed", "oom") else "",
                                        loss=_sim_loss(step) if status in ("completed", "interrupted") else None))
                del self.jobs[name]
                continue
            if self.progress:
                s = sj.step_at(min(self.t, sj.stop_at) if sj.stop_at is not None else self.t)
                if sj.crash_step is not None:
                    s = min(s, sj.crash_step)
                if s > self._reported.get(name, 0):
                    self._reported[name] = s
                    out.append(BackendEvent("progress", name, self.t, step=s, loss=_sim_loss(s)))
        return sorted(out, key=lambda e: e.t)

    def shutdown(self) -> None:
        pass


def _sim_loss(step: int) -> float:
    return 10.0 / math.sqrt(1.0 + step)


# ------------------------------------------------------------------------------- real processes
@dataclass
class _Proc:
    popen: Any  # subprocess.Popen of a cold runner, or a job_runner.WarmAttempt
    job: str
    attempt: int
    job_dir: Path
    progress_path: Path
    result_path: Path
    offset: int = 0
    spec: Optional[dict] = None  # the job's spec and length: whose checkpoints are its own
    total_steps: Optional[int] = None


class WallClock:
    """Backend time for real runs: seconds since the backend started plus the offset of a resumed
    run, so a journal's times stay on one axis across executor restarts."""

    run_dir: Path
    _t0: float
    _offset: float

    def now(self) -> float:
        return self._offset + time.monotonic() - self._t0

    def _from_wall(self, wall: float) -> float:
        return min(self.now(), self.now() - (time.time() - wall))

    def job_dir(self, job: str) -> Path:
        return self.run_dir / "jobs" / job


def spawn_runner(spec_path: Path, log_path: Path, extra_env: dict[str, str]) -> subprocess.Popen:
    """Start `python -m saturn.executor.job_runner SPEC` in its own session (so a stop reaches the
    whole attempt), its output appended to `log_path`, this checkout first on PYTHONPATH."""
    env = dict(os.environ, **extra_env)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "saturn.executor.job_runner", str(spec_path)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)


class ProcessBackend(WallClock):
    """Runs every attempt as a child process (`saturn.executor.job_runner`) on local devices.

    device_type: "auto" | "cuda" | "cpu" (CPU slots). checkpoint_every: periodic checkpoints in
    steps (progress is reported at each one; 0 = only at the end and on stop). clock_offset: run
    clock at start (resume)."""

    # stop() may be called from another thread than the executor's (Orchestrator.cancel while the
    # executor re-plans): it only signals the attempt (SIGTERM / a warm attempt's stop event)
    thread_safe_stop = True

    def __init__(self, run_dir: Path, *, device_type: str = "auto", checkpoint_every: int = 0,
                 clock_offset: float = 0.0, grace_s: float = 60.0, extra_env: Optional[dict] = None,
                 warm: Optional[bool] = None, pool: Any = None):
        self.run_dir = Path(run_dir)
        self.device_type = device_type
        self.checkpoint_every = checkpoint_every
        self.grace_s = grace_s
        self.extra_env = dict(extra_env or {})
        self._t0 = time.monotonic()
        self._offset = clock_offset
        self.procs: dict[str, _Proc] = {}
        self.finishing: dict[str, BackendEvent] = {}  # job -> its "finished" event, checkpoint draining
        self._pool = pool
        self.warm = bool(pool is not None or (warm if warm is not None else warm_enabled()))

    def pool(self) -> Any:
        """The warm pool (the process-wide one unless one was given), created on first use."""
        if self._pool is None:
            from saturn.techniques.warm import shared_pool

            self._pool = shared_pool(self.device_type)
        return self._pool

    def launch_facts(self, node: str, slots: list[int]) -> dict[str, Any]:
        """What a launch costs here, for the planner (`policy.LaunchFacts`): on warm workers, which
        devices' workers are still starting (they are started now, in parallel), and that final
        saves drain behind; cold: every launch starts its processes."""
        if not self.warm:
            return {"warm": False, "drains_behind": False}
        pool = self.pool()
        starts = pool.worker_starts([int(s) for s in slots])
        measured = [w for w in (getattr(pool, "start_times", lambda: [])()) if w]
        from saturn.techniques.staging import budget_bytes

        return {"warm": True, "drains_behind": pool.drain_behind,
                "worker_starts": {(node, int(s)): v for s, v in starts.items()},
                "worker_start_s": max(measured) if measured else None,
                "staging_budget_gb": budget_bytes() / 1e9, "node_gpus": len(slots)}

    def launch(self, job: JobState, assignment: dict, start_step: int, attempt: int) -> Optional[int]:
        if job.info.spec is None:
            raise ValueError(f"job {job.name}: no job spec to run (simulation-only job)")
        d = self.job_dir(job.name)
        d.mkdir(parents=True, exist_ok=True)
        spec = {
            "job": job.info.spec, "technique": assignment["technique"],
            "knobs": assignment.get("knobs") or {}, "gpus": [int(g) for g in assignment["gpus"]],
            "start_step": int(start_step), "num_steps": int(job.info.total_steps - start_step),
            "checkpoint_dir": str(d / "ckpt"), "device_type": self.device_type,
            "log_path": str(d / "log.txt"), "progress_path": str(d / "progress.jsonl"),
            "result_path": str(d / f"result-{attempt}.json"), "checkpoint_every": self.checkpoint_every,
            "attempt": attempt, "grace_s": self.grace_s,
        }
        spec_path = d / f"attempt-{attempt}.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        res = Path(spec["result_path"])
        if res.exists():
            res.unlink()
        prog = Path(spec["progress_path"])
        offset = prog.stat().st_size if prog.exists() else 0
        if self.warm and is_warm_capable(spec["technique"]):
            h = WarmAttempt(spec, self.pool(), self.extra_env, runner_log=str(d / "runner.txt"))
            self.procs[job.name] = _Proc(h, job.name, attempt, d, prog, res, offset, job.info.spec,
                                         job.info.total_steps)
            return None  # no runner process: the attempt's workers are the pool's (they die with us)
        p = spawn_runner(spec_path, d / "runner.txt", self.extra_env)
        self.procs[job.name] = _Proc(p, job.name, attempt, d, prog, res, offset, job.info.spec, job.info.total_steps)
        return p.pid

    def stop(self, job: str) -> None:
        pr = self.procs.get(job)
        if pr is not None:
            stop_attempt(pr.popen)

    def _tail(self, pr: _Proc) -> list[dict]:
        try:
            with open(pr.progress_path, "rb") as f:
                f.seek(pr.offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        pr.offset += end + 1
        out = []
        for line in data[: end + 1].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("attempt", pr.attempt) == pr.attempt:
                out.append(rec)
        return out

    def poll(self) -> list[BackendEvent]:
        out = []
        for name, pr in list(self.procs.items()):
            code = pr.popen.poll()
            for rec in self._tail(pr):
                t = self._from_wall(float(rec.get("wall", time.time())))
                kind = "checkpoint" if rec.get("checkpoint") else "progress"
                out.append(BackendEvent(kind, name, t, step=int(rec["step"]), loss=rec.get("loss"),
                                        checkpoint=rec.get("checkpoint"), step_time_s=_step_time(rec)))
            if code is None:
                continue
            for rec in self._tail(pr):  # lines written just before exit
                t = self._from_wall(float(rec.get("wall", time.time())))
                out.append(BackendEvent("checkpoint" if rec.get("checkpoint") else "progress", name, t,
                                        step=int(rec["step"]), loss=rec.get("loss"), checkpoint=rec.get("checkpoint"),
                                        step_time_s=_step_time(rec)))
            ev = self._result(pr, code)
            out.append(ev)
            if not ev.durable:
                self.finishing[name] = ev
            del self.procs[name]
        for name, fin in list(self.finishing.items()):
            done = self._drained(fin)
            if done is not None:
                out.append(done)
                del self.finishing[name]
        return out

    def _drained(self, fin: BackendEvent) -> Optional[BackendEvent]:
        """The "durable" event of a finishing job, once its warm worker reported the drain's end
        (or, without a report, once the checkpoint is published on disk); None while it drains."""
        path = str(fin.checkpoint)
        st = self._pool.drain_state(path) if self._pool is not None else None
        state = st["state"] if st is not None else None
        if state == "draining":
            return None
        step, newest = latest_checkpoint_step(Path(path).parent)
        if state is None:  # no report (not a pool's drain): the disk tells
            if newest is None or os.path.normpath(newest) != os.path.normpath(path):
                return None
            state = "durable"
        if state == "durable":
            drain = (st or {}).get("drain_s")
            return BackendEvent("durable", fin.job, self.now(), step=fin.step, status="durable",
                                checkpoint=path, drain_s=drain if drain is not None else self.now() - fin.t)
        why = (st or {}).get("error") or "its write failed"
        return BackendEvent("durable", fin.job, self.now(), step=step if step is not None else 0,
                            status="lost", checkpoint=newest,
                            reason=f"final checkpoint {path} was lost while being written ({why}); "
                                   f"the job resumes from {newest or 'the start'} (step {step or 0})")

    def _result(self, pr: _Proc, code: int) -> BackendEvent:
        now = self.now()
        try:
            res = json.loads(pr.result_path.read_text())
        except (OSError, ValueError):
            res = None
        if res is None:  # the runner itself died (killed): fall back to the newest checkpoint
            step, ckpt = latest_checkpoint_step(pr.job_dir / "ckpt", pr.spec, pr.total_steps)
            return BackendEvent("finished", pr.job, now, step=step if step is not None else -1,
                                status="failed", checkpoint=ckpt,
                                reason=f"job runner exited with code {code}: " + log_tail(pr.job_dir / "log.txt", 800)
                                + log_tail(pr.job_dir / "runner.txt", 800))
        losses = res.get("losses") or []
        reason = res.get("reason", "")
        if res.get("status") in ("failed", "oom"):
            reason = (reason + "\n" + log_tail(pr.job_dir / "log.txt", 1500)).strip()
        return BackendEvent("finished", pr.job, now, step=int(res.get("step", 0)), status=res.get("status", "failed"),
                            checkpoint=res.get("checkpoint"), reason=reason,
                            loss=float(losses[-1][1]) if losses else None, losses=losses,
                            durable=bool(res.get("durable", True)) or not res.get("checkpoint"),
                            phases=dict(res.get("phases") or {}))

    def wait(self, timeout_s: float) -> None:
        end = time.monotonic() + max(0.0, timeout_s)
        while time.monotonic() < end:
            if any(p.popen.poll() is not None for p in self.procs.values()):
                return
            if self._pool is not None and any(
                    (self._pool.drain_state(str(f.checkpoint)) or {}).get("state") in ("durable", "lost")
                    for f in self.finishing.values()):
                return  # a drain ended
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def shutdown(self) -> None:
        for pr in self.procs.values():
            kill_session(pr.popen)
        self.procs.clear()


def stop_attempt(handle: Any) -> None:
    """Graceful stop (checkpoint and exit): SIGTERM to a runner process, the stop event of a warm one."""
    if handle.poll() is not None:
        return
    if isinstance(handle, WarmAttempt) or getattr(handle, "stops_alone", False):  # warm, fused member
        handle.terminate()
        return
    try:
        os.kill(handle.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def kill_session(popen: Any) -> None:
    """SIGKILL a job runner and everything in its session (its workers), then reap it; a warm
    attempt's workers are killed (and replaced by the pool)."""
    if isinstance(popen, WarmAttempt):
        popen.kill()
        return
    if popen.poll() is None:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        popen.wait(timeout=10)


def latest_checkpoint_step(ckpt_dir: Path, job: Optional[dict] = None,
                           total_steps: Optional[int] = None) -> tuple[Optional[int], Optional[str]]:
    """(step, path) of the newest complete checkpoint in `ckpt_dir`, or (None, None); with `job`
    (its spec dict) only one of that job's, within `total_steps` (saturn.techniques.checkpoint.Owner)."""
    try:
        from saturn.techniques.checkpoint import Owner, latest_checkpoint, read_meta
    except ImportError:  # torch-less installs
        return None, None
    path = latest_checkpoint(str(ckpt_dir), Owner.of(job, total_steps) if job else None)
    if not path:
        return None, None
    return int(read_meta(path)["step"]), path


def _step_time(rec: dict) -> Optional[float]:
    """A per-step metrics line's own step time (training.train writes one per step)."""
    try:
        f = float(rec["step_time_s"])
    except (KeyError, TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None
