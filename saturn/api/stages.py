"""The middle stages as functions: `profile` and `plan` (= `saturn profile|plan`), and
`profiles_table`, the one place a planner table is loaded (file, DataFrame or the profile store,
with the prior's `estimated` rows, profiling what is missing when allowed).

Each takes the previous stage's output: a Workload (from `saturn.api.workload.load`) -> profile
table -> Plan. The run stage (`run`, `prepare_run`) is `saturn.api.run_stages`, which builds its
executor with `saturn.executor.build`, the same builder as `saturn run` and the `Orchestrator`.
Arrows point one way: cli -> api; workload <- stages <- run_stages.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Iterable, Optional, Union

import pandas as pd

log = logging.getLogger("saturn.api")

PathLike = Union[str, "os.PathLike[str]"]


def profile(workload: Any, **kwargs: Any) -> pd.DataFrame:
    """Measure the workload's options into the profile store (= `saturn profile W.yaml`).

    `workload`: a Workload, a YAML path or YAML text. kwargs go to `saturn.profiler.profile`
    (store_dir, budget_min, force, exhaustive, progress=False, ...). Returns one row per (job,
    option). The trials run here, so the jobs' local files are checked first (the same
    `local_paths` stage as `run`)."""
    from saturn.api.workload import check_paths, load
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
    model (`saturn.prior.rows`), so no job is left unplanned; with `allow_profiling`,
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
    from saturn.profiles.checks import cluster_check
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
    from saturn.prior.rows import with_prior

    return with_prior(wl, table, store_dir)


def plan(workload: Any, profiles: Any = None, *, time_limit_s: float = 30.0, **kwargs: Any) -> Any:
    """Choose technique, GPUs and start time for every job (= `saturn plan W.yaml`).

    profiles: as in `profiles_table` (default: the store; missing profiles raise
    MissingProfilesError with the `saturn profile` command to run). kwargs go to
    `saturn.planner.plan` (mip_gap, warm_start, threads). Returns a `saturn.planner.Plan`."""
    from saturn.api.workload import load
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
