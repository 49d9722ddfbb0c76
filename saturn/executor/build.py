"""The one road from a workload to a ready executor: cluster discovery, backend choice, executor.

    from saturn.executor.build import RunOptions, build_executor, resolve_cluster
    cluster = resolve_cluster(workload.cluster)      # Ray nodes / local devices -> explicit nodes
    ex = build_executor(workload.jobs, cluster, profiles, plan=None,
                        options=RunOptions(run_dir="runs/x", simulate=False))
    ex.run_until_done()

`saturn run` (saturn.cli.run), `saturn.run()` and `saturn.Orchestrator` (saturn.api) all come
through here, so the same workload gets the same backend from every door:

* simulate        -> `SimulatedBackend` at the profiled speed x a log-normal factor per job;
* `cluster.ray`   -> `RayBackend` + `RayExecutor` (jobs run in Ray actors on the planned nodes);
* otherwise       -> `ProcessBackend` (local child processes; `device_type=cpu` on a CPU cluster).

Cluster discovery lives here (and in `saturn.executor.ray_cluster`), not in the spec: a
`Cluster` is pure data and validating a workload never connects to anything.
"""

from __future__ import annotations

import errno
import math
import os
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from saturn.errors import SaturnError
from saturn.executor import defaults

BACKEND_KINDS = ("process", "ray", "simulate")


@dataclass
class RunOptions:
    """How to execute (the flags of `saturn run` / keyword arguments of `saturn.run()`).

    backend: "auto" (simulate if `simulate`, Ray if the cluster has `ray:`, else processes) or one
    of BACKEND_KINDS. poll_s: None = the default (0.5 s real, inf simulated)."""

    run_dir: Optional[Union[str, Path]] = None
    simulate: bool = False
    backend: str = "auto"
    interval_s: float = defaults.INTERVAL_S
    introspect: bool = True
    time_limit_s: float = defaults.TIME_LIMIT_S
    max_retries: int = defaults.MAX_RETRIES
    checkpoint_every: int = defaults.CHECKPOINT_EVERY
    noise: float = 0.15
    seed: int = 0
    device_type: str = "auto"
    poll_s: Optional[float] = None
    objective: str = "makespan"  # the workload's `objective:` (saturn/planner/objectives.py)

    def executor_config(self) -> Any:
        from saturn.executor import ExecutorConfig

        poll = self.poll_s if self.poll_s is not None else (math.inf if self.kind_is_simulated else 0.5)
        return ExecutorConfig(interval_s=self.interval_s, introspect=self.introspect, max_retries=self.max_retries,
                              time_limit_s=self.time_limit_s, poll_s=poll, objective=self.objective)

    @property
    def kind_is_simulated(self) -> bool:
        return self.simulate or self.backend in ("simulate", "simulated", "sim")


def default_run_dir(name: str) -> Path:
    """runs/<workload>-<YYYYmmdd-HHMMSS>: where a run goes when no run directory is given; new
    each time (`-2`, `-3`... when a run of this second already took it)."""
    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def resolve_cluster(cluster: Any) -> Any:
    """Explicit nodes for `cluster`: discovered from Ray (`cluster.ray`, connects to it), or the
    local GPUs / CPU slots. A cluster that already lists its nodes is returned as is."""
    if getattr(cluster, "nodes", None) is not None or not hasattr(cluster, "resolved"):
        return cluster
    ray = getattr(cluster, "ray", None)
    if ray is not None:
        from saturn.executor.ray_cluster import discover
        from saturn.spec import Cluster

        nodes, dev = discover(ray.address, ray.devices, ray.slots, ray.gpu_memory_gb)
        return Cluster(nodes=[n.to_node() for n in nodes], devices="cuda" if dev == "cuda" else "cpu", ray=ray)
    return cluster.resolved()


def with_resolved_cluster(workload: Any) -> Any:
    """A shallow copy of `workload` whose cluster lists its nodes (the stages below need them)."""
    cluster = resolve_cluster(workload.cluster)
    if cluster is workload.cluster:
        return workload
    return workload.model_copy(update={"cluster": cluster})


