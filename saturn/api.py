"""Saturn's Python API: the CLI stages as functions, and an online `Orchestrator` for HPO.

    import saturn
    wl = saturn.load_workload("configs/examples/tiny-cpu.yaml")
    table = saturn.profile(wl)                     # = `saturn profile` (fills the profile store)
    p = saturn.plan(wl)                            # = `saturn plan`   -> saturn.planner.Plan
    results = saturn.run(wl, run_dir="runs/x")     # = `saturn run`    -> {job: JobResult}

    # online: HPO frameworks decide *what* to train, Saturn decides *how and when*
    with saturn.Orchestrator(wl.cluster, run_dir="runs/hpo") as orch:
        fut = orch.submit(saturn.Job(name="a", model="gpt2-tiny", batch_size=4, seq_len=16, steps=50))
        orch.report("a")            # JobReport: status, step, loss, metrics [(step, loss)], ...
        fut.metrics()               # intermediate values so far
        orch.cancel("a")            # frees its GPUs; the executor re-plans the rest
        fut.result(timeout=600)     # JobReport with the final loss, checkpoint, metrics path

The orchestrator runs the (synchronous) introspective executor in a background thread: `submit`
and `cancel` only enqueue commands that the loop thread applies between executor steps, so a batch
submitted together (`submit_many`, or several `submit` calls between two steps) is planned
together. Reads (`report`, futures) see snapshots the loop publishes after every step.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import pandas as pd

from saturn.errors import SaturnError

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["JobFuture", "JobReport", "Orchestrator", "OrchestratorError", "plan", "profile", "run",
           "synthetic_profiles"]


class OrchestratorError(SaturnError):
    """The orchestrator cannot take this request (closed, unknown job, no profiles...)."""


# ------------------------------------------------------------------------------ stage functions
def _workload(workload: Any) -> Any:
    from saturn.spec import Workload, load_workload

    if isinstance(workload, Workload):
        return workload
    return load_workload(workload)


def _with_path(wl: Any, path: Any) -> Any:
    if isinstance(path, (str, os.PathLike)) and "\n" not in str(path):
        try:
            object.__setattr__(wl, "path", str(path))
        except Exception:  # noqa: BLE001 - cosmetic (error messages quote the path)
            pass
    return wl


def profile(workload: Any, **kwargs: Any) -> pd.DataFrame:
    """Measure the workload's options into the profile store (= `saturn profile W.yaml`).

    `workload`: a Workload, a YAML path or YAML text. kwargs go to `saturn.profiler.profile`
    (store_dir, budget_min, force, progress=False, ...). Returns one row per (job, option)."""
    from saturn.profiler import profile as _profile

    kwargs.setdefault("progress", False)
    return _profile(_workload(workload), **kwargs)


def profiles_table(workload: Any, profiles: Any = None, *, allow_profiling: bool = False,
                   store_dir: Optional[PathLike] = None) -> pd.DataFrame:
    """The planner's per-job table (with a `job` column) for `workload`.

    profiles: None (the profile store), a path to a CSV/parquet, or a DataFrame, either per job
    (a `job` column) or in store format (matched by profile signature). With `allow_profiling`,
    jobs the store lacks are profiled first."""
    from saturn.errors import MissingProfilesError
    from saturn.profiles.store import load_store, profiles_for, read_table

    wl = workload
    if profiles is not None:
        table = profiles if isinstance(profiles, pd.DataFrame) else read_table(profiles)
        if "job" in table.columns:
            return table
        source = "the given table" if isinstance(profiles, pd.DataFrame) else str(profiles)
        return profiles_for(wl, table, source=source)
    try:
        return profiles_for(wl, load_store(store_dir))
    except MissingProfilesError:
        if not allow_profiling:
            raise
    profile(wl, store_dir=store_dir)
    return profiles_for(wl, load_store(store_dir))


def plan(workload: Any, profiles: Any = None, *, time_limit_s: float = 30.0, **kwargs: Any) -> Any:
    """Choose technique, GPUs and start time for every job (= `saturn plan W.yaml`).

    profiles: as in `profiles_table` (default: the store; missing profiles raise
    MissingProfilesError with the `saturn profile` command to run). kwargs go to
    `saturn.planner.plan` (mip_gap, warm_start, threads). Returns a `saturn.planner.Plan`."""
    from saturn.planner import plan as _plan

    wl = _with_path(_workload(workload), workload)
    table = profiles_table(wl, profiles)
    return _plan(wl.jobs, wl.cluster.resolved(), table, time_limit_s=time_limit_s, **kwargs)


def run(workload: Any, *, profiles: Any = None, run_dir: Optional[PathLike] = None, simulate: bool = False,
        interval_s: float = 60.0, introspect: bool = True, plan: Any = None, time_limit_s: float = 10.0,
        max_retries: int = 2, checkpoint_every: int = 200, noise: float = 0.15, seed: int = 0,
        device_type: str = "auto", live: bool = False) -> dict:
    """Profile what is missing, plan and execute introspectively (= `saturn run W.yaml`).

    Blocks until every job is done; returns {job: JobResult(status, steps, final_loss,
    checkpoint, metrics_path, reason)}. `simulate=True` runs on a virtual clock at profiled speed
    x log-normal noise (no training). `plan`: a Plan / plan dict / JSON path to start from."""
    from saturn.cli.run import _default_run_dir, simulated_backend
    from saturn.executor import Executor, ExecutorConfig, ProcessBackend

    wl = _with_path(_workload(workload), workload)
    cluster = wl.cluster.resolved()
    table = profiles_table(wl, profiles, allow_profiling=not simulate)
    run_dir = Path(run_dir) if run_dir is not None else _default_run_dir(wl.name)
    if (run_dir / "journal.sqlite").exists():
        raise SaturnError(f"{run_dir} already holds a run; continue it with `saturn run --resume {run_dir}`")
    if isinstance(plan, (str, os.PathLike)):
        from saturn.planner import Plan

        plan = Plan.from_json(plan)
    cfg = ExecutorConfig(interval_s=interval_s, introspect=introspect, max_retries=max_retries,
                         time_limit_s=time_limit_s, poll_s=math.inf if simulate else 0.5)
    if simulate:
        backend = simulated_backend(table, noise=noise, seed=seed)
    else:
        backend = ProcessBackend(run_dir, device_type="cpu" if cluster.is_cpu else device_type,
                                 checkpoint_every=checkpoint_every)
    display = None
    if live and not simulate:
        from saturn.cli.common import console
        from saturn.executor.display import LiveDisplay

        display = LiveDisplay(console)
    ex = Executor(wl.jobs, cluster, table, backend, run_dir=run_dir, config=cfg, plan=plan, display=display)
    try:
        if display is not None:
            with display:
                return ex.run_until_done()
        return ex.run_until_done()
    finally:
        backend.shutdown()


def synthetic_profiles(jobs: Iterable[Any], *, step_time_s: float = 0.05, startup_s: float = 1.0,
                       gpus: Iterable[int] = (1,), technique: str = "ddp", gpu_type: str = "cpu",
                       scaling: float = 0.8) -> pd.DataFrame:
    """A store-format profile table (keyed by signature) with made-up numbers, for demos, tests and
    the simulate backend: `step_time_s` on one GPU, `scaling` efficiency per doubling beyond it."""
    rows, seen = [], set()
    for j in jobs:
        sig = str(j.signature)
        for g in gpus:
            if (sig, g) in seen:
                continue
            seen.add((sig, g))
            st = step_time_s / (g * scaling ** math.log2(g)) if g > 1 else step_time_s
            rows.append({"signature": sig, "technique": technique, "knobs": "{}", "gpus": int(g),
                         "step_time_s": st, "peak_mem_gb": 0.0, "startup_s": startup_s, "feasible": True,
                         "reason": "", "gpu_type": gpu_type, "gpu_memory_gb": 4.0, "source": "synthetic"})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ job reports
@dataclass(frozen=True)
class JobReport:
    """A job's state as the orchestrator last saw it (running metrics, or its final result).

    status: pending | running | stopping | completed | failed | cancelled. step: steps done
    (live while running). loss: the latest loss (the final loss once completed). metrics:
    [(step, loss)] intermediate values, step = steps done when the loss was measured."""

    name: str
    status: str
    step: int = 0
    total_steps: int = 0
    loss: Optional[float] = None
    metrics: tuple = ()
    technique: Optional[str] = None
    gpus: tuple = ()
    node: Optional[str] = None
    attempts: int = 0
    checkpoint: Optional[str] = None
    metrics_path: Optional[str] = None
    reason: str = ""
    early_stopped: bool = False

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    @property
    def final_loss(self) -> Optional[float]:
        return self.loss

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["metrics"], d["gpus"] = [list(m) for m in self.metrics], list(self.gpus)
        return d


class JobFuture:
    """Handle of a submitted job: `result(timeout)`, `done()`, `metrics()`, `report()`, `cancel()`.

    `result()` returns the final `JobReport` whatever the status (check `.status`); it raises
    TimeoutError only if the job is not done within `timeout` seconds."""

    def __init__(self, orchestrator: "Orchestrator", name: str):
        self._orch = orchestrator
        self.name = name
        self._done = threading.Event()
        self._result: Optional[JobReport] = None
        self._callbacks: list[Callable[["JobFuture"], None]] = []
        self._lock = threading.Lock()
        self._accepted = False  # the executor has the job (set by the orchestrator's loop)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: Optional[float] = None) -> JobReport:
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.name!r} not done after {timeout} s")
        assert self._result is not None
        return self._result

    def report(self) -> JobReport:
        return self._result if self._result is not None else self._orch.report(self.name)

    def metrics(self) -> list[tuple[int, float]]:
        """Intermediate values so far: [(step, loss)]."""
        return list(self.report().metrics)

    def cancel(self) -> bool:
        """Ask Saturn to stop the job (it checkpoints and its GPUs are re-planned). False if done."""
        if self.done():
            return False
        self._orch.cancel(self.name)
        return True

    def add_done_callback(self, fn: Callable[["JobFuture"], None]) -> None:
        """Call fn(future) when the job is done (on the orchestrator thread: keep it short)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _set(self, rep: JobReport) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._result = rep
            self._done.set()
            cbs, self._callbacks = self._callbacks, []
        for fn in cbs:
            try:
                fn(self)
            except Exception:  # noqa: BLE001 - a callback must not kill the loop
                log.exception("done callback of job %s failed", self.name)

    def __repr__(self) -> str:
        state = self._result.status if self._result is not None else "running"
        return f"<JobFuture {self.name} {state}>"


