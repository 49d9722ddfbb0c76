"""An Optuna study of tiny GPT models trained for real (processes on 2 CPU slots) through Saturn,
with a pruned trial whose running job is cancelled and whose slot is re-planned. Slow (~1 min)."""

from __future__ import annotations

import json

import pytest

import saturn
from saturn.api import synthetic_profiles

optuna = pytest.importorskip("optuna")
from saturn.integrations.optuna import optimize  # noqa: E402

pytestmark = pytest.mark.slow
TS = optuna.trial.TrialState
BAD_LR = 0.5
STEPS = {0: 1000, 1: 1000, 2: 40}  # trial number -> steps: 0 runs long, 1 is pruned, 2 waits for a slot


def make_job(trial):
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    return saturn.Job(name="lm", model="gpt2-tiny", batch_size=4, seq_len=16, precision="fp32", gpus=[1],
                      techniques=["ddp"], steps=STEPS.get(trial.number, 40), optimizer={"name": "adamw", "lr": lr})


class BadLrPruner(optuna.pruners.BasePruner):
    """Deterministic stand-in for a real pruner: prunes the bad-lr trial once it reported 5 steps."""

    def prune(self, study, trial):
        return trial.params.get("lr") == BAD_LR and bool(trial.intermediate_values) and \
            max(trial.intermediate_values) >= 5


def test_optuna_study_on_cpu_slots_with_pruning(tmp_path):
    study = optuna.create_study(direction="minimize", pruner=BadLrPruner())
    for lr in (1e-3, BAD_LR, 3e-3):
        study.enqueue_trial({"lr": lr})
    prof = synthetic_profiles([make_job(optuna.trial.FixedTrial({"lr": 1e-3}))], step_time_s=0.05, startup_s=5.0)
    run_dir = tmp_path / "run"
    with saturn.Orchestrator(saturn.Cluster(devices="cpu", slots=2), run_dir=run_dir, backend="process",
                             profiles=prof, interval_s=1e9, time_limit_s=2.0, poll_s=0.1,
                             objective="makespan") as orch:  # (mean_completion would run trial 2 first)
        res = optimize(study, make_job, orch, n_trials=3, n_jobs=3, poll_s=0.1)
        with orch.lock:
            st = orch.executor.state
            seg = {n: (js.segments[0].launched_at, js.segments[-1].ended_at, js.segments[0].gpus)
                   for n, js in st.jobs.items()}
            plans = st.plan_version
    t0, t1, t2 = study.trials
    assert t0.state == t2.state == TS.COMPLETE, [t.state for t in study.trials]
    assert t1.state == TS.PRUNED
    # the pruned trial's job was cancelled while running: it stopped early, from a checkpoint
    r1 = res[1]
    assert r1.status == "cancelled" and 5 <= r1.step < STEPS[1] and r1.checkpoint
    assert t1.user_attrs["saturn_pruned_at_step"] >= 5
    # its slot went to the waiting trial, which started before trial 0 finished (re-planned)
    n0, n1, n2 = (t.user_attrs["saturn_job"] for t in study.trials)
    assert seg[n2][0] >= seg[n1][1] - 1e-6 and seg[n2][2] == seg[n1][2]
    assert seg[n2][0] < seg[n0][1]
    assert plans >= 2
    # results flowed back: objective = final loss, intermediate values per step, metrics on disk
    for t, n in ((t0, n0), (t2, n2)):
        r = res[t.number]
        assert r.status == "completed" and r.step == STEPS[t.number]
        assert t.value == pytest.approx(r.loss) and r.loss > 0
        assert max(t.intermediate_values) == STEPS[t.number]
        lines = [json.loads(x) for x in (run_dir / "jobs" / n / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == STEPS[t.number]
        assert r.checkpoint and (run_dir / "jobs" / n / "ckpt").exists()
    assert study.best_trial.number in (0, 2)
