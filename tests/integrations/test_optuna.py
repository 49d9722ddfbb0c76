"""Optuna studies whose trials are Saturn jobs, on the simulated backend (fast)."""

from __future__ import annotations

import pytest

import saturn
from saturn.api import synthetic_profiles

optuna = pytest.importorskip("optuna")
from saturn.integrations.optuna import optimize  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
CPU2 = saturn.Cluster(devices="cpu", slots=2)
STEPS = 200


def make_job(trial):
    lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    return saturn.Job(name="lm", model="gpt2-tiny", batch_size=4, seq_len=16, steps=STEPS, precision="fp32",
                      gpus=[1], optimizer={"name": "adamw", "lr": lr})


def sim_loss(job, step):  # the toy world: loss grows with lr
    return 1.0 + 1000 * job.optimizer.lr + 5.0 / (1 + step)


def _orch(**kw):
    prof = synthetic_profiles([make_job(optuna.trial.FixedTrial({"lr": 1e-3}))], step_time_s=1.0, startup_s=1.0)
    return saturn.Orchestrator(CPU2, backend="simulate", profiles=prof, sim_speed=kw.pop("sim_speed", 100),
                               sim_loss=sim_loss, **kw)


def test_threshold_pruning_cancels_jobs_and_values_flow_back():
    study = optuna.create_study(direction="minimize",
                                pruner=optuna.pruners.ThresholdPruner(upper=6.5, n_warmup_steps=20))
    lrs = [1e-3, 8e-3, 2e-3, 9e-3, 5e-4]
    for lr in lrs:
        study.enqueue_trial({"lr": lr})
    with _orch() as orch:
        res = optimize(study, make_job, orch, n_trials=len(lrs), n_jobs=3, poll_s=0.02)
        with orch.lock:
            st = orch.executor.state
            launches = {n: js.segments[0].launched_at for n, js in st.jobs.items() if js.segments}
            ends = {n: js.segments[-1].ended_at for n, js in st.jobs.items() if js.segments}
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == len(lrs)
    states = {t.params["lr"]: t.state for t in trials}
    pruned = [lr for lr, s in states.items() if s == optuna.trial.TrialState.PRUNED]
    assert sorted(pruned) == [8e-3, 9e-3]
    for t in trials:
        rep = res[t.number]
        assert t.user_attrs["saturn_job"] == rep.name
        if t.state == optuna.trial.TrialState.PRUNED:
            assert rep.status == "cancelled" and 20 <= rep.step < STEPS  # the job was stopped early
            assert t.intermediate_values and max(t.intermediate_values) >= 20
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE and rep.status == "completed"
            assert t.value == pytest.approx(sim_loss(make_job(optuna.trial.FixedTrial(t.params)), STEPS))
            assert max(t.intermediate_values) == STEPS and t.user_attrs["saturn_steps"] == STEPS
    assert study.best_params["lr"] == 5e-4
    # the first pruned job's slot went to a waiting trial before the other running job ended
    first = min((t for t in trials if t.state == optuna.trial.TrialState.PRUNED), key=lambda t: t.number)
    name = first.user_attrs["saturn_job"]
    later = [n for n in launches if launches[n] >= ends[name] - 1e-6]
    assert later, "no job started after the pruned one stopped"
    assert any(launches[n] < max(ends.values()) for n in later)


def test_median_pruner_batches_and_tpe():
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=10))
    with _orch() as orch:
        res = optimize(study, make_job, orch, n_trials=8, n_jobs=4, poll_s=0.02)
        assert all(r.done for r in orch.results.values())
    assert len(study.trials) == 8 == len(res)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 2
    for t in study.trials:
        if t.state == optuna.trial.TrialState.PRUNED:  # (a job may finish before its cancel lands)
            assert res[t.number].status in ("cancelled", "completed")
    assert study.best_value == min(t.value for t in done)


def test_wait_for_batch_generations_and_failures():
    """Synchronous generations: a batch is asked only after the previous one ended; a job that
    cannot run fails its trial; make_job raising TrialPruned prunes without submitting."""
    calls = []

    def mk(trial):
        calls.append(trial.number)
        if trial.number == 1:
            raise optuna.TrialPruned()
        job = make_job(trial)
        if trial.number == 2:
            job = job.model_copy(update={"gpus": [4]})  # no profile rows for 4 slots -> fails
            job = saturn.Job.model_validate(job.model_dump())
        return job.model_copy(update={"steps": 30})

    study = optuna.create_study()
    with _orch() as orch:
        res = optimize(study, mk, orch, n_trials=5, n_jobs=3, wait_for_batch=True, poll_s=0.02)
    st = {t.number: t.state for t in study.trials}
    TS = optuna.trial.TrialState
    assert st[1] == TS.PRUNED and 1 not in res
    assert st[2] == TS.FAIL and res[2].status == "failed"
    assert st[0] == st[3] == st[4] == TS.COMPLETE
    assert calls == [0, 1, 2, 3, 4]
    # generation 2 (trials 3, 4) was submitted after generation 1 had ended
    assert study.trials[3].datetime_start >= study.trials[0].datetime_complete


def test_exception_cancels_in_flight_jobs():
    study = optuna.create_study()
    seen = []

    def boom(study_, ft):
        seen.append(ft.number)
        raise RuntimeError("callback failed")

    with _orch(sim_speed=50) as orch:
        fast = lambda t: make_job(t).model_copy(update={"steps": 10 if t.number == 0 else 2000})  # noqa: E731
        with pytest.raises(RuntimeError):
            optimize(study, fast, orch, n_trials=3, n_jobs=2, poll_s=0.02, callbacks=[boom])
        reps = orch.wait(timeout=30)
    assert seen == [0]
    assert sorted(r.status for r in reps.values()) == ["cancelled", "completed"]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]


def test_intermediate_values_are_aligned_to_report_every():
    from saturn.integrations.optuna import aligned_reports

    m = [(3, 1.0), (7, 2.0), (12, 3.0)]
    assert aligned_reports(m, 0, 5, False) == [(5, 1.0), (10, 2.0)]
    assert aligned_reports(m, 10, 5, True) == [(12, 3.0)]
    assert aligned_reports([(1, 1.0), (2, 2.0)], 0, 1, True) == [(1, 1.0), (2, 2.0)]
    assert aligned_reports([(6, 1.0)], 0, 5, False) == []
