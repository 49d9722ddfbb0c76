"""#28: a pruned Optuna trial stops within one reporting interval of the prune, even while the
executor thread is busy (a re-plan holds the orchestrator's lock for seconds: before the fix, the
cancel waited for it, and the pruned job trained on for tens of steps)."""

from __future__ import annotations

import json
import threading
import time

import pytest

import saturn
from saturn.api import synthetic_profiles

optuna = pytest.importorskip("optuna")
from saturn.integrations.optuna import optimize  # noqa: E402

pytestmark = pytest.mark.slow
READBACK_EVERY = 10  # saturn.training.loop: losses (and so prunes) are seen every <= 10 steps
BUSY_S = 6.0  # how long the stand-in re-plan holds the executor's lock
STOP_S = 2.0  # the job's last step must end within this long after the prune (the stop does not wait)


def test_pruned_trial_stops_within_one_reporting_interval_while_the_executor_is_busy(tmp_path):
    holding = threading.Event()
    orch_box: dict = {}
    pruned_at: list[float] = []

    def busy_replan() -> None:  # what a long re-plan does: hold the orchestrator's lock
        with orch_box["orch"].lock:
            holding.set()
            threading.Event().wait(BUSY_S)

    class PruneAndReplan(optuna.pruners.BasePruner):
        """Prunes once 30 steps are reported, just as a re-plan starts."""

        def prune(self, study, trial):
            if not trial.intermediate_values or max(trial.intermediate_values) < 30:
                return False
            threading.Thread(target=busy_replan, daemon=True).start()
            holding.wait(10)
            pruned_at.append(time.time())
            return True

    def make_job(trial):
        return saturn.Job(name="lm", model="gpt2-tiny", batch_size=4, seq_len=16, precision="fp32", gpus=[1],
                          techniques=["ddp"], steps=5000, optimizer={"name": "adamw", "lr": 1e-3})

    study = optuna.create_study(direction="minimize", pruner=PruneAndReplan())
    prof = synthetic_profiles([make_job(None)], step_time_s=0.05, startup_s=5.0)
    with saturn.Orchestrator(saturn.Cluster(devices="cpu", slots=1), run_dir=tmp_path / "run", backend="process",
                             profiles=prof, interval_s=1e9, time_limit_s=1.0, poll_s=0.1) as orch:
        orch_box["orch"] = orch
        res = optimize(study, make_job, orch, n_trials=1, n_jobs=1, poll_s=0.1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    r = res[0]
    assert r.status == "cancelled", r  # stopped for good, not relaunched
    assert r.step >= trial.user_attrs["saturn_step_at_prune"]
    # the stop reached the job at once, while the executor was still busy: its last step ended
    # within STOP_S of the prune (before the fix it trained on until the lock was free, BUSY_S)
    progress = (tmp_path / "run" / "jobs" / "lm" / "progress.jsonl").read_text().splitlines()
    walls = [json.loads(x)["wall"] for x in progress if '"wall"' in x and '"checkpoint"' not in x]
    assert walls[-1] - pruned_at[0] < STOP_S, (walls[-1] - pruned_at[0], r.step, trial.user_attrs)
