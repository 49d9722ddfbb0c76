"""Optuna conventions (#16): catch, n_jobs/timeout names, plain objectives, failed submits."""

from __future__ import annotations

import pytest

import saturn
from saturn.api import OrchestratorError, synthetic_profiles
from saturn.errors import SaturnError

optuna = pytest.importorskip("optuna")
from saturn.integrations.optuna import optimize  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
TS = optuna.trial.TrialState


def make_job(trial, steps=20):
    lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    return saturn.Job(name="lm", model="gpt2-tiny", batch_size=4, seq_len=16, steps=steps, precision="fp32",
                      gpus=[1], optimizer={"name": "adamw", "lr": lr})


def _orch():
    prof = synthetic_profiles([make_job(optuna.trial.FixedTrial({"lr": 1e-3}))], step_time_s=1.0, startup_s=0.5)
    return saturn.Orchestrator(saturn.Cluster(devices="cpu", slots=2), backend="simulate", profiles=prof,
                               sim_speed=200, sim_loss=lambda job, step: 1.0 + 100 * job.optimizer.lr)


def _no_running(study):
    return all(t.state != TS.RUNNING for t in study.get_trials(deepcopy=False))


def test_failed_submit_fails_every_asked_trial_and_follows_catch():
    study = optuna.create_study()
    with _orch() as orch:
        def broken(jobs, profiles=None):
            raise OrchestratorError("the profile store is unreachable")

        orch.submit_many = broken
        with pytest.raises(OrchestratorError):
            optimize(study, make_job, orch, n_trials=3, n_jobs=3, poll_s=0.01)
        assert len(study.trials) == 3 and _no_running(study)
        assert all(t.state == TS.FAIL and "unreachable" in t.user_attrs["saturn_reason"] for t in study.trials)
        # caught: the study goes on and every trial is told
        optimize(study, make_job, orch, n_trials=4, n_jobs=2, catch=(OrchestratorError,), poll_s=0.01)
    assert len(study.trials) == 7 and _no_running(study)


def test_user_exceptions_follow_catch():
    def objective(trial):
        if trial.number == 1:
            raise ValueError("bad trial")
        return make_job(trial)

    study = optuna.create_study()
    with _orch() as orch:
        with pytest.raises(ValueError, match="bad trial"):
            optimize(study, objective, orch, n_trials=3, n_jobs=3, poll_s=0.01)
        assert _no_running(study)
        states = [t.state for t in study.trials]
        assert states == [TS.FAIL, TS.FAIL]  # the one asked before it is not left RUNNING either
        res = optimize(study, objective, orch, n_trials=3, n_jobs=3, catch=ValueError, poll_s=0.01)
    assert len(res) == 3 and _no_running(study)
    assert [t.state for t in study.trials[2:]] == [TS.COMPLETE] * 3

    def bad_value(report):
        raise KeyError("no such metric")

    study = optuna.create_study()
    with _orch() as orch:
        with pytest.raises(KeyError):
            optimize(study, make_job, orch, n_trials=1, objective=bad_value, poll_s=0.01)
    assert study.trials[0].state == TS.FAIL and "no such metric" in study.trials[0].user_attrs["saturn_reason"]


def test_plain_optuna_objective_and_clear_error_for_other_returns():
    study = optuna.create_study()
    with _orch() as orch:
        res = optimize(study, lambda t: (t.suggest_float("x", -1, 1)) ** 2, orch, n_trials=3, poll_s=0.01)
        assert res == {} and [t.state for t in study.trials] == [TS.COMPLETE] * 3
        assert all(t.user_attrs["saturn_in_process"] for t in study.trials)
        with pytest.raises(SaturnError, match="return a saturn.Job"):
            optimize(study, lambda t: None, orch, n_trials=1, poll_s=0.01)
    assert study.trials[-1].state == TS.FAIL and _no_running(study)


def test_old_keyword_names_are_rejected():
    """A 0.x package keeps no deprecated aliases: `batch_size` and `timeout_s` are unknown keywords."""
    study = optuna.create_study()
    with _orch() as orch:
        with pytest.raises(TypeError, match="batch_size"):
            optimize(study, make_job, orch, n_trials=2, batch_size=2, poll_s=0.01)
        with pytest.raises(TypeError, match="timeout_s"):
            optimize(study, make_job, orch, n_trials=1, timeout_s=60, poll_s=0.01)
        with pytest.raises(TypeError, match="bogus"):
            optimize(study, make_job, orch, n_trials=1, bogus=1)
    assert study.trials == []


def test_timeout_stops_asking():
    study = optuna.create_study()
    with _orch() as orch:
        optimize(study, make_job, orch, timeout=0.0, poll_s=0.01)  # n_trials=None: until the timeout
    assert len(study.trials) == 0


def test_failed_job_reason_reaches_the_trial():
    def objective(trial):
        job = make_job(trial)
        return saturn.Job.model_validate({**job.model_dump(), "gpus": [4]})  # no profile rows for 4 slots

    study = optuna.create_study()
    with _orch() as orch:
        res = optimize(study, objective, orch, n_trials=1, poll_s=0.01)
    t = study.trials[0]
    assert t.state == TS.FAIL and res[0].status == "failed"
    assert t.user_attrs["saturn_reason"] and t.user_attrs["saturn_reason"] == res[0].reason[-2000:]


def test_pruned_jobs_stop_within_one_step_of_the_decision():
    """The cancel reaches the running job at once (not after the orchestrator's next poll)."""

    class PruneAt(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return bool(trial.intermediate_values) and max(trial.intermediate_values) >= 10

    prof = synthetic_profiles([make_job(optuna.trial.FixedTrial({"lr": 1e-3}))], step_time_s=1.0, startup_s=0.5)
    study = optuna.create_study(pruner=PruneAt())
    # 1 step = 1 virtual s; the paced clock runs 40 steps per wall second (2 per loop iteration)
    with saturn.Orchestrator(saturn.Cluster(devices="cpu", slots=2), backend="simulate", profiles=prof,
                             sim_speed=40, sim_loss=lambda job, step: 1.0) as orch:
        res = optimize(study, lambda t: make_job(t, steps=4000), orch, n_trials=2, n_jobs=2, poll_s=0.01)
    for t in study.trials:
        assert t.state == TS.PRUNED
        rep = res[t.number]
        assert rep.status == "cancelled"
        assert rep.step <= t.user_attrs["saturn_step_at_prune"] + 1, (rep.step, t.user_attrs)
