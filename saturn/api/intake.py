"""Job intake of the orchestrator: validate submitted jobs, find their profile rows, and queue
`submit` / `cancel` commands for the executor thread.

`JobIntake` is a mixin of `Orchestrator` (saturn.api.orchestrator), which owns the state it uses.
Rows are looked up in the submit call (the caller's thread), so a job without profiles fails there,
before anything is queued; the executor thread only applies ready batches.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable, Optional

import pandas as pd

from saturn.api.background_profiling import estimate_rows, shape_key
from saturn.api.futures import JobFuture, JobReport, OrchestratorError
from saturn.errors import SaturnError


class JobIntake:
    """`submit`, `submit_many`, `cancel` and the per-job profile rows (see the module docstring)."""

    cluster: Any
    simulated: bool
    profile_missing: bool
    store_dir: Any
    _profiles: Optional[pd.DataFrame]
    _sig_rows: dict
    _sim_rows: dict
    _histories: dict
    _futures: dict
    _reports: dict
    _jobs: dict
    _cmds: Any
    _flock: Any
    _closing: bool
    _error: Optional[BaseException]
    _last_submit: float
    _profile_source: dict
    _held: list
    _lock: Any
    _ex: Any
    _measured_shapes: dict
    backend: Any

    # ---------------------------------------------------------------------------------- public
    def submit(self, job: Any, profiles: Any = None) -> JobFuture:
        """Add a job (a `saturn.Job`, or a dict of its fields); returns at once with its future."""
        return self.submit_many([job], profiles=profiles)[0]

    def submit_many(self, jobs: Iterable[Any], profiles: Any = None) -> list[JobFuture]:
        """Add several jobs in one command, so that the planner sees them together."""
        from saturn.spec import Job
        from saturn.techniques.checks import check_job

        self._check_open()
        # validate everything first: a bad job leaves no half-registered batch
        prepared: list[tuple[Any, Optional[pd.DataFrame]]] = []
        unfit: dict[str, str] = {}  # job -> why it can never run here (its future fails at once)
        if isinstance(jobs, (Job, dict)) or jobs is None or isinstance(jobs, (str, bytes)):
            raise OrchestratorError(f"submit_many(jobs): give a list of saturn.Job (or dicts of their fields), "
                                    f"not {type(jobs).__name__}")
        for job in jobs:
            if isinstance(job, dict):
                job = Job.model_validate(job)
            if not isinstance(job, Job):
                raise OrchestratorError(f"submit(job): job must be a saturn.Job or a dict of its fields, not "
                                        f"{type(job).__name__} ({job!r:.80})")
            check_job(job)  # techniques and knobs against the registry (SpecError naming the field)
            with self._flock:
                old = self._futures.get(job.name)
                if (old is not None and not old.done()) or any(job.name == j.name for j, _ in prepared):
                    raise OrchestratorError(f"job {job.name!r} is already submitted and not done")
                before = self._jobs.get(job.name)
            if before is not None:  # a finished job's name: only the same definition resumes it
                from saturn.executor.loop import check_same_definition

                try:
                    check_same_definition(job.name, before.model_dump(mode="json"), job.model_dump(mode="json"))
                except SaturnError as exc:
                    raise OrchestratorError(str(exc)) from None
            self._profile_source.pop(job.name, None)  # (a re-used name: this job's own label)
            self._check_paths(job)
            why = self._unfit(job)
            if why:
                unfit[job.name] = why
            prepared.append((job, None if why else self._rows_for(job, profiles)))
        batch, futures = [], []
        with self._flock:
            for job, rows in prepared:
                fut = JobFuture(self, job.name)
                self._futures[job.name] = fut
                self._jobs[job.name] = job
                self._histories[job.name] = {}
                self._reports[job.name] = JobReport(job.name, "pending", total_steps=int(job.total_steps),
                                                    profile=self._profile_source.get(job.name, "measured"))
                futures.append(fut)
                if job.name in unfit:
                    fut._accepted = True
                    self._reports[job.name] = JobReport(job.name, "failed", total_steps=int(job.total_steps),
                                                        reason=unfit[job.name])
                    fut._set(self._reports[job.name])
                else:
                    batch.append((job, rows, fut))
        self._last_submit = time.monotonic()
        if batch:
            self._cmds.put(("submit", batch))
        return futures

    def cancel(self, job: Any, reason: str = "cancelled") -> None:
        """Stop a job (running: checkpoint and exit; pending: dropped); its GPUs are re-planned.

        The stop reaches a running job at once, so a pruned trial trains about one more step after
        the cancel (its losses, and so a prune, are seen at the training loop's read-back
        boundaries, every <= 10 steps). Applied to the executor at once when its thread is idle;
        while it is busy (a re-plan can hold its lock for seconds) the cancel is queued for it and
        the stop goes straight to the backend (`thread_safe_stop` backends), so the job never
        trains on while the planner solves (#28: pruned trials ran 12-82 steps past the prune)."""
        from saturn.executor.state import TERMINAL

        name = str(getattr(job, "name", job))
        with self._flock:
            if name not in self._futures:
                raise OrchestratorError(f"no job {name!r} was submitted")
        held = any(j.name == name for h in self._held for j, _, _ in h[1])
        if not held and self._lock.acquire(timeout=getattr(self, "cancel_wait_s", 0.05)):
            try:
                js = self._ex.state.jobs.get(name)
                with self._cmds.mutex:
                    pending_cmds = list(self._cmds.queue)
                queued = any(c[0] == "submit" and any(j.name == name for j, _, _ in c[1]) for c in pending_cmds)
                if js is not None and not queued:
                    if js.status not in TERMINAL:
                        self._ex.cancel(name, reason=reason)
                    return
            finally:
                self._lock.release()
        # queued first: the executor thread applies it (a stop the executor asked for) before it
        # can see the job exit, so an interrupted job ends cancelled, never relaunched
        self._cmds.put(("cancel", name, reason))
        if not held and getattr(self.backend, "thread_safe_stop", False):
            try:
                self.backend.stop(name)  # a job not running (yet / any more) is left alone
            except Exception:  # noqa: BLE001 - the queued cancel still stops it
                pass


    def _check_paths(self, job: Any) -> None:
        """The `local_paths` stage of every front door (saturn.api.workload.check_paths): a job
        that runs here needs its local files here (SpecError naming them, before it is queued)."""
        if self.simulated or getattr(self.cluster, "ray", None) is not None:
            return
        from saturn.api.workload import check_paths
        from saturn.spec import Workload

        check_paths(Workload(name=f"submit-{job.name}", cluster=self.cluster, jobs=[job]))

    # ---------------------------------------------------------------------------------- profiles
    def _unfit(self, job: Any) -> str:
        """Why `job` can never run on this cluster ('' if it can): every GPU count it allows exceeds
        the largest node. Said at once, instead of a missing-profile error."""
        nodes = getattr(self.cluster, "nodes", None) or []
        largest = max((int(n.gpus) for n in nodes), default=0)
        if job.gpus and largest and min(job.gpus) > largest:
            return (f"job {job.name!r} needs {min(job.gpus)} GPUs (gpus: {list(job.gpus)}) and the largest node of "
                    f"the cluster has {largest}: more GPUs than the cluster has; allow fewer GPUs or use a larger "
                    "cluster")
        return ""

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
        bg = getattr(self, "_bg", None)
        if sig not in self._sig_rows and bg is not None and bg.pending(job):
            return self._estimated(job, bg)
        if sig not in self._sig_rows:
            rows, _ = lookup([job], self.cluster, load_store(self.store_dir))
            if not len(rows) and self.profile_missing and bg is not None:  # measured in the background
                return self._estimated(job, bg)
            if not len(rows) and self.profile_missing and not self.simulated:
                from saturn.api.stages import profile
                from saturn.spec import Workload

                profile(Workload(name=f"orchestrator-{job.name}", cluster=self.cluster, jobs=[job]),
                        store_dir=self.store_dir)
                rows, _ = lookup([job], self.cluster, load_store(self.store_dir))
            if not len(rows):
                raise OrchestratorError(
                    f"no profile rows for job {job.name!r} (signature {sig}); pass profiles= (a table, "
                    "e.g. saturn.api.synthetic_profiles([job])) or run `saturn profile` on a workload with it")
            self._sig_rows[sig] = rows.drop(columns=["job"])
            self._measured_shapes[shape_key(job)] = (int(job.batch_size), self._sig_rows[sig])
        rows = self._sig_rows[sig].copy()
        rows.insert(0, "job", job.name)
        return self._remember(job, rows)

    def _estimated(self, job: Any, bg: Any) -> pd.DataFrame:
        """Labelled estimated rows for `job`, whose signature is measured in the background."""
        rows = estimate_rows(bg.limit_job(job), self.cluster, self._measured_shapes)
        self._profile_source[job.name] = str(rows["source"].iloc[0])
        bg.enqueue(job)
        rows.insert(0, "job", job.name)
        return self._remember(job, rows)

    def _measured(self, names: list, rows: Optional[pd.DataFrame], reason: str) -> None:
        """The background profiler's outcome for jobs `names` (queued for the executor thread)."""
        self._cmds.put(("profiles", list(names), rows, reason))

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

