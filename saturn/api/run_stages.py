"""The run stage: `run(workload)` (= `saturn run`), and the stages every front door takes before
a run starts: `saturn run`, `saturn.run()` (and the `Orchestrator` for its jobs' measurements).

    prep = prepare_run(workload, profiles=None, require_measured=False, run_dir=...)
    prep.stages   # ["load", "local_paths", "run_dir", "profiles", "measure_in_run"]

1. `load`: the workload, its cluster resolved (local devices probed, Ray discovered).
2. `local_paths`: the files the jobs need exist here (runs that execute here only).
3. `run_dir`: a fresh, writable run directory (default runs/<workload>-<time>); a plan (a file or
   one handed in) is read and checked against every job's constraints (`plan_check`,
   saturn.api.plan_check).
4. `profiles`: the per-job table from the store (or the given table); every option no row covers
   gets an `estimated` row from the prior cost model (never a separate trial process).
5. `require_measured` (with --require-measured): refuse a plan that rests on numbers nobody
   measured, naming each job, option and label.
6. `measure_in_run`: when the rows come from this machine's store and the jobs run here, a
   `RunMeasurer` (saturn.profiles.inrun) turns the first attempt of every unmeasured option into
   its measurement; otherwise a warning names the options that stay unmeasured.
7. `fused_groups` (`fuse=True`, `saturn run --fuse`): jobs of one shape are measured fused at a
   few widths in a separate process (`saturn.fused.measure`) and the group rows join the table.

Arrows point one way: `workload` (stage 1) <- `stages` (profile table, plan) <- this module.

Why one function: the two doors used to differ (one re-profiled guessed options in separate
processes before the run, the other did not); the list of stages taken is returned so a test can
check that they no longer do.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pandas as pd

from saturn.executor import defaults

log = logging.getLogger("saturn.api")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class PreparedRun:
    """What a run starts from: the workload (cluster resolved), the per-job profile table, the
    run directory, the in-run measurer (None: nothing to measure here), the stages taken and
    their timings (seconds), and the notes shown to the user."""

    workload: Any
    table: pd.DataFrame
    run_dir: Path
    plan: Any = None  # a plan to start from (a plan file is read and checked against the workload)
    measurer: Any = None
    stages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _described(raw: Any) -> bool:
    """The spec names its nodes or a Ray cluster: the jobs do not run on this machine's probe."""
    c = raw.cluster
    return bool(getattr(c, "nodes", None)) or getattr(c, "ray", None) is not None


