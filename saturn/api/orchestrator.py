"""The online orchestrator: submit jobs at any time; Saturn plans and executes them together.

`Orchestrator` = `JobIntake` (saturn.api.intake: submit/cancel, profile rows, the command queue)
+ `ExecutorThread` (saturn.api.executor_thread: the background loop stepping the executor) + the
read side here (reports, futures, wait, shutdown). Its executor comes from the same builder as
`saturn run` (saturn.executor.build), so a Ray cluster runs its jobs on Ray here too.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import pandas as pd

from saturn.api.executor_thread import ExecutorThread, Tap, paced_simulated_backend
from saturn.api.futures import JobFuture, JobReport, OrchestratorError
from saturn.api.intake import JobIntake
from saturn.executor import build, defaults
from saturn.executor.run_lock import check_not_locked

PathLike = Union[str, "os.PathLike[str]"]


class Orchestrator(JobIntake, ExecutorThread):
    """An online Saturn run: submit jobs at any time; Saturn plans and executes them together.

    cluster: a Cluster (or anything `Cluster`-like; default: local devices). run_dir: where the
    journal, logs, metrics and checkpoints go (required for real backends). backend: "auto" (Ray
    actors for a `ray:` cluster, else local processes: see saturn.executor.build), "process",
    "ray", "simulate" (virtual clock paced at `sim_speed` virtual seconds per wall second, losses
    from `sim_loss(job, step)` with the submitted Job), or a Backend instance.
    profiles: a profile table (per job or store format) or a path; None = the profile store, and
    jobs it lacks are profiled on submit (`profile_missing`). interval_s: periodic re-plan
    interval; re-plans also happen on every submit, cancel and job end. batch_window_s: hold
    submissions until none arrived for this long, so that jobs submitted one by one in a burst
    (e.g. by Ray Tune trials starting) are planned together.
    objective: what re-planning minimizes; "mean_completion" by default (online and HPO users want
    early, steady results), or "makespan" / "weighted_completion" (job `weight`s): see
    saturn/planner/objectives.py. profile_in_background (default): a job whose signature the store
    lacks is submitted at once with labelled estimated rows (`JobReport.profile`) and measured in
    a background thread, progress on the "saturn.api" logger and `on_profile(event)`; the plan is
    redone when the measurement lands (saturn/api/background_profiling.py). profile_limits: what a
    study may measure: {"techniques": [...], "gpus": [...], "budget_min": minutes in total}.
    profiler: the measuring function (default saturn.api.stages.profile; a simulated orchestrator
    profiles only with one given). resume: continue the run in `run_dir` if it holds one (its jobs
    come back with futures and their metrics; running ones restart from their newest checkpoint),
    else start a new run there -- so a crashed HPO script can simply be started again.
    """

    def __init__(self, cluster: Any = None, *, run_dir: Optional[PathLike] = None,
                 backend: Union[str, Any] = "auto", interval_s: float = defaults.INTERVAL_S, profiles: Any = None,
                 profile_missing: bool = True, store_dir: Optional[PathLike] = None,
                 checkpoint_every: int = defaults.ONLINE_CHECKPOINT_EVERY,
                 time_limit_s: float = defaults.ONLINE_TIME_LIMIT_S, poll_s: float = 0.2,
                 max_retries: int = defaults.MAX_RETRIES, sim_speed: float = 10.0,
                 sim_loss: Optional[Callable[[Any, int], float]] = None, config: Any = None,
                 device_type: str = "auto", batch_window_s: float = 0.0, objective: str = "mean_completion",
                 resume: bool = False, profile_in_background: bool = True, profile_limits: Optional[dict] = None,
                 on_profile: Optional[Callable[[dict], None]] = None, profiler: Optional[Callable[..., Any]] = None):
        from saturn.planner.objectives import check_objective
        from saturn.ranges import check_args, check_path_arg
        from saturn.spec import Cluster

        check_args("Orchestrator", interval_s=interval_s, time_limit_s=time_limit_s, max_retries=max_retries,
                   sim_speed=sim_speed,  # checkpoint_every 0 (the online default) is "no periodic save"
                   checkpoint_every=None if checkpoint_every == 0 else checkpoint_every)
        for name, value in (("run_dir", run_dir), ("store_dir", store_dir)):
            check_path_arg("Orchestrator", name, value)
        check_path_arg("Orchestrator", "profiles", profiles, table=True)
        from saturn.env import check_environment

        check_environment()
        objective = check_objective(objective)
        if cluster is None:
            cluster = Cluster.local()
        elif isinstance(cluster, (str, dict)):
            cluster = Cluster.model_validate(cluster)
        self.cluster = build.resolve_cluster(cluster)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.poll_s = float(poll_s)
        self.profile_missing = profile_missing
        self.store_dir = store_dir
        self._profiles = self._read_profiles(profiles)
        self._sig_rows: dict[str, pd.DataFrame] = {}  # signature -> store rows (cache)
        self._sim_rows: dict[tuple[str, str, int], tuple[float, float]] = {}
        self._histories: dict[str, dict[int, float]] = {}
        self._futures: dict[str, JobFuture] = {}
        self._reports: dict[str, JobReport] = {}
        self._jobs: dict[str, Any] = {}
        self._cmds: "queue.Queue[tuple]" = queue.Queue()
        self._lock = threading.RLock()  # guards the executor (held by the loop during a step)
        self._flock = threading.Lock()  # guards the futures/reports maps (never held for long)
        self._closing = False
        self._cancel_on_close = False
        self._error: Optional[BaseException] = None
        self.simulated = False
        self.batch_window_s = float(batch_window_s)
        self._held: list[tuple] = []  # submit commands held back by batch_window_s
        self._last_submit = 0.0
        self._profile_source: dict[str, str] = {}
        self._measured_shapes: dict[str, tuple] = {}
        self._early_measured: dict[str, tuple] = {}
        self._bg = None
        if profile_missing and profile_in_background and (profiler is not None or backend not in
                                                         ("simulate", "simulated", "sim")):
            from saturn.api.background_profiling import BackgroundProfiler

            self._bg = BackgroundProfiler(profiler or _store_profile, self._lookup_measured, self._measured,
                                          cluster=self.cluster, store_dir=store_dir, limits=profile_limits,
                                          on_profile=on_profile)

        if isinstance(backend, str):
            if backend in ("simulate", "simulated", "sim"):
                self.simulated = True
                be = paced_simulated_backend(self._sim_step_time, self._sim_startup, float(sim_speed),
                                              checkpoint_s=0.5)
                poll = 0.05
            elif backend in ("auto", "process", "ray"):
                if self.run_dir is None:
                    if resume:
                        raise OrchestratorError("resume=True needs the run_dir of the run to continue")
                    self.run_dir = build.default_run_dir("orchestrator")  # new each time: runs/orchestrator-<time>
                check_not_locked(self.run_dir)  # a live executor on it: refused, naming its pid
                if (self.run_dir / "journal.sqlite").exists() and not resume:
                    raise OrchestratorError(f"{self.run_dir} already holds a run; continue it with "
                                            "Orchestrator(..., resume=True) or pick another run_dir")
                be = None  # built by saturn.executor.build from the cluster (Ray for `ray:` clusters)
                poll = self.poll_s
            else:
                raise OrchestratorError(f"backend must be 'auto', 'process', 'ray', 'simulate' or a Backend, "
                                        f"not {backend!r}")
        else:
            be = backend
            poll = self.poll_s
        tap_loss = None
        if self.simulated and sim_loss is not None:
            tap_loss = lambda name, step: sim_loss(self._jobs[name], step)  # noqa: E731
        opts = build.RunOptions(run_dir=self.run_dir, backend=backend if isinstance(backend, str) else "auto",
                                interval_s=interval_s, time_limit_s=time_limit_s, poll_s=poll,
                                max_retries=max_retries, checkpoint_every=checkpoint_every, device_type=device_type)
        self._wait_s = poll
        empty = pd.DataFrame(columns=["job", "technique", "knobs", "gpus", "step_time_s", "startup_s", "feasible"])
        if resume and be is None and (self.run_dir / "journal.sqlite").exists():
            self._ex = self._resumed_executor(opts, config, tap_loss)
        else:
            if resume and be is not None and self.simulated:
                raise OrchestratorError("resume=True continues a real run; simulated runs are not resumable")
            self._ex = build.build_executor([], self.cluster, empty, options=opts, backend=be, config=config,
                                      wrap=lambda inner: Tap(inner, self._on_loss, tap_loss))
        if config is None:
            self._ex.cfg.objective = objective
        self.backend = self._ex.backend
        if resume:  # the jobs the run already finished: their futures are done before we return
            with self._lock:
                self._publish()
        self._thread = threading.Thread(target=self._loop, name="saturn-orchestrator", daemon=True)
        self._thread.start()


    def _resumed_executor(self, opts: "build.RunOptions", config: Any, tap_loss: Any) -> Any:
        """The executor continuing `run_dir` (see saturn.executor.build.resume_executor), with a
        future, a report and the metrics history of every job it knows."""
        from saturn.executor.build import resume_executor
        from saturn.spec import Job

        ex = resume_executor(self.run_dir, checkpoint_every=opts.checkpoint_every, device_type=opts.device_type,
                             config=config)
        ex.backend = Tap(ex.backend, self._on_loss, tap_loss)
        for name, js in ex.state.jobs.items():
            fut = JobFuture(self, name)
            fut._accepted = True
            self._futures[name] = fut
            self._histories[name] = _metrics_history(ex.job_dir(name) / "metrics.jsonl")
            self._reports[name] = JobReport(name, js.status, total_steps=int(js.info.total_steps))
            if js.info.spec:
                try:
                    self._jobs[name] = Job.model_validate(js.info.spec)
                except Exception:  # noqa: BLE001 - an older spec: reports still work without it
                    pass
        return ex

    def _lookup_measured(self, job: Any) -> pd.DataFrame:
        from saturn.profiles.store import load_store, lookup

        rows, _ = lookup([job], self.cluster, load_store(self.store_dir))
        return rows

    def report(self, job: Any) -> JobReport:
        """The job's running metrics: status, step, latest loss, all intermediate values so far."""
        name = str(getattr(job, "name", job))
        with self._flock:
            rep = self._reports.get(name)
        if rep is None:
            raise OrchestratorError(f"no job {name!r} was submitted")
        return rep

    def __contains__(self, job: Any) -> bool:
        """Whether a job of this name was submitted (names are unique while the job runs)."""
        return str(getattr(job, "name", job)) in self._futures

    @property
    def jobs(self) -> list[str]:
        """Names of every job submitted so far."""
        return list(self._futures)

    def future(self, job: Any) -> JobFuture:
        return self._futures[str(getattr(job, "name", job))]

    def wait(self, jobs: Optional[Iterable[Any]] = None, timeout: Optional[float] = None) -> dict[str, JobReport]:
        """Block until the given jobs (default: every job submitted so far) are done; returns their
        final reports. Raises TimeoutError after `timeout` seconds."""
        names = [str(getattr(j, "name", j)) for j in jobs] if jobs is not None else list(self._futures)
        end = None if timeout is None else time.monotonic() + timeout
        out = {}
        for n in names:
            left = None if end is None else max(0.0, end - time.monotonic())
            out[n] = self._futures[n].result(left)
        return out

    @property
    def results(self) -> dict[str, JobReport]:
        """Final reports of the jobs that are done."""
        with self._flock:
            return {n: f._result for n, f in self._futures.items() if f.done() and f._result is not None}

    @property
    def executor(self) -> Any:
        """The underlying `saturn.executor.Executor` (read it under `with orch.lock:`)."""
        return self._ex

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def shutdown(self, wait: bool = True, cancel_jobs: bool = False, timeout: Optional[float] = None) -> None:
        """Stop taking jobs; with `cancel_jobs`, cancel the unfinished ones; with `wait`, block until
        every job is done (cancelled jobs checkpoint first), then stop the loop and the backend."""
        if not self._closing:
            if cancel_jobs:
                for n, f in list(self._futures.items()):
                    if not f.done():
                        self._cmds.put(("cancel", n, "shutdown"))
            self._cmds.put(("close",))
            self._closing = True
        if wait:
            self._thread.join(timeout)
        if self._bg is not None and (not wait or not self._thread.is_alive()):
            self._bg.close()

    close = shutdown

    def __enter__(self) -> "Orchestrator":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown(wait=True, cancel_jobs=exc_type is not None)


def _store_profile(workload: Any, **kwargs: Any) -> Any:
    from saturn.api.stages import profile

    return profile(workload, **kwargs)


def _metrics_history(path: Path) -> dict[int, float]:
    """{steps done: loss} from a job's metrics.jsonl (torn last lines are skipped). The file keeps
    each step's 0-based index (saturn/executor/metrics.py); reports count steps done."""
    from saturn.parse import jsonl_records

    out: dict[int, float] = {}
    for rec in jsonl_records(path, required=("step", "loss"))[0]:  # damaged lines skipped
        try:
            out[int(rec["step"]) + 1] = float(rec["loss"])
        except (ValueError, TypeError):
            continue
    return out
