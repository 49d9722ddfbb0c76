"""Jobs run on this machine: `ProcessBackend` (see `base.Backend`).

Each attempt is `python -m saturn.runtime.job_runner SPEC.json ENTRY`, a child process in its own
session that calls the technique's `run()` on exactly the assigned devices (`runner.run_attempt`)
and reports progress (JSONL, one line per checkpoint) and its `RunResult` (JSON) in the job's
directory. SIGTERM to it = checkpoint and exit ("interrupted"); it dies with the executor
(PDEATHSIG), and so do its workers. Warm (the default; `warm=False` or SATURN_WARM=0 for cold): an
attempt of a technique that trains through `launch.run_workers` runs the same runner code in a
thread (`saturn.runtime.job_runner.WarmAttempt`) on the long-lived workers of a
`saturn.runtime.warm` pool, so it does not pay interpreter, imports and CUDA context again; a
failed, hung or leaking worker is replaced by the pool, and the attempt ends as "failed" like a
cold one.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

from saturn.executor.backends.attempts import attempt_for
from saturn.executor.backends.base import BackendEvent, with_log_context
from saturn.executor.backends.runner import ENTRY as RUNNER_ENTRY
from saturn.executor.backends.runner import is_warm_capable, run_attempt
from saturn.executor.state import JobState
from saturn.runtime.attempt import Attempt, RunResult
from saturn.runtime.job_runner import WarmAttempt, kill_session, spawn_runner, stop_attempt
from saturn.runtime.process import log_tail
from saturn.runtime.warm import warm_enabled


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


class ProcessBackend(WallClock):
    """Runs every attempt as a child process (`saturn.runtime.job_runner`) on local devices.

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
            from saturn.runtime.warm import shared_pool
            from saturn.techniques.registry import WARM_PRELOAD

            self._pool = shared_pool(self.device_type, preload=WARM_PRELOAD)
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
        from saturn.runtime.staging import budget_bytes

        return {"warm": True, "drains_behind": pool.drain_behind,
                "worker_starts": {(node, int(s)): v for s, v in starts.items()},
                "worker_start_s": max(measured) if measured else None,
                "staging_budget_gb": budget_bytes() / 1e9, "node_gpus": len(slots)}

    def _attempt(self, job: JobState, assignment: dict, start_step: int, attempt: int) -> Attempt:
        d = self.job_dir(job.name)
        d.mkdir(parents=True, exist_ok=True)
        att = attempt_for(job, assignment, start_step, attempt, files_dir=str(d), checkpoint_dir=str(d / "ckpt"),
                          device_type=self.device_type, checkpoint_every=self.checkpoint_every,
                          grace_s=self.grace_s)
        Path(att.result_path).unlink(missing_ok=True)
        return att

    def _follow(self, popen: Any, att: Attempt, owned: bool = True) -> None:
        """Poll `att`'s progress and result from now on (progress lines written before are old)."""
        prog = Path(att.progress_path)
        self.procs[att.name] = _Proc(popen, att.name, att.attempt, Path(att.result_path).parent, prog,
                                     Path(att.result_path), prog.stat().st_size if prog.exists() else 0,
                                     att.job if owned else None, att.end_step if owned else None)

    def launch(self, job: JobState, assignment: dict, start_step: int, attempt: int) -> Optional[int]:
        att = self._attempt(job, assignment, start_step, attempt)
        d = self.job_dir(job.name)
        spec_path = d / f"attempt-{attempt}.json"
        att.write(spec_path)
        if self.warm and is_warm_capable(att.technique):
            h = WarmAttempt(partial(run_attempt, att, runner_log=str(d / "runner.txt")), self.pool(),
                            self.extra_env, name=f"attempt-{attempt}")
            self._follow(h, att)
            return None  # no runner process: the attempt's workers are the pool's (they die with us)
        p = spawn_runner(spec_path, d / "runner.txt", self.extra_env, RUNNER_ENTRY)
        self._follow(p, att)
        return p.pid

    def launch_group(self, group: str, members: list[JobState], assignment: dict) -> int:
        """Start a SHARP group's runner process (`saturn.sharp.runner.run_group_attempt`) and follow
        it once per member (per-job polling, stopping and result reading then apply unchanged).
        A fused group (`saturn.fused.runner.run_fused_attempt`) is followed per member through its
        own handle (`saturn.fused.attempt.MemberAttempt`): a member finishes when its result file
        appears and stops alone (its leave file), while the group trains on."""
        from saturn.fused.attempt import MemberAttempt, leave_path
        from saturn.fused.grouping import is_group as is_fused

        fused = is_fused(group)
        atts = [self._attempt(js, assignment, js.committed_step, js.attempts) for js in members]
        specs = [a.to_dict() for a in atts]
        if fused:
            for m in specs:
                m["leave_path"] = leave_path(m["result_path"], m["attempt"])
                Path(m["leave_path"]).unlink(missing_ok=True)
        spec = {"group": group, "kind": "fused" if fused else "sharp", "members": specs,
                "knobs": assignment.get("knobs") or {},
                "gpus": [int(g) for g in assignment["gpus"]], "device_type": self.device_type,
                "checkpoint_every": self.checkpoint_every, "grace_s": self.grace_s}
        first = self.job_dir(members[0].name)
        spec_path = first / f"group-attempt-{members[0].attempts}.json"
        tmp = spec_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec, indent=1))
        os.replace(tmp, spec_path)
        p = spawn_runner(spec_path, first / "runner.txt", self.extra_env, RUNNER_ENTRY)
        for att, m in zip(atts, specs):
            self._follow(MemberAttempt(p, att.result_path, m["leave_path"]) if fused else p, att, owned=False)
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
        res = RunResult.read(pr.result_path)
        if res is None:  # the runner itself died (killed): fall back to the newest checkpoint
            step, ckpt = latest_checkpoint_step(pr.job_dir / "ckpt", pr.spec, pr.total_steps)
            return BackendEvent("finished", pr.job, now, step=step if step is not None else -1,
                                status="failed", checkpoint=ckpt,
                                reason=f"job runner exited with code {code}: " + log_tail(pr.job_dir / "log.txt", 800)
                                + log_tail(pr.job_dir / "runner.txt", 800))
        if res.status in ("failed", "oom", "host_oom"):
            res.reason = with_log_context(res.reason, log_tail(pr.job_dir / "log.txt", 1500))
        return BackendEvent.finished(pr.job, now, res)

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


def latest_checkpoint_step(ckpt_dir: Path, job: Optional[dict] = None,
                           total_steps: Optional[int] = None) -> tuple[Optional[int], Optional[str]]:
    """(step, path) of the newest complete checkpoint in `ckpt_dir`, or (None, None); with `job`
    (its spec dict) only one of that job's, within `total_steps` (saturn.training.catalog.Owner)."""
    try:
        from saturn.training.catalog import Owner, latest_checkpoint, read_meta
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
