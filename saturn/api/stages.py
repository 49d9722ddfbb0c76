"""The pipeline stages as functions: `profile`, `plan`, `run` (= `saturn profile|plan|run`).

The CLI commands are thin shells over these (arrows point one way: cli -> api -> stages), and
`run` builds its executor with `saturn.executor.build`, the same builder as `saturn run` and the
`Orchestrator`. `profiles_table` is the one place a planner table is loaded (file, DataFrame or
the profile store, profiling what is missing when allowed).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Iterable, Optional, Union

import pandas as pd

from saturn.executor import defaults

log = logging.getLogger("saturn.api")

PathLike = Union[str, "os.PathLike[str]"]


def _workload(workload: Any) -> Any:
    from saturn.spec import Workload, load_workload

    if isinstance(workload, Workload):
        return workload
    return load_workload(workload)


def _with_path(wl: Any, path: Any) -> Any:
    """Let error messages (the missing-profiles hint) quote the workload file."""
    if isinstance(path, (str, os.PathLike)) and "\n" not in str(path):
        try:
            object.__setattr__(wl, "path", str(path))
        except Exception:  # noqa: BLE001 - cosmetic (error messages quote the path)
            pass
    return wl


def load(workload: Any) -> Any:
    """The Workload for a Workload, a YAML path or YAML text, with its cluster's nodes resolved
    (Ray clusters are discovered here, through saturn.executor.build)."""
    from saturn.executor.build import with_resolved_cluster

    return with_resolved_cluster(_with_path(_workload(workload), workload))


def profile(workload: Any, **kwargs: Any) -> pd.DataFrame:
    """Measure the workload's options into the profile store (= `saturn profile W.yaml`).

    `workload`: a Workload, a YAML path or YAML text. kwargs go to `saturn.profiler.profile`
    (store_dir, budget_min, force, exhaustive, progress=False, ...). Returns one row per (job,
    option). The trials run here, so the jobs' local files are checked first (the same
    `local_paths` stage as `run`)."""
    from saturn.api.run_stages import check_paths
    from saturn.env import check_environment
    from saturn.profiler import profile as _profile
    from saturn.ranges import check_args, check_path_arg

    check_environment()
    check_args("saturn.profile", budget_min=kwargs.get("budget_min"))
    check_path_arg("saturn.profile", "store_dir", kwargs.get("store_dir"))
    kwargs.setdefault("progress", False)
    wl = load(workload)
    check_paths(wl)  # before any trial starts
    return _profile(wl, **kwargs)


def profiles_table(workload: Any, profiles: Any = None, *, allow_profiling: bool = False,
                   store_dir: Optional[PathLike] = None, progress: bool = False,
                   prior: bool = True) -> pd.DataFrame:
    """The planner's per-job table (with a `job` column) for `workload`.

    profiles: None (the profile store), a path to a CSV/parquet, or a DataFrame, either per job
    (a `job` column, used as given) or in store format (matched by profile signature). With
    `prior` (the default), every option no row covers gets an `estimated` row from the prior cost
    model (`saturn.profiler.prior_rows`), so no job is left unplanned; with `allow_profiling`,
    jobs that would still have no row at all are profiled first."""
    from saturn.errors import MissingProfilesError
    from saturn.profiles.store import load_store, profiles_for, read_table

    wl = workload
    check = table_check(wl)
    if profiles is not None:
        if isinstance(profiles, pd.DataFrame):
            table = profiles
            check(table, "<the given table>", None)
        else:
            table = read_table(profiles, check)
        if "job" in table.columns:
            return table
        source = "the given table" if isinstance(profiles, pd.DataFrame) else str(profiles)
        return profiles_for(wl, _with_prior(wl, table, store_dir, prior), source=source)
    try:
        return profiles_for(wl, _with_prior(wl, load_store(store_dir, check), store_dir, prior))
    except MissingProfilesError:
        if not allow_profiling:
            raise
    profile(wl, store_dir=store_dir, progress=progress)
    return profiles_for(wl, _with_prior(wl, load_store(store_dir, check), store_dir, prior))


def table_check(wl: Any) -> Any:
    """The check of profile tables against this workload's registry and cluster (#28): techniques
    registered (or named by the jobs), feasible rows within the cluster's device memory."""
    from saturn.profiles.store import cluster_check
    from saturn.techniques.registry import technique_names

    names = set(technique_names())
    for j in wl.jobs:
        names.update(j.techniques or ())
    memory: dict[str, float] = {}
    for n in getattr(wl.cluster, "nodes", None) or []:
        key = str(n.gpu_type).lower()
        memory[key] = max(memory.get(key, 0.0), float(n.gpu_memory_gb))
    return cluster_check(techniques=names, memory_gb=memory, signatures={j.signature for j in wl.jobs},
                         jobs={j.name for j in wl.jobs})


def _with_prior(wl: Any, table: pd.DataFrame, store_dir: Optional[PathLike], prior: bool) -> pd.DataFrame:
    if not prior:
        return table
    from saturn.profiler.prior_rows import with_prior

    return with_prior(wl, table, store_dir)