def backend_kind(cluster: Any, options: RunOptions) -> str:
    """Which backend `options` and `cluster` call for: one of BACKEND_KINDS."""
    if options.kind_is_simulated:
        return "simulate"
    if options.backend not in ("auto",) + BACKEND_KINDS:
        raise SaturnError(f"backend must be 'auto', 'process', 'ray' or 'simulate', not {options.backend!r}")
    if options.backend == "ray" or (options.backend == "auto" and getattr(cluster, "ray", None) is not None):
        if getattr(cluster, "ray", None) is None:
            raise SaturnError("backend 'ray' needs a cluster with `ray:` (e.g. cluster: {ray: {address: auto}})")
        return "ray"
    return "process"


def simulated_backend(table: Any, *, noise: float = 0.15, seed: int = 0, **kw: Any) -> Any:
    """A SimulatedBackend running each job at its profiled speed x a log-normal factor per job."""
    from saturn.executor import SimulatedBackend
    from saturn.parse import num as _num

    rng = random.Random(seed)
    jobs = sorted(set(map(str, table["job"])))
    factor = {j: rng.lognormvariate(0.0, noise) if noise > 0 else 1.0 for j in jobs}
    steps: dict = {}
    startup: dict = {}
    for r in table.to_dict("records"):
        key = (str(r["job"]), str(r["technique"]), int(r["gpus"]))
        st = _num(r.get("step_time_s"), math.nan)
        if math.isfinite(st) and (key not in steps or st < steps[key]):
            steps[key] = st
            startup[key] = _num(r.get("startup_s"), 0.0)
    return SimulatedBackend(lambda j, t, g, k: steps[(j, t, g)] * factor[j],
                            startup=lambda j, t, g: startup.get((j, t, g), 0.0), **kw)


def check_fresh_run_dir(run_dir: Path, hint: str = "") -> None:
    """Refuse a run directory that a live executor holds (naming its pid) or that holds a run."""
    from saturn.executor.run_lock import check_not_locked

    check_not_locked(run_dir)
    if (Path(run_dir) / "journal.sqlite").exists():
        hint = hint or f"continue it with `saturn run --resume {run_dir}`"
        raise SaturnError(f"{run_dir} already holds a run; {hint}")


def make_backend(kind: str, cluster: Any, options: RunOptions, *, table: Any = None) -> tuple[Any, type]:
    """(backend, executor class) for `kind` (see `backend_kind`); the run directory must be set
    for real backends."""
    from saturn.executor import Executor, ProcessBackend

    if kind == "simulate":
        if table is None:
            raise SaturnError("the simulated backend needs the profile table (its speeds drive the clock)")
        return simulated_backend(table, noise=options.noise, seed=options.seed), Executor
    if options.run_dir is None:
        raise SaturnError(f"backend {kind!r} needs a run directory (journal, logs, checkpoints)")
    run_dir = Path(options.run_dir)
    if kind == "ray":
        from saturn.executor.backends.ray import RayBackend, RayExecutor

        return RayBackend(run_dir, cluster.ray, checkpoint_every=options.checkpoint_every), RayExecutor
    if kind == "process":
        is_cpu = getattr(cluster, "is_cpu", False)
        return ProcessBackend(run_dir, device_type="cpu" if is_cpu else options.device_type,
                              checkpoint_every=options.checkpoint_every), Executor
    raise SaturnError(f"backend must be one of {', '.join(BACKEND_KINDS)}, not {kind!r}")


