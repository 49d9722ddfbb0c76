"""Optuna decides *what* to train, Saturn decides *how and when*.

    import optuna, saturn
    from saturn.integrations.optuna import optimize

    def objective(trial):                      # an Optuna objective that returns the job to train
        return saturn.Job(name="lm", model="gpt2-tiny", batch_size=4, seq_len=16, steps=60,
                          precision="fp32", optimizer={"name": "adamw",
                                                       "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True)})

    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.MedianPruner())
    with saturn.Orchestrator(saturn.Cluster(devices="cpu", slots=2), run_dir="runs/hpo") as orch:
        optimize(study, objective, orch, n_trials=8, n_jobs=4, timeout=600)
    print(study.best_params)

How it works: `n_jobs` trials are asked at once and submitted in one command, so Saturn's
planner places them together (technique, GPUs, start time); whenever trials end, new ones are asked
to refill the batch (or, with `wait_for_batch=True`, only once the whole batch ended). While jobs
run, every new intermediate loss becomes `trial.report(loss, step)`; when `trial.should_prune()`
says so the job is cancelled (it checkpoints and exits, and the executor re-plans its GPUs for the
remaining jobs at once) and the trial is told PRUNED. A completed job's final loss (or
`value(report)`) is told as the trial's value; a failed job's trial is told FAIL with the real
reason (OOM text, exit code, last log lines) in its `saturn_reason` user attribute.

Optuna conventions: `timeout` (seconds, no new trial after it), `n_jobs` (trials in flight),
`catch` (exception types that fail a trial without stopping the study), `callbacks`. An exception
raised by the objective or by `value(report)` fails its trial and is re-raised unless it is an
instance of `catch` (as in `study.optimize`). An objective may also return the trial's value(s)
itself: that trial ran in this process and is told at once. A failed submit fails every trial
asked for it (none stays RUNNING in the storage).

Optuna is an optional dependency: `pip install optuna`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Optional, Sequence, Union

from saturn.api import JobReport, Orchestrator
from saturn.errors import SaturnError

log = logging.getLogger(__name__)

__all__ = ["optimize"]


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - exercised only without optuna
        raise ImportError("saturn.integrations.optuna needs Optuna: pip install optuna") from exc
    return optuna


def _values(made: Any) -> Optional[list[float]]:
    """The value(s) an in-process Optuna objective returned, or None if `made` is not numbers."""
    vals = list(made) if isinstance(made, (list, tuple)) else [made]
    if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return [float(v) for v in vals]
    return None


def _job_of(trial: Any, made: Any, orch: Orchestrator) -> Any:
    from saturn.spec import Job

    job = Job.model_validate(made) if isinstance(made, dict) else made
    if not hasattr(job, "name") or not hasattr(job, "model_copy"):
        raise SaturnError(f"the objective returned {type(made).__name__} for trial {trial.number}: return a "
                          "saturn.Job (or a dict of its fields) for Saturn to train, or the trial's value(s)")
    if job.name in orch:  # every trial needs its own job name
        job = job.model_copy(update={"name": f"{job.name}-t{trial.number}"})
        job = Job.model_validate(job.model_dump())
    return job


def aligned_reports(metrics: Sequence[tuple[int, float]], last: int, every: int, done: bool) -> list[tuple[int, float]]:
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


def optimize(study: Any, func: Callable[[Any], Any], orchestrator: Orchestrator,
             n_trials: Optional[int] = None, timeout: Optional[float] = None, n_jobs: Optional[int] = None,
             catch: Union[type, tuple] = (), callbacks: Optional[list[Callable[[Any, Any], None]]] = None, *,
             objective: Optional[Callable[[JobReport], Union[float, Sequence[float]]]] = None,
             report_every: int = 1, poll_s: float = 0.25, wait_for_batch: bool = False,
             profiles: Any = None) -> dict[int, JobReport]:
    """Run trials of `study` as Saturn jobs on `orchestrator`, like `study.optimize(func, ...)`;
    returns {trial number: JobReport} (trials whose objective returned a value have no report).

    func(trial) -> saturn.Job (or a dict of its fields): sample the trial's parameters with
        `trial.suggest_*` and map them onto the job; raise optuna.TrialPruned to skip a trial; or
        return the value(s) directly (a plain Optuna objective: told at once). A job name already
        used in the orchestrator gets "-t<trial number>" appended.
    n_trials / timeout: stop asking after this many trials / seconds (running trials finish);
        both None: until interrupted, as in Optuna.
    n_jobs: trials in flight at once (default: twice the cluster's GPUs), asked together so the
        planner sees them together.
    catch: exception types that fail a trial without stopping the study (objective, value, submit).
    callbacks: called as cb(study, frozen_trial) after each trial is told, as in Optuna.
    objective(report) -> value(s) told to Optuna (default: the job's final loss).
    report_every: report intermediate values at the multiples of this many steps (and the last
        step); pruning checks follow each poll that reported something.
    wait_for_batch: refill only when the whole batch has ended (synchronous generations).
    profiles: passed to `submit`.
    On an uncaught exception (or Ctrl-C) the in-flight jobs are cancelled and their trials told FAIL.
    """
    optuna = _optuna()
    TrialState = optuna.trial.TrialState
    catch = tuple(catch) if isinstance(catch, (list, tuple)) else (catch,)
    if n_jobs is None or n_jobs < 1:
        nodes = getattr(orchestrator.cluster, "nodes", None) or []
        n_jobs = max(1, 2 * sum(int(n.gpus) for n in nodes))
    if n_trials is not None and n_trials < 0:
        raise ValueError(f"n_trials must be >= 0, got {n_trials}")
    if isinstance(report_every, bool) or not isinstance(report_every, int) or report_every < 1:
        raise ValueError(f"report_every must be a whole number of steps >= 1, got {report_every!r}")
    if not (isinstance(poll_s, (int, float)) and math.isfinite(poll_s) and poll_s > 0):
        raise ValueError(f"poll_s must be a positive number of seconds, got {poll_s!r}")
    multi = len(study.directions) > 1
    t_end = None if timeout is None else time.monotonic() + timeout
    results: dict[int, JobReport] = {}
    active: dict[str, dict] = {}  # job name -> {"trial", "future", "last"}
    stopping = []  # futures of pruned jobs (cancelled; waited for at the end)
    asked = 0

    def tell(trial: Any, state: Any = None, values: Any = None) -> None:
        ft = study.tell(trial, values, state=state)
        for cb in callbacks or ():
            cb(study, ft)

    def fail(trial: Any, exc: BaseException) -> None:
        """A user (or submit) exception: FAIL the trial; re-raise unless it is in `catch`."""
        trial.set_user_attr("saturn_reason", f"{type(exc).__name__}: {exc}"[-2000:])
        tell(trial, TrialState.FAIL)
        if not isinstance(exc, catch):
            raise exc
        log.warning("trial %d failed (caught): %s: %s", trial.number, type(exc).__name__, exc)

    def tell_values(trial: Any, vals: Sequence[Any]) -> None:
        if any(v is None or not math.isfinite(float(v)) for v in vals):
            trial.set_user_attr("saturn_reason", f"objective value(s) {list(vals)} are not finite numbers")
            tell(trial, TrialState.FAIL)
        else:
            tell(trial, None, [float(v) for v in vals] if multi else float(vals[0]))

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
            except Exception as exc:  # noqa: BLE001 - follows `catch`, as in study.optimize
                fail(trial, exc)
                return
            tell_values(trial, list(value) if isinstance(value, (list, tuple)) else [value])
        elif rep.status == "cancelled" and rep.metrics and not multi:
            tell(trial, TrialState.PRUNED)  # cancelled from outside: as good as pruned
        else:
            trial.set_user_attr("saturn_reason", (rep.reason or rep.status)[-2000:])
            tell(trial, TrialState.FAIL)

    def ask_batch(k: int) -> None:
        nonlocal asked
        trials: list[Any] = []  # optuna.Trial
        jobs: list[Any] = []  # saturn Job
        for _ in range(k):
            trial = study.ask()
            asked += 1
            try:
                made = func(trial)
                vals = _values(made)
                if vals is not None:  # a plain Optuna objective: it ran here, in this process
                    trial.set_user_attr("saturn_in_process", True)
                    tell_values(trial, vals)
                    continue
                job = _job_of(trial, made, orchestrator)
            except optuna.TrialPruned:
                tell(trial, TrialState.PRUNED)
                continue
            except Exception as exc:  # noqa: BLE001 - follows `catch`
                if not isinstance(exc, catch):  # the study stops: trials asked so far end too
                    for other in trials:
                        other.set_user_attr("saturn_reason", f"not submitted: trial {trial.number} raised")
                        tell(other, TrialState.FAIL)
                fail(trial, exc)
                continue
            if any(job.name == j.name for j in jobs):
                job = job.model_copy(update={"name": f"{job.name}-t{trial.number}"})
            trial.set_user_attr("saturn_job", job.name)
            trials.append(trial)
            jobs.append(job)
        if not jobs:
            return
        try:
            futures = orchestrator.submit_many(jobs, profiles=profiles)
        except Exception as exc:  # noqa: BLE001 - every asked trial is told FAIL, none stays RUNNING
            for trial in trials[1:]:
                trial.set_user_attr("saturn_reason", f"submit failed: {type(exc).__name__}: {exc}"[-2000:])
                tell(trial, TrialState.FAIL)
            fail(trials[0], exc)
            return
        for trial, job, fut in zip(trials, jobs, futures):
            active[job.name] = {"trial": trial, "future": fut, "last": 0}

    try:
        while True:
            can_ask = (n_trials is None or asked < n_trials) and (t_end is None or time.monotonic() < t_end)
            if can_ask and len(active) < n_jobs and not (wait_for_batch and active):
                left = n_jobs - len(active) if n_trials is None else min(n_jobs - len(active), n_trials - asked)
                ask_batch(left)
                continue
            if not active:
                break
            for name, ent in list(active.items()):
                fut, trial = ent["future"], ent["trial"]
                done = fut.done()
                rep = fut.report()
                new_loss = False
                if not multi and rep.metrics:
                    for step, loss in aligned_reports(rep.metrics, ent["last"], report_every, done):
                        trial.report(loss, step)
                        ent["last"] = step
                        new_loss = True
                if done:
                    finish(name, fut.result())
                elif new_loss and trial.should_prune():
                    log.info("trial %d pruned at step %d: cancelling job %s", trial.number, ent["last"], name)
                    at = orchestrator.report(name).step  # where the job is when the decision is taken
                    orchestrator.cancel(name, reason="pruned")
                    trial.set_user_attr("saturn_pruned_at_step", ent["last"])
                    trial.set_user_attr("saturn_step_at_prune", at)
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