def prepare_run(workload: Any, profiles: Any = None, *, simulate: bool = False, require_measured: bool = False,
                store_dir: Optional[PathLike] = None, run_dir: Optional[PathLike] = None,
                time_limit_s: Optional[float] = None, plan: Any = None, run_dir_hint: str = "",
                run_dir_flag: str = "run_dir", say: Callable[[str], None] = print,
                device_type: str = "auto", fuse: bool = False) -> PreparedRun:
    """Take the stages above for `workload` (a Workload, YAML path or text); see the module
    docstring. Raises SaturnError (exit 2) before any work when a stage refuses."""
    from saturn.api.workload import as_workload, check_paths, load
    from saturn.env import check_environment
    from saturn.executor.build import check_fresh_run_dir, default_run_dir
    from saturn.executor.defaults import TIME_LIMIT_S
    from saturn.paths import check_writable_dir

    check_environment()  # a bad SATURN_* value: exit 2 before the run directory or journal exists
    t0 = time.perf_counter()
    stages: list[str] = []
    timings: dict[str, float] = {}
    notes: list[str] = []
    raw = as_workload(workload)
    wl = load(raw)  # parsed once: `raw` keeps the cluster as the user described it
    stages.append("load")
    timings["load_s"] = time.perf_counter() - t0
    if not simulate and wl.cluster.ray is None:  # the jobs run here: their files must be here
        check_gpus_here(raw, device_type, workload)
        check_paths(wl)
        stages.append("local_paths")
    # the run directory and a plan file are checked before any work (measuring, planning)
    path = Path(run_dir) if run_dir is not None else default_run_dir(wl.name)
    check_fresh_run_dir(path, run_dir_hint.format(run_dir=path))
    check_writable_dir(path, run_dir_flag)
    stages.append("run_dir")
    if plan is not None:  # a plan file or a plan handed in: checked against every job's constraints
        from saturn.api.plan_check import as_checked_plan

        plan = as_checked_plan(plan, wl, f"--plan {plan}" if isinstance(plan, (str, os.PathLike)) else "plan")
        stages.append("plan_check")
    t1 = time.perf_counter()
    table, from_store = _profiles(wl, profiles, simulate=simulate, store_dir=store_dir, notes=notes)
    stages.append("profiles")
    timings["profiles_s"] = time.perf_counter() - t1
    unmeasured = _unmeasured(table)
    if require_measured:
        stages.append("require_measured")
        _refuse_unmeasured(wl, table, unmeasured, TIME_LIMIT_S if time_limit_s is None else time_limit_s)
    measurer = None
    if not simulate:
        stages.append("measure_in_run")
        measurer = _measurer(raw, wl, table, unmeasured, from_store=from_store, store_dir=store_dir,
                             run_id=_run_id(path), notes=notes)
    if fuse and not simulate:  # measured group rows join the table as planner options (saturn.fused)
        from saturn.fused.measure import measure_groups

        t2 = time.perf_counter()
        rows, note = measure_groups(wl, path / "fused")
        if rows:
            table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
        notes.append(note)
        stages.append("fused_groups")
        timings["fused_groups_s"] = time.perf_counter() - t2
    for n in notes:
        say(n)
    timings["prepare_s"] = time.perf_counter() - t0
    return PreparedRun(wl, table, path, plan, measurer, stages, timings, notes)


def _run_id(path: Path) -> str:
    """The run's name in its measured rows' `source` ("run:<id>"): the resolved directory's name
    (`--run-dir .` named it "", so the rows said "run:")."""
    full = path.resolve()
    return full.name or str(full)


def check_gpus_here(raw: Any, device_type: str = "auto", source: Any = None) -> None:
    """A workload whose cluster names GPU nodes trains here only where those GPUs are: otherwise
    `saturn run` would train (say) GPT-2 medium on a laptop's CPU for hours. A SaturnError (exit 2)
    naming the ways to try it here; `--devices cpu` (device_type="cpu") trains on the CPU anyway."""
    c = raw.cluster
    if not getattr(c, "nodes", None) or c.ray is not None or device_type == "cpu" or c.devices == "cpu":
        return
    gpu_nodes = [n for n in c.nodes if str(n.gpu_type).lower() != "cpu"]
    if not gpu_nodes:
        return
    need = max(n.gpus for n in gpu_nodes)
    try:
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        have = 0
    if have >= need:
        return
    from saturn.errors import SaturnError

    named = isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source)
    path = str(source) if named else "WORKLOAD.yaml"
    nodes = ", ".join(f"{n.name}: {n.gpus}x {n.gpu_type}" for n in gpu_nodes[:4])
    nodes += " ..." if len(gpu_nodes) > 4 else ""
    raise SaturnError(f"{path}: its cluster describes GPU nodes ({nodes}) but this machine has {have} CUDA GPU(s), "
                      f"so the jobs cannot run here as planned. To try it here: `saturn run {path} --simulate` "
                      "(a virtual clock at profiled speed, no training), or a cluster of CPU slots in the YAML "
                      "(`cluster: {devices: cpu, slots: 2}`); `saturn plan` plans for the described cluster without "
                      "running it; `--devices cpu` trains on this machine's CPU anyway.")


def _profiles(wl: Any, profiles: Any, *, simulate: bool, store_dir: Optional[PathLike],
              notes: list[str]) -> tuple[pd.DataFrame, bool]:
    """(per-job table, whether it comes from the profile store). Options no row covers get
    `estimated` rows from the prior (saturn.api.stages.profiles_table): no trial process here."""
    from saturn.api.stages import profiles_table

    table = profiles_table(wl, profiles, store_dir=store_dir)
    return table, profiles is None