def build_executor(jobs: Any, cluster: Any, profiles: Any, *, options: RunOptions, plan: Any = None,
                   display: Any = None, backend: Any = None, wrap: Optional[Callable[[Any], Any]] = None,
                   config: Any = None, measurer: Any = None) -> Any:
    """A ready executor for (jobs, cluster, profiles, plan, options): the only place one is built.

    cluster: resolved here if it does not list its nodes. plan: a Plan, plan dict or JSON path to
    start from (None: the executor plans). backend: a Backend instance to use instead of the one
    `options` call for (its executor class is then `Executor`, or `RayExecutor` for a RayBackend).
    wrap: applied to the backend before the executor gets it (the Orchestrator's loss tap).
    config: an ExecutorConfig overriding the one built from `options`. measurer: measures the
    options nobody measured from the jobs' own first steps (saturn.profiles.inrun.RunMeasurer)."""
    cluster = resolve_cluster(cluster)
    if backend is None:
        backend, executor_cls = make_backend(backend_kind(cluster, options), cluster, options, table=profiles)
    else:
        executor_cls = _executor_class_for(backend)
    if isinstance(plan, (str, os.PathLike)):
        from saturn.planner import Plan

        plan = Plan.from_json(Path(plan))
    inner = backend
    if wrap is not None:
        backend = wrap(backend)
    try:
        try:
            ex = executor_cls(jobs, cluster, profiles, backend, run_dir=options.run_dir,
                              config=config or options.executor_config(), plan=plan, display=display)
        except (OSError, sqlite3.OperationalError) as exc:
            err = unwritable_run_dir(options.run_dir, exc)
            if err is exc:
                raise
            raise err from None
        ex.measurer = measurer
        if measurer is not None and options.run_dir is not None:  # a resumed run measures on (resume_executor)
            ex.journal.set_meta("measurer", measurer.to_meta())
        return ex
    except BaseException:
        inner.shutdown()
        raise


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def unwritable_run_dir(run_dir: Any, exc: BaseException) -> BaseException:
    """A full (or read-only) disk while the executor creates its run directory, journal or plan
    files: a SaturnError (exit 2) naming the path, instead of a traceback. Anything else is
    returned as it is (a bug, re-raised)."""
    if isinstance(exc, sqlite3.OperationalError):
        if "full" not in str(exc) and "readonly" not in str(exc):
            return exc
        where, why = Path(run_dir or ".") / "journal.sqlite", str(exc)
    elif isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        where, why = exc.filename or run_dir, exc.strerror or str(exc)
    else:
        return exc
    return SaturnError(f"run directory {run_dir}: {where} cannot be written ({why}); free space on its disk "
                       "(or pick a writable --run-dir) and start the run again with a new --run-dir")


def _executor_class_for(backend: Any) -> type:
    from saturn.executor import Executor
    from saturn.executor.backends.ray import RayBackend, RayExecutor  # (imports Ray lazily)

    return RayExecutor if isinstance(backend, RayBackend) else Executor


def resume_executor(run_dir: Union[str, Path], *, checkpoint_every: int = defaults.CHECKPOINT_EVERY,
                    device_type: str = "auto",
                    display: Any = None, config: Any = None) -> Any:
    """The executor continuing the run in `run_dir` on the backend it was started with (Ray runs
    on Ray, the others in local processes)."""
    from saturn.executor import Executor, ProcessBackend
    from saturn.executor.backends.ray import RayExecutor, resume_backend_factory

    run_dir = Path(run_dir)
    factory = resume_backend_factory(run_dir, checkpoint_every=checkpoint_every)
    if factory is not None:
        ex = RayExecutor.resume(run_dir, factory, config=config, display=display)
    else:
        ex = Executor.resume(run_dir, lambda off: ProcessBackend(run_dir, clock_offset=off, device_type=device_type,
                                                                  checkpoint_every=checkpoint_every),
                             config=config, display=display)
    try:
        meta = ex.journal.get_meta("measurer")
        if meta:  # the run measured what nobody measured: so does its resumed executor (before any launch)
            from saturn.profiles.inrun import RunMeasurer

            ex.measurer = RunMeasurer.from_meta(meta, [d for _, k, d in ex.journal.events() if k == "measured"])
    except BaseException:
        ex.backend.shutdown()
        ex.close()
        raise
    return ex
