"""`profile(workload)`: measure every distinct profile signature x technique x GPU count.

Flow: group the jobs by profile signature (a learning-rate sweep is profiled once) -> ask each
allowed technique for its static feasibility and knob candidates per allowed GPU count -> the
smart `Search` reveals the trials worth running -> the `Runner` runs them side by side on the free
devices -> each finished trial is written to the profile store at once (atomic) -> the store rows of
this workload come back, one per job (with a `job` column, ready for the planner).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import pandas as pd

from saturn.errors import SaturnError
from saturn.paths import check_writable_dir
from saturn.profiler.cells import allowed_techniques, cell_for, gpu_counts, job_signature
from saturn.profiler.hardware import Hardware, hardware_for_cluster
from saturn.profiler.ingest import ingest_columns
from saturn.profiler.runner import Runner, call_trial, call_trial_in_process
from saturn.profiler.search import SHORT_CHECK_TECHNIQUES, CellInput, Search, Skip, TrialSpec, canonical_knobs
from saturn.profiler.table import ProfileStore, checkpoint_cost_s, estimate_runtime_s, fixed_costs, now_iso
from saturn.profiles.store import check_writable_store, failure_applies
from saturn.spec.signature import inputs_hash

log = logging.getLogger(__name__)

DEFAULT_STEPS = 5
DEFAULT_SHORT_STEPS = 2
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_MIN_SPEEDUP = 1.15


@dataclass
class ProfileReport:
    """What a profile run did (also in `df.attrs['report']` of `profile()`'s result)."""

    hardware: dict[str, Any]
    store: str
    signatures: int = 0
    trials_run: int = 0
    reused: int = 0
    timed_out: int = 0
    static_infeasible: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    sequential_s: float = 0.0  # sum of trial wall times: what running them one by one would take
    budget_hit: bool = False

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _load(workload: Any) -> Any:
    from saturn.techniques.checks import check_workload, load_workload

    if isinstance(workload, (str, os.PathLike)):
        return load_workload(workload)
    return check_workload(workload)


def profile(workload: Any, *, store_dir: Union[str, os.PathLike, None] = None,
            budget_min: Optional[float] = None, force: bool = False, progress: bool = True,
            steps: int = DEFAULT_STEPS, short_steps: int = DEFAULT_SHORT_STEPS,
            timeout_s: float = DEFAULT_TIMEOUT_S, min_speedup: float = DEFAULT_MIN_SPEEDUP,
            isolation: str = "thread", devices: Optional[list[int]] = None,
            grace_s: Optional[float] = None, warmup_steps: int = 2,
            console: Any = None, exhaustive: bool = False) -> pd.DataFrame:
    """Profile `workload` (a Workload or a YAML path) and return its rows, one per (job, row).

    Existing store rows for the same key (signature, technique, knobs, GPU count, hardware) are
    reused unless `force`. `budget_min`: no new trial starts after that many minutes (what was
    skipped is in the report). `isolation`: 'thread' (the technique launches its own processes),
    'process' (the trial call runs in a fresh process too) or 'auto' (process for techniques
    outside `saturn.techniques`). `warmup_steps`: untimed steps a trial runs before its timed
    ones (the built-in techniques' default, 2), to split its wall time into steps and fixed cost.
    Trials are ordered by value (`saturn.profiler.value`): the prior's likeliest winner of every
    signature first, then only trials that could pay for themselves; `exhaustive` measures every
    option instead (the GPU ladder and memory tiers still apply).
    The result's `attrs['report']` is a `ProfileReport` dict.
    """
    if isolation not in ("thread", "process", "auto"):
        raise SaturnError(f"isolation must be thread, process or auto, not {isolation!r}")
    if budget_min is not None and not budget_min > 0:
        raise SaturnError(f"--budget-min must be a positive number of minutes, got {budget_min}")
    workload = _load(workload)
    hw = hardware_for_cluster(workload.cluster)
    nodes = list(workload.cluster.resolved().nodes or [])
    max_node = max(n.gpus for n in nodes)
    pool = list(devices) if devices is not None else list(range(hw.gpus))
    limit = min(max_node, len(pool))
    store = ProfileStore(store_dir)
    # profiling writes every trial there: refuse an unwritable store before the first trial
    check_writable_store(store.dir)  # never the shipped seed tables
    check_writable_dir(store.dir, "profile store", "profiling writes its measurements there: pass --store DIR "
                       "or set $SATURN_PROFILES to a writable directory")
    report = ProfileReport(hardware=hw.key(), store=str(store.path))

    # 1. one representative job per signature; allowed sets are unioned over its jobs
    groups: dict[str, list[Any]] = {}
    for job in workload.jobs:
        groups.setdefault(job_signature(job), []).append(job)
    report.signatures = len(groups)

    from saturn.techniques.registry import get_technique

    techniques: dict[str, Any] = {}
    cells: list[CellInput] = []
    static_rows: list[dict[str, Any]] = []
    rep_job: dict[str, Any] = {}
    for sig, jobs in groups.items():
        rep = rep_job[sig] = jobs[0]
        names = _union(allowed_techniques(j) for j in jobs)
        counts = sorted(set().union(*(gpu_counts(j, max_node) for j in jobs)))
        for name in names:
            if name not in techniques:
                techniques[name] = get_technique(name)  # SpecError for unknown names
            tech = techniques[name]
            for g in counts:
                if g > limit:
                    report.skipped.append(_skip_dict(Skip(sig, name, g, None, (
                        f"{g} GPUs: more than this machine lends ({len(pool)}) or the largest "
                        f"node has ({max_node})"))))
                    continue
                cell = cell_for(tech, name, rep, sig, g)
                cells.append(cell)
                if cell.infeasible_reason is not None:
                    static_rows.append(trial_row(rep, sig, name, g, "{}", hw, {
                        "status": "infeasible", "reason": cell.infeasible_reason}, 0, False, 0.0))

    # 2. what the store already knows
    table = store.load()
    known: dict[tuple, tuple[str, Optional[float]]] = {}
    if not force and len(table):
        mine = table[[hw.matches(r) for r in table.to_dict("records")]]
        inputs = {sig: inputs_hash(rep_job[sig]) for sig in groups}
        for r in mine.to_dict("records"):
            if (r["signature"] in groups and r["status"] != "infeasible"
                    and not str(r.get("source") or "").startswith("sample")  # never reuse samples
                    and failure_applies(r, inputs[r["signature"]])):  # a failure of other inputs: retried
                step = r.get("step_time_s")
                step = None if step is None or (isinstance(step, float) and math.isnan(step)) else float(step)
                known[(r["signature"], r["technique"], canonical_knobs(r["knobs"]), int(r["gpus"]))] = (
                    str(r["status"]), step)
    if static_rows:
        store.upsert(static_rows)
    report.static_infeasible = len(static_rows)

    short_check = {n for n, t in techniques.items()
                   if n in SHORT_CHECK_TECHNIQUES or getattr(t, "name", None) in SHORT_CHECK_TECHNIQUES
                   or getattr(t, "profile_short_check", False)}
    prior = None if exhaustive else _trial_priors(workload, cells, rep_job, table, hw, store.dir,
                                                  steps=steps, warmup_steps=warmup_steps)
    steps_by_sig = {sig: float(sum(j.total_steps for j in jobs)) for sig, jobs in groups.items()}
    search = Search(cells, steps=steps, short_steps=short_steps, min_speedup=min_speedup,
                    known=known, short_check=short_check, prior=prior,
                    steps_by_signature=steps_by_sig, devices=limit,
                    jobs_by_signature={sig: len(jobs) for sig, jobs in groups.items()})

    # 3. run
    grace = grace_s if grace_s is not None else min(60.0, max(5.0, 0.25 * timeout_s))
    def execute(trial: TrialSpec, ids: list[int], timeout: float) -> dict[str, Any]:
        job = rep_job[trial.signature]
        name = trial.technique
        proc = isolation == "process" or (
            isolation == "auto" and not type(techniques[name]).__module__.startswith("saturn.techniques."))
        if proc:
            return call_trial_in_process(name, job, ids, trial, timeout, grace_s=grace / 2)
        return call_trial(techniques[name], job, ids, trial, timeout)

    def on_result(trial: TrialSpec, outcome: dict[str, Any], ids: list[int], wall: float) -> None:
        row = trial_row(rep_job[trial.signature], trial.signature, trial.technique, trial.gpus,
                   trial.knobs, hw, outcome, trial.steps, trial.short, wall, warmup_steps)
        store.upsert([row])

    bar = _Progress(enabled=progress, console=console)
    runner = Runner(pool, execute, timeout_s=timeout_s, grace_s=grace,
                    budget_s=None if budget_min is None else budget_min * 60.0,
                    on_result=on_result, on_progress=bar.update)
    t0 = time.monotonic()
    try:
        with bar:
            stats = runner.run(search)
    finally:
        report.wall_s = time.monotonic() - t0
    report.trials_run = stats.run
    report.reused = len(search.reused)
    report.timed_out = stats.timed_out
    report.sequential_s = stats.busy_s
    report.budget_hit = bool(stats.skipped)
    report.skipped.extend(_skip_dict(s) for s in search.skipped)

    # 4. this workload's rows, one per job
    df = workload_rows(store.load(), workload, hw)
    df.attrs["report"] = report.to_dict()
    return df


def _trial_priors(workload: Any, cells: list[CellInput], rep_job: dict[str, Any], table: pd.DataFrame,
                  hw: Hardware, store_dir: Any, *, steps: int, warmup_steps: int) -> Optional[dict]:
    """The prior for the value rule (None when it cannot be had: the search then measures the
    old way, every option the ladder and tiers allow)."""
    from saturn.prior.machine import load_or_probe
    from saturn.prior.rows import trial_priors

    try:
        threads = max(1, (os.cpu_count() or 1) // max(1, hw.gpus)) if hw.gpu_type == "cpu" else None
        rates = load_or_probe(hw, store_dir, cpu_threads=threads)
        return trial_priors(workload, cells, rep_job, table, rates, hw.gpu_type, hw.gpu_memory_gb,
                            steps=steps, warmup_steps=warmup_steps)
    except Exception as exc:  # noqa: BLE001 - without a prior the search still works
        log.warning("no prior for ordering trials (%s); measuring every option", exc)
        return None


def workload_rows(table: pd.DataFrame, workload: Any, hw: Optional[Hardware] = None) -> pd.DataFrame:
    """Store rows of `workload`'s jobs (matching `hw` when given), with `job` and
    `runtime_s` (the estimate for the job's steps) columns added; allowed techniques/counts only."""
    if hw is not None and len(table):
        table = table[[hw.matches(r) for r in table.to_dict("records")]]
    parts = []
    for job in workload.jobs:
        sig = job_signature(job)
        rows = table[table["signature"] == sig]
        if getattr(job, "techniques", None):
            rows = rows[rows["technique"].isin(list(job.techniques))]
        if getattr(job, "gpus", None):
            rows = rows[rows["gpus"].isin(list(job.gpus))]
        if not len(rows):
            continue
        rows = rows.copy()
        rows.insert(0, "job", job.name)
        steps = job.total_steps
        rows["runtime_s"] = [estimate_runtime_s(r, steps) for r in rows.to_dict("records")]
        parts.append(rows)
    if not parts:
        return pd.DataFrame(columns=["job", *table.columns, "runtime_s"])
    return pd.concat(parts, ignore_index=True)


def _union(lists) -> list[str]:
    out: list[str] = []
    for items in lists:
        for x in items:
            if x not in out:
                out.append(x)
    return out


def trial_row(job: Any, sig: str, technique: str, gpus: int, knobs: str, hw: Hardware,
         outcome: dict[str, Any], steps: int, short: bool, wall: float,
         warmup_steps: int = 2) -> dict[str, Any]:
    status = str(outcome.get("status", "failed"))
    ok = status == "ok"
    step = _f(outcome.get("step_time_s")) if ok else None
    # a trial that had to start its warm worker spent that first: the planner adds the worker
    # start only where a worker must start (policy.worker_start_blocks), so launch_s leaves it out
    cold = _f(outcome.get("worker_start_s"))
    wall -= cold or 0.0
    first = _f(outcome.get("startup_s"))
    if first is not None and cold:
        first = max(0.0, first - cold)
    ckpt = _f(outcome.get("checkpoint_s"))  # the trial timed one save (training.train)
    ckpt_source = "measured" if ckpt is not None else "estimated"
    # the trial's wall includes that save: launch_s (start-up + teardown) must not count it twice
    launch = fixed_costs(step, wall - (ckpt or 0.0), steps, first, warmup_steps) if ok else None
    teardown = None
    if ok and first is not None and step is not None:  # wall = S + (warm-up + timed - 1) t + save + D
        teardown = round(max(0.0, wall - first - (warmup_steps + steps - 1) * step - (ckpt or 0.0)), 4)
    ckpt = checkpoint_cost_s(job, hw.gpu_type) if ckpt is None else ckpt
    return {
        "signature": sig, "technique": technique, "knobs": knobs, "gpus": int(gpus),
        **hw.key(),
        "status": status, "feasible": ok,
        "step_time_s": step,
        "peak_mem_gb": _f(outcome.get("peak_mem_gb")),
        # the workers' host memory, sampled (saturn.runtime.causes); a host_oom row also says what
        # the node allowed: the option is infeasible on a host of that size
        "host_peak_gb": _f(outcome.get("host_peak_gb")),
        **({"host_memory_gb": _f(outcome.get("host_limit_gb"))} if status == "host_oom" else {}),
        "startup_s": None if launch is None else round(launch + ckpt, 4),  # what the planner adds
        "launch_s": launch,
        "worker_start_s": cold,
        "checkpoint_s": ckpt,
        "checkpoint_stage_s": _f(outcome.get("checkpoint_stage_s")),
        "checkpoint_gb": _f(outcome.get("checkpoint_gb")),
        "checkpoint_source": ckpt_source if ok else None,
        "first_step_s": first,
        "teardown_s": teardown,
        "steps": int(steps), "short": bool(short),
        "reason": str(outcome.get("reason") or "")[:500],
        # what a failure depended on (factory module contents, spec structure): retried when it changes
        "inputs_hash": inputs_hash(job) if status not in ("ok", "infeasible") else "",
        "trial_s": round(float(wall), 3),
        "measured_at": now_iso(),
        "model": job.model.label() if hasattr(job.model, "label") else str(job.model),
        "batch_size": getattr(job, "batch_size", None),
        "seq_len": getattr(job, "seq_len", None),
        "precision": getattr(job, "precision", None),
        **(ingest_columns(job, step, outcome) if ok else {}),  # additive: input cost (profiler.ingest)
    }


def _f(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _skip_dict(s: Skip) -> dict[str, Any]:
    return {"signature": s.signature, "technique": s.technique, "gpus": s.gpus,
            "knobs": s.knobs, "reason": s.reason}


class _Progress:
    """A rich progress bar: trials done / (done + still expected), elapsed and time left."""

    def __init__(self, enabled: bool, console: Any = None):
        self.enabled = enabled
        self._bar: Any = None  # rich.progress.Progress once entered (rich is imported lazily)
        self._task: Any = None
        self._console = console
        self._durations: list[float] = []

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            if self._console is None:
                from rich.console import Console

                self._console = Console(stderr=True)
            self._bar = Progress(TextColumn("[bold]profiling[/]"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("trials"), TimeElapsedColumn(), TextColumn("left"),
                                 TimeRemainingColumn(), TextColumn("{task.description}"),
                                 console=self._console, transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=None)
        return self

    def update(self, runner: Runner, search: Search) -> None:
        if self._bar is None:
            return
        done = runner.done_count
        left = search.remaining_estimate()
        running = runner.running()
        what = ", ".join(t.label() for t in running[:2]) + (" ..." if len(running) > 2 else "")
        self._bar.update(self._task, completed=done, total=done + left, description=what[:80])

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