# ------------------------------------------------------------------------------ backends
class _Tap:
    """Wraps a backend: records every progress/finished loss per job (the executor's state only
    keeps the latest), optionally rewriting simulated losses."""

    def __init__(self, inner: Any, on_loss: Callable[[str, int, float], None],
                 sim_loss: Optional[Callable[[str, int], float]] = None):
        self._inner = inner
        self._on_loss = on_loss
        self._sim_loss = sim_loss

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def poll(self) -> list:
        evs = self._inner.poll()
        for ev in evs:
            if self._sim_loss is not None and ev.loss is not None:
                ev.loss = float(self._sim_loss(ev.job, int(ev.step)))
            if ev.kind in ("progress", "checkpoint") and ev.loss is not None:
                self._on_loss(ev.job, int(ev.step), float(ev.loss))
            elif ev.kind == "finished":
                for s, loss in ev.losses or []:  # [(step index, loss)]: steps done = index + 1
                    self._on_loss(ev.job, int(s) + 1, float(loss))
                if not ev.losses and ev.loss is not None and ev.step and ev.step > 0:
                    self._on_loss(ev.job, int(ev.step), float(ev.loss))
        return evs


def _paced_simulated_backend(step_time: Callable, startup: Callable, speed: float, **kw: Any) -> Any:
    """A SimulatedBackend whose virtual clock follows the wall clock x `speed`, so that a client
    polling in real time (an HPO loop) sees jobs progress instead of finishing at once."""
    from saturn.executor.backends import SimulatedBackend

    class PacedSimulatedBackend(SimulatedBackend):
        def __init__(self) -> None:
            super().__init__(step_time, startup=startup, **kw)
            self._w0 = time.monotonic()

        def wait(self, timeout_s: float) -> None:
            time.sleep(max(0.0, min(timeout_s, 0.05)))
            target = (time.monotonic() - self._w0) * speed
            self.t = max(self.t, min(target, self.next_event_time()))

    return PacedSimulatedBackend()


