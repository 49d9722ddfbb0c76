"""Optuna decides *what* to train, Saturn decides *how and when*.

    import optuna, saturn
    from saturn.integrations.optuna import optimize

    def make_job(trial):                       # trial params -> a Saturn job
        return saturn.Job(name="lm", model="gpt2-tiny", batch_size=4, seq_len=16, steps=60,
                          precision="fp32", optimizer={"name": "adamw",
                                                       "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True)})

    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.MedianPruner())
    with saturn.Orchestrator(saturn.Cluster(devices="cpu", slots=2), run_dir="runs/hpo") as orch:
        optimize(study, make_job, orch, n_trials=8, batch_size=4)
    print(study.best_params)

How it works: `batch_size` trials are asked at once and submitted in one command, so Saturn's
planner places them together (technique, GPUs, start time); whenever trials end, new ones are asked
to refill the batch (or, with `wait_for_batch=True`, only once the whole batch ended). While jobs
run, every new intermediate loss becomes `trial.report(loss, step)`; when `trial.should_prune()`
says so the job is cancelled (it checkpoints and exits, and the executor re-plans its GPUs for the
remaining jobs at once) and the trial is told PRUNED. A completed job's final loss (or
`objective(report)`) is told as the trial's value; a failed job's trial is told FAIL.

Optuna is an optional dependency: `pip install optuna`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Optional, Sequence, Union

from saturn.api import JobReport, Orchestrator

log = logging.getLogger(__name__)

__all__ = ["optimize"]


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - exercised only without optuna
        raise ImportError("saturn.integrations.optuna needs Optuna: pip install optuna") from exc
    return optuna


def _job_of(trial: Any, made: Any, orch: Orchestrator) -> Any:
    from saturn.spec import Job

    job = Job.model_validate(made) if isinstance(made, dict) else made
    if job.name in orch:  # every trial needs its own job name
        job = job.model_copy(update={"name": f"{job.name}-t{trial.number}"})
        job = Job.model_validate(job.model_dump())
    return job


def _aligned(metrics: Sequence[tuple[int, float]], last: int, every: int, done: bool) -> list[tuple[int, float]]:
    """Intermediate values to report after step `last`: one per multiple of `every` (so that
    pruners compare trials at the same steps; a step without its own value takes the newest one
    before it), plus the final step once the job is done."""
    out, i = [], 0
    newest = metrics[-1][0]
    m = (last // every + 1) * every
    while m <= newest:
        while i + 1 < len(metrics) and metrics[i + 1][0] <= m:
            i += 1
        if metrics[i][0] <= m:
            out.append((m, float(metrics[i][1])))
        m += every
    if done and newest > (out[-1][0] if out else last):
        out.append((newest, float(metrics[-1][1])))
    return out


def optimize(study: Any, make_job: Callable[[Any], Any], orchestrator: Orchestrator, n_trials: int, *,
             batch_size: Optional[int] = None,
             objective: Optional[Callable[[JobReport], Union[float, Sequence[float]]]] = None,
             report_every: int = 1, poll_s: float = 0.25, timeout_s: Optional[float] = None,
             wait_for_batch: bool = False, profiles: Any = None,
             callbacks: Optional[list[Callable[[Any, Any], None]]] = None) -> dict[int, JobReport]:
    """Run `n_trials` trials of `study` as Saturn jobs on `orchestrator`; returns {trial number: JobReport}.

    make_job(trial) -> saturn.Job (or a dict of its fields): sample the trial's parameters with
        `trial.suggest_*` and map them onto the job; raise optuna.TrialPruned to skip a trial. A job
        name already used in the orchestrator gets "-t<trial number>" appended.
    batch_size: trials in flight at once (default: twice the cluster's GPUs), asked together so
        the planner sees them together.
    objective(report) -> value(s) told to Optuna (default: the job's final loss).
    report_every: report intermediate values at the multiples of this many steps (and the last
        step); pruning checks follow each poll that reported something.
    timeout_s: ask no new trial after this many seconds (like `study.optimize(timeout=...)`;
        running trials finish). wait_for_batch: refill only when the
        whole batch has ended (synchronous generations). profiles: passed to `submit`.
    callbacks: called as cb(study, frozen_trial) after each trial is told, as in Optuna.
    On an exception (or Ctrl-C) the in-flight jobs are cancelled and their trials told FAIL.
    """
    optuna = _optuna()
    TrialState = optuna.trial.TrialState
    if batch_size is None:
        nodes = getattr(orchestrator.cluster, "nodes", None) or []
        batch_size = max(1, 2 * sum(int(n.gpus) for n in nodes))
    if batch_size < 1 or n_trials < 0:
        raise ValueError("batch_size must be >= 1 and n_trials >= 0")
    multi = len(study.directions) > 1
    t_end = None if timeout_s is None else time.monotonic() + timeout_s
    results: dict[int, JobReport] = {}
    active: dict[str, dict] = {}  # job name -> {"trial", "future", "last"}
    stopping = []  # futures of pruned jobs (cancelled; waited for at the end)
    asked = 0

    def tell(trial: Any, state: Any = None, values: Any = None) -> None:
        ft = study.tell(trial, values, state=state)
        for cb in callbacks or ():
            cb(study, ft)

    def finish(name: str, rep: JobReport) -> None:
        ent = active.pop(name)
        trial = ent["trial"]
        results[trial.number] = rep
        for k, v in (("saturn_status", rep.status), ("saturn_steps", rep.step),
                     ("saturn_checkpoint", rep.checkpoint), ("saturn_technique", rep.technique),
                     ("saturn_gpus", len(rep.gpus))):
            trial.set_user_attr(k, v)
        if rep.status == "completed":
            try:
                value = objective(rep) if objective is not None else rep.loss
            except Exception as exc:  # noqa: BLE001 - a bad objective fails the trial only
                log.warning("objective of trial %d failed: %s", trial.number, exc)
                value = None
            vals = list(value) if isinstance(value, (list, tuple)) else [value]
            if any(v is None or not math.isfinite(float(v)) for v in vals):
                tell(trial, TrialState.FAIL)
            else:
                tell(trial, None, [float(v) for v in vals] if multi else float(vals[0]))
        elif rep.status == "cancelled" and rep.metrics and not multi:
            tell(trial, TrialState.PRUNED)  # cancelled from outside: as good as pruned
        else:
            trial.set_user_attr("saturn_reason", (rep.reason or "")[-500:])
            tell(trial, TrialState.FAIL)

    try:
        while True:
            can_ask = asked < n_trials and (t_end is None or time.monotonic() < t_end)
            if can_ask and len(active) < batch_size and not (wait_for_batch and active):
                k = min(batch_size - len(active), n_trials - asked)
                trials, jobs = [], []
                for _ in range(k):
                    trial = study.ask()
                    asked += 1
                    try:
                        job = _job_of(trial, make_job(trial), orchestrator)
                    except optuna.TrialPruned:
                        tell(trial, TrialState.PRUNED)
                        continue
                    except Exception:
                        tell(trial, TrialState.FAIL)
                        raise
                    if any(job.name == j.name for j in jobs):
                        job = job.model_copy(update={"name": f"{job.name}-t{trial.number}"})
                    trial.set_user_attr("saturn_job", job.name)
                    trials.append(trial)
                    jobs.append(job)
                if jobs:
                    for trial, job, fut in zip(trials, jobs, orchestrator.submit_many(jobs, profiles=profiles)):
                        active[job.name] = {"trial": trial, "future": fut, "last": 0}
                continue
            if not active:
                break
            for name, ent in list(active.items()):
                fut, trial = ent["future"], ent["trial"]
                done = fut.done()
                rep = fut.report()
                new = False
                if not multi and rep.metrics:
                    for step, loss in _aligned(rep.metrics, ent["last"], report_every, done):
                        trial.report(loss, step)
                        ent["last"] = step
                        new = True
                if done:
                    finish(name, fut.result())
                elif new and trial.should_prune():
                    log.info("trial %d pruned at step %d: cancelling job %s", trial.number, ent["last"], name)
                    orchestrator.cancel(name, reason="pruned")
                    trial.set_user_attr("saturn_pruned_at_step", ent["last"])
                    tell(trial, TrialState.PRUNED)
                    results[trial.number] = rep
                    stopping.append((trial.number, fut))
                    del active[name]
            time.sleep(poll_s)
    except BaseException:
        for name, ent in list(active.items()):
            try:
                orchestrator.cancel(name, reason="optimize aborted")
            except Exception:  # noqa: BLE001
                pass
            try:
                study.tell(ent["trial"], state=TrialState.FAIL, skip_if_finished=True)
            except Exception:  # noqa: BLE001
                pass
        raise
    for number, fut in stopping:  # pruned jobs checkpoint and exit; report their final state
        try:
            results[number] = fut.result(timeout=120)
        except TimeoutError:
            log.warning("pruned job %s has not stopped after 120 s", fut.name)
    return results