def plan(workload: Any, profiles: Any = None, *, time_limit_s: float = 30.0, **kwargs: Any) -> Any:
    """Choose technique, GPUs and start time for every job (= `saturn plan W.yaml`).

    profiles: as in `profiles_table` (default: the store; missing profiles raise
    MissingProfilesError with the `saturn profile` command to run). kwargs go to
    `saturn.planner.plan` (mip_gap, warm_start, threads). Returns a `saturn.planner.Plan`."""
    from saturn.env import check_environment
    from saturn.planner import plan as _plan
    from saturn.planner.provenance import annotate
    from saturn.ranges import check_args, check_path_arg

    check_environment()
    check_args("saturn.plan", time_limit_s=time_limit_s)
    check_path_arg("saturn.plan", "profiles", profiles, table=True)
    wl = load(workload)
    table = profiles_table(wl, profiles)
    kwargs.setdefault("objective", getattr(wl, "objective", "makespan"))  # the YAML's `objective:`
    # every assignment says where its numbers came from (measured / extrapolated / simulated / guessed)
    return annotate(_plan(wl.jobs, wl.cluster, table, time_limit_s=time_limit_s, **kwargs), table)


def run(workload: Any, *, profiles: Any = None, run_dir: Optional[PathLike] = None, simulate: bool = False,
        interval_s: float = defaults.INTERVAL_S, introspect: bool = True, plan: Any = None,
        time_limit_s: float = defaults.TIME_LIMIT_S, max_retries: int = defaults.MAX_RETRIES,
        checkpoint_every: int = defaults.CHECKPOINT_EVERY, noise: float = 0.15, seed: int = 0,
        device_type: str = "auto", live: bool = False, require_measured: bool = False,
        store_dir: Optional[PathLike] = None) -> dict:
    """Plan and execute introspectively (= `saturn run W.yaml`), through the same stages as the
    CLI (saturn.api.run_stages.prepare_run): options nobody measured are measured by the jobs'
    own first steps, written to the profile store and re-planned on.

    Blocks until every job is done; returns {job: JobResult(status, steps, final_loss,
    checkpoint, metrics_path, reason)}. `simulate=True` runs on a virtual clock at profiled speed
    x log-normal noise (no training); a workload with `cluster: {ray: ...}` runs on Ray.
    `plan`: a Plan / plan dict / JSON path to start from. `require_measured`: refuse (SaturnError)
    a plan resting on numbers nobody measured."""
    from saturn.api.run_stages import prepare_run
    from saturn.ranges import check_args, check_path_arg

    check_args("saturn.run", interval_s=interval_s, time_limit_s=time_limit_s, max_retries=max_retries,
               checkpoint_every=checkpoint_every, noise=noise, seed=seed)
    check_path_arg("saturn.run", "run_dir", run_dir)
    check_path_arg("saturn.run", "store_dir", store_dir)
    check_path_arg("saturn.run", "profiles", profiles, table=True)
    prep = prepare_run(workload, profiles, simulate=simulate, require_measured=require_measured,
                       store_dir=store_dir, run_dir=run_dir, time_limit_s=time_limit_s, plan=plan,
                       say=lambda s: log.log(logging.WARNING if s.startswith("WARNING") else logging.INFO, "%s", s),
                       device_type=device_type)
    display = None
    if live and not simulate:
        from rich.console import Console

        from saturn.executor.display import LiveDisplay

        display = LiveDisplay(Console())
    ex = start_executor(prep, display=display, simulate=simulate, interval_s=interval_s,
                        introspect=introspect, time_limit_s=time_limit_s, max_retries=max_retries,
                        checkpoint_every=checkpoint_every, noise=noise, seed=seed, device_type=device_type)
    try:
        if display is not None:
            with display:
                return ex.run_until_done()
        return ex.run_until_done()
    finally:
        ex.backend.shutdown()
        ex.close()


def start_executor(prep: Any, *, display: Any = None, simulate: bool = False,
                   interval_s: float = defaults.INTERVAL_S, introspect: bool = True,
                   time_limit_s: float = defaults.TIME_LIMIT_S, max_retries: int = defaults.MAX_RETRIES,
                   checkpoint_every: int = defaults.CHECKPOINT_EVERY, noise: float = 0.15, seed: int = 0,
                   device_type: str = "auto") -> Any:
    """The executor for a PreparedRun (both doors): the stages taken and their timings go into
    the run's journal (`saturn report` and the benchmarks read them)."""
    from saturn.executor.build import RunOptions, build_executor

    wl = prep.workload
    opts = RunOptions(run_dir=prep.run_dir, simulate=simulate, interval_s=interval_s, introspect=introspect,
                      time_limit_s=time_limit_s, max_retries=max_retries, checkpoint_every=checkpoint_every,
                      noise=noise, seed=seed, device_type=device_type,
                      objective=getattr(wl, "objective", "makespan"))
    ex = build_executor(wl.jobs, wl.cluster, prep.table, options=opts, plan=prep.plan, display=display,
                        measurer=prep.measurer)
    if prep.run_dir is not None:
        ex.journal.set_meta("stages", {"stages": list(prep.stages), **prep.timings, "notes": list(prep.notes),
                                       "simulated": bool(simulate)})
    return ex


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