# ------------------------------------------------------------------------------ orchestrator
class Orchestrator:
    """An online Saturn run: submit jobs at any time; Saturn plans and executes them together.

    cluster: a Cluster (or anything `Cluster`-like; default: local devices). run_dir: where the
    journal, logs, metrics and checkpoints go (required for backend="process"). backend:
    "process" (real training processes), "simulate" (virtual clock paced at `sim_speed` virtual
    seconds per wall second, losses from `sim_loss(job, step)` with the submitted Job), or a Backend instance.
    profiles: a profile table (per job or store format) or a path; None = the profile store, and
    jobs it lacks are profiled on submit (`profile_missing`). interval_s: periodic re-plan
    interval; re-plans also happen on every submit, cancel and job end. batch_window_s: hold
    submissions until none arrived for this long, so that jobs submitted one by one in a burst
    (e.g. by Ray Tune trials starting) are planned together.
    """

    def __init__(self, cluster: Any = None, *, run_dir: Optional[PathLike] = None,
                 backend: Union[str, Any] = "process", interval_s: float = 60.0, profiles: Any = None,
                 profile_missing: bool = True, store_dir: Optional[PathLike] = None,
                 checkpoint_every: int = 0, time_limit_s: float = 5.0, poll_s: float = 0.2,
                 max_retries: int = 2, sim_speed: float = 10.0,
                 sim_loss: Optional[Callable[[Any, int], float]] = None, config: Any = None,
                 device_type: str = "auto", batch_window_s: float = 0.0):
        from saturn.executor import Executor, ExecutorConfig, ProcessBackend
        from saturn.spec import Cluster

        if cluster is None:
            cluster = Cluster.local()
        elif isinstance(cluster, (str, dict)):
            cluster = Cluster.model_validate(cluster)
        self.cluster = cluster.resolved() if hasattr(cluster, "resolved") else cluster
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

        if isinstance(backend, str):
            if backend in ("simulate", "simulated", "sim"):
                self.simulated = True
                be = _paced_simulated_backend(self._sim_step_time, self._sim_startup, float(sim_speed),
                                              checkpoint_s=0.5)
                poll = 0.05
            elif backend == "process":
                if self.run_dir is None:
                    raise OrchestratorError("backend='process' needs a run_dir (journal, logs, checkpoints)")
                if (self.run_dir / "journal.sqlite").exists():
                    raise OrchestratorError(f"{self.run_dir} already holds a run; pick another run_dir")
                is_cpu = getattr(self.cluster, "is_cpu", False)
                be = ProcessBackend(self.run_dir, device_type="cpu" if is_cpu else device_type,
                                    checkpoint_every=checkpoint_every)
                poll = self.poll_s
            else:
                raise OrchestratorError(f"backend must be 'process', 'simulate' or a Backend, not {backend!r}")
        else:
            be = backend
            poll = self.poll_s
        tap_loss = None
        if self.simulated and sim_loss is not None:
            tap_loss = lambda name, step: sim_loss(self._jobs[name], step)  # noqa: E731
        self.backend = _Tap(be, self._on_loss, tap_loss)
        cfg = config or ExecutorConfig(interval_s=interval_s, time_limit_s=time_limit_s, poll_s=poll,
                                       max_retries=max_retries)
        self._wait_s = poll
        self._ex = Executor([], self.cluster, pd.DataFrame(columns=["job", "technique", "knobs", "gpus",
                                                                    "step_time_s", "startup_s", "feasible"]),
                            self.backend, run_dir=self.run_dir, config=cfg)
        self._thread = threading.Thread(target=self._loop, name="saturn-orchestrator", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------------- public
    def submit(self, job: Any, profiles: Any = None) -> JobFuture:
        """Add a job (a `saturn.Job`, or a dict of its fields); returns at once with its future."""
        return self.submit_many([job], profiles=profiles)[0]

    def submit_many(self, jobs: Iterable[Any], profiles: Any = None) -> list[JobFuture]:
        """Add several jobs in one command, so that the planner sees them together."""
        from saturn.spec import Job

        self._check_open()
        prepared = []  # validate everything first: a bad job leaves no half-registered batch
        for job in jobs:
            if isinstance(job, dict):
                job = Job.model_validate(job)
            with self._flock:
                old = self._futures.get(job.name)
                if (old is not None and not old.done()) or any(job.name == j.name for j, _ in prepared):
                    raise OrchestratorError(f"job {job.name!r} is already submitted and not done")
            prepared.append((job, self._rows_for(job, profiles)))
        batch = []
        with self._flock:
            for job, rows in prepared:
                fut = JobFuture(self, job.name)
                self._futures[job.name] = fut
                self._jobs[job.name] = job
                self._histories[job.name] = {}
                self._reports[job.name] = JobReport(job.name, "pending", total_steps=int(job.total_steps))
                batch.append((job, rows, fut))
        self._last_submit = time.monotonic()
        self._cmds.put(("submit", batch))
        return [f for _, _, f in batch]

    def cancel(self, job: Any, reason: str = "cancelled") -> None:
        """Stop a job (running: checkpoint and exit; pending: dropped); its GPUs are re-planned."""
        name = getattr(job, "name", job)
        with self._flock:
            if name not in self._futures:
                raise OrchestratorError(f"no job {name!r} was submitted")
        self._cmds.put(("cancel", str(name), reason))

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

    close = shutdown

    def __enter__(self) -> "Orchestrator":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown(wait=True, cancel_jobs=exc_type is not None)

    # ---------------------------------------------------------------------------------- profiles
    def _check_open(self) -> None:
        if self._error is not None:
            raise OrchestratorError(f"the orchestrator loop died: {self._error!r}") from self._error
        if self._closing:
            raise OrchestratorError("the orchestrator is shut down")

    def _read_profiles(self, profiles: Any) -> Optional[pd.DataFrame]:
        if profiles is None or isinstance(profiles, pd.DataFrame):
            return profiles
        from saturn.profiles.store import read_table

        return read_table(profiles)

    def _rows_for(self, job: Any, profiles: Any) -> pd.DataFrame:
        """Profile rows for `job` (with a `job` column): the given table, else the orchestrator's,
        else the store; jobs sharing a signature share rows; missing ones are profiled."""
        from saturn.profiles.store import load_store, lookup

        for table in (self._read_profiles(profiles), self._profiles):
            if table is None or not len(table):
                continue
            if "job" in table.columns:
                rows = table[table["job"].astype(str) == job.name]
                if len(rows):
                    return self._remember(job, rows)
            if "signature" in table.columns:
                rows, _ = lookup([job], self.cluster, table.drop(columns=["job"], errors="ignore"))
                if len(rows):
                    return self._remember(job, rows)
        sig = str(job.signature)
        if sig not in self._sig_rows:
            rows, _ = lookup([job], self.cluster, load_store(self.store_dir))
            if not len(rows) and self.profile_missing and not self.simulated:
                from saturn.spec import Workload

                profile(Workload(name=f"orchestrator-{job.name}", cluster=self.cluster, jobs=[job]),
                        store_dir=self.store_dir)
                rows, _ = lookup([job], self.cluster, load_store(self.store_dir))
            if not len(rows):
                raise OrchestratorError(
                    f"no profile rows for job {job.name!r} (signature {sig}); pass profiles= (a table, "
                    "e.g. saturn.api.synthetic_profiles([job])) or run `saturn profile` on a workload with it")
            self._sig_rows[sig] = rows.drop(columns=["job"])
        rows = self._sig_rows[sig].copy()
        rows.insert(0, "job", job.name)
        return self._remember(job, rows)

    def _remember(self, job: Any, rows: pd.DataFrame) -> pd.DataFrame:
        rows = rows.copy()
        rows["job"] = job.name
        for r in rows.to_dict("records"):
            st, su = r.get("step_time_s"), r.get("startup_s")
            try:
                st = float(st)
            except (TypeError, ValueError):
                continue
            if math.isfinite(st):
                su = float(su) if su is not None and su == su else 0.0
                key = (job.name, str(r["technique"]), int(r["gpus"]))
                if key not in self._sim_rows or st < self._sim_rows[key][0]:
                    self._sim_rows[key] = (st, su)
        return rows

    def _sim_step_time(self, job: str, technique: str, gpus: int, knobs: dict) -> float:
        return self._sim_rows[(job, technique, int(gpus))][0]

    def _sim_startup(self, job: str, technique: str, gpus: int) -> float:
        return self._sim_rows.get((job, technique, int(gpus)), (0.0, 0.0))[1]

    # ---------------------------------------------------------------------------------- the loop
    def _on_loss(self, job: str, step: int, loss: float) -> None:
        h = self._histories.get(job)
        if h is not None and math.isfinite(loss):
            h[step] = loss

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        batch = [x for cmd in held for x in cmd[1]]
        if batch:
            self._apply(("submit", batch))

    def _apply(self, cmd: tuple) -> bool:
        """Apply one queued command to the executor; False on "close"."""
        from saturn.executor.state import TERMINAL

        kind = cmd[0]
        if kind == "close":
            return False
        if kind == "submit":
            for job, rows, fut in cmd[1]:
                try:
                    self._ex.submit(job, profiles=rows)
                    fut._accepted = True
                except Exception as exc:  # noqa: BLE001 - the job fails, the loop goes on
                    fut._set(JobReport(job.name, "failed", total_steps=int(job.total_steps), reason=str(exc)))
        elif kind == "cancel":
            name, reason = cmd[1], cmd[2]
            js = self._ex.state.jobs.get(name)
            if js is not None and js.status not in TERMINAL:
                self._ex.cancel(name, reason=reason)
        return True

    def _loop(self) -> None:
        from saturn.executor import ExecutorError
        from saturn.executor.state import ACTIVE

        open_ = True
        try:
            while True:
                with self._lock:
                    while True:
                        try:
                            cmd = self._cmds.get_nowait()
                        except queue.Empty:
                            break
                        if cmd[0] == "submit" and self.batch_window_s > 0:
                            self._held.append(cmd)
                            continue
                        held = {j.name for h in self._held for j, _, _ in h[1]}
                        if held and (cmd[0] != "cancel" or cmd[1] in held):  # keep submit-then-cancel order
                            self._flush_held()
                        open_ = self._apply(cmd) and open_
                    if self._held and (time.monotonic() - self._last_submit >= self.batch_window_s or not open_):
                        self._flush_held()
                    try:
                        self._ex.step()
                    except ExecutorError as exc:  # nothing can be launched: fail what cannot run
                        for js in self._ex.state.unfinished():
                            if js.status not in ACTIVE:
                                self._ex.emit("job_failed", job=js.name, reason=str(exc))
                    self._publish()
                    with self._flock:
                        busy = any(not f.done() for f in self._futures.values())
                if not open_ and not busy and self._cmds.empty() and not self._held:
                    break
                self.backend.wait(self._wait_s)
        except BaseException as exc:  # noqa: BLE001 - never die silently: fail every future
            self._error = exc
            log.exception("saturn orchestrator loop died")
            for n, f in list(self._futures.items()):
                f._set(replace(self._reports.get(n) or JobReport(n, "failed"), status="failed",
                               reason=f"orchestrator loop died: {exc!r}"))
        finally:
            try:
                self._ex.emit("run_finished", reason="")
            except Exception:  # noqa: BLE001
                pass
            try:
                self.backend.shutdown()
            except Exception:  # noqa: BLE001
                log.exception("backend shutdown failed")

    def _publish(self) -> None:
        """Snapshot every job's state into a JobReport; complete the futures of finished jobs."""
        from saturn.executor.state import TERMINAL

        for name, js in self._ex.state.jobs.items():
            fut = self._futures.get(name)
            if fut is None or fut.done() or not fut._accepted:  # (a re-used name: wait for the new job)
                continue
            seg = js.segments[-1] if js.segments else None
            hist = self._histories.get(name, {})
            old = self._reports.get(name)
            metrics = old.metrics if old is not None and len(old.metrics) == len(hist) else tuple(sorted(hist.items()))
            rep = JobReport(
                name=name, status=js.status, step=max(js.progress_step, js.committed_step),
                total_steps=js.info.total_steps, loss=js.loss, metrics=metrics,
                technique=seg.technique if seg else None, gpus=tuple(seg.gpus) if seg else (),
                node=seg.node if seg else None, attempts=js.attempts, checkpoint=js.checkpoint,
                metrics_path=str(self._ex.job_dir(name) / "metrics.jsonl") if self.run_dir else None,
                reason=js.reason, early_stopped=js.early_stopped)
            with self._flock:
                self._reports[name] = rep
            if js.status in TERMINAL and not fut.done():
                fut._set(rep)