def _unmeasured(table: pd.DataFrame) -> pd.DataFrame:
    """The rows whose numbers nobody measured (saturn.planner.provenance.nobody_measured)."""
    from saturn.planner.provenance import nobody_measured

    return table[[nobody_measured(r) for r in table.to_dict("records")]] if len(table) else table


def _refuse_unmeasured(wl: Any, table: pd.DataFrame, unmeasured: pd.DataFrame, time_limit_s: float) -> None:
    """--require-measured: refuse when the plan would use a row nobody measured."""
    if not len(unmeasured):
        return
    from saturn.errors import SaturnError
    from saturn.planner import plan
    from saturn.planner.provenance import annotate

    p = annotate(plan(wl.jobs, wl.cluster, table, time_limit_s=time_limit_s), table)
    nobody = {(str(r["job"]), str(r["technique"]), int(r["gpus"])) for r in unmeasured.to_dict("records")}
    g = [a for a in p.assignments if (a.job, a.technique, len(a.gpus)) in nobody]
    if not g:
        return
    desc = "; ".join(f"{a.job} ({a.technique} on {len(a.gpus)} GPU(s): {a.provenance}"
                     + (f", {a.source}" if a.source else "") + ")" for a in g)
    path = getattr(wl, "path", None) or "WORKLOAD.yaml"
    raise SaturnError(f"--require-measured: the plan would rest on numbers nobody measured: {desc}. "
                      f"Measure them with `saturn profile {path}` on that hardware, or run without "
                      "--require-measured (the jobs' own first steps measure them).")


def _measurer(raw: Any, wl: Any, table: pd.DataFrame, unmeasured: pd.DataFrame, *, from_store: bool,
              store_dir: Optional[PathLike], run_id: str, notes: list[str]) -> Any:
    """A RunMeasurer when the run can measure here what nobody measured, or (all measured) to
    record an attempt that ran out of memory here (#33); else a warning."""
    from saturn.spec.signature import inputs_hash

    if not len(unmeasured):
        if not from_store or _described(raw):
            return None
        from saturn.profiler.hardware import hardware_for_cluster
        from saturn.profiles.inrun import RunMeasurer

        return RunMeasurer(signatures={j.name: str(j.signature) for j in wl.jobs}, table=table,
                           hardware=hardware_for_cluster(wl.cluster).key(), run_id=run_id, store_dir=store_dir,
                           inputs={j.name: inputs_hash(j) for j in wl.jobs})
    opts = "; ".join(sorted({f"{r['job']} ({r['technique']} on {int(r['gpus'])} GPU(s))"
                             for r in unmeasured.to_dict("records")}))
    if not from_store:
        notes.append(f"WARNING: the given profile table has unmeasured rows, used as they are: {opts}")
        return None
    if _described(raw):
        notes.append(f"WARNING: running on unmeasured numbers (the cluster is described, not this machine): {opts}")
        return None
    from saturn.paths import check_writable_dir
    from saturn.profiler.hardware import hardware_for_cluster
    from saturn.profiles.inrun import RunMeasurer
    from saturn.profiles.store import check_writable_store

    where = check_writable_store(store_dir)  # measurements are written there: checked before any work
    check_writable_dir(where, "profile store", "the run writes its measurements there: set $SATURN_PROFILES "
                       "to a writable directory")
    hw = hardware_for_cluster(wl.cluster)
    jobs = sorted({str(r["job"]) for r in unmeasured.to_dict("records")})
    notes.append(f"measuring as it runs: {len(jobs)} job(s) start on options nobody measured; the first "
                 "attempt of each option measures it into the profile store")
    return RunMeasurer(signatures={j.name: str(j.signature) for j in wl.jobs}, table=table, hardware=hw.key(),
                       run_id=run_id, store_dir=store_dir, inputs={j.name: inputs_hash(j) for j in wl.jobs})


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
