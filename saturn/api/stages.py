"""The pipeline stages as functions: `profile`, `plan`, `run` (= `saturn profile|plan|run`).

The CLI commands are thin shells over these (arrows point one way: cli -> api -> stages), and
`run` builds its executor with `saturn.executor.build`, the same builder as `saturn run` and the
`Orchestrator`. `profiles_table` is the one place a planner table is loaded (file, DataFrame or
the profile store, profiling what is missing when allowed).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import pandas as pd

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
    (store_dir, budget_min, force, progress=False, ...). Returns one row per (job, option)."""
    from saturn.profiler import profile as _profile

    kwargs.setdefault("progress", False)
    return _profile(load(workload), **kwargs)


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
    if profiles is not None:
        table = profiles if isinstance(profiles, pd.DataFrame) else read_table(profiles)
        if "job" in table.columns:
            return table
        source = "the given table" if isinstance(profiles, pd.DataFrame) else str(profiles)
        return profiles_for(wl, _with_prior(wl, table, store_dir, prior), source=source)
    try:
        return profiles_for(wl, _with_prior(wl, load_store(store_dir), store_dir, prior))
    except MissingProfilesError:
        if not allow_profiling:
            raise
    profile(wl, store_dir=store_dir, progress=progress)
    return profiles_for(wl, _with_prior(wl, load_store(store_dir), store_dir, prior))


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
    from saturn.planner import plan as _plan
    from saturn.planner.provenance import annotate

    wl = load(workload)
    table = profiles_table(wl, profiles)
    kwargs.setdefault("objective", getattr(wl, "objective", "makespan"))  # the YAML's `objective:`
    # every assignment says where its numbers came from (measured / extrapolated / simulated / guessed)
    return annotate(_plan(wl.jobs, wl.cluster, table, time_limit_s=time_limit_s, **kwargs), table)


def run(workload: Any, *, profiles: Any = None, run_dir: Optional[PathLike] = None, simulate: bool = False,
        interval_s: float = 60.0, introspect: bool = True, plan: Any = None, time_limit_s: float = 10.0,
        max_retries: int = 2, checkpoint_every: int = 200, noise: float = 0.15, seed: int = 0,
        device_type: str = "auto", live: bool = False) -> dict:
    """Profile what is missing, plan and execute introspectively (= `saturn run W.yaml`).

    Blocks until every job is done; returns {job: JobResult(status, steps, final_loss,
    checkpoint, metrics_path, reason)}. `simulate=True` runs on a virtual clock at profiled speed
    x log-normal noise (no training); a workload with `cluster: {ray: ...}` runs on Ray.
    `plan`: a Plan / plan dict / JSON path to start from."""
    from saturn.executor.build import RunOptions, build_executor, check_fresh_run_dir, default_run_dir

    wl = load(workload)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(wl.name)
    check_fresh_run_dir(run_dir)
    table = profiles_table(wl, profiles, allow_profiling=not simulate)
    opts = RunOptions(run_dir=run_dir, simulate=simulate, interval_s=interval_s, introspect=introspect,
                      time_limit_s=time_limit_s, max_retries=max_retries, checkpoint_every=checkpoint_every,
                      noise=noise, seed=seed, device_type=device_type,
                      objective=getattr(wl, "objective", "makespan"))
    display = None
    if live and not simulate:
        from rich.console import Console

        from saturn.executor.display import LiveDisplay

        display = LiveDisplay(Console())
    ex = build_executor(wl.jobs, wl.cluster, table, options=opts, plan=plan, display=display)
    try:
        if display is not None:
            with display:
                return ex.run_until_done()
        return ex.run_until_done()
    finally:
        ex.backend.shutdown()
        ex.close()


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
