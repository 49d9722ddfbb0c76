"""Ray Tune trials as proxies of Saturn jobs (simulated backend inside a Ray actor). Slow: starting
a local Ray instance takes ~10-20 s."""

from __future__ import annotations

import pytest

import saturn
from saturn.api import synthetic_profiles

ray = pytest.importorskip("ray")
tune = pytest.importorskip("ray.tune")
pytestmark = pytest.mark.slow
STEPS = 300


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_tune_trials_run_as_saturn_jobs_and_stopping_cancels(ray_local, tmp_path):
    from saturn.integrations.ray_tune import SaturnTrainable, start_orchestrator

    def make_job(config):
        return saturn.Job(name="lm", model="gpt2-tiny", batch_size=4, seq_len=16, steps=STEPS, precision="fp32",
                          gpus=[1], optimizer={"name": "adamw", "lr": config["lr"]})

    def sim_loss(job, step):
        return 1.0 + 1000 * job.optimizer.lr + 5.0 / (1 + step)

    prof = synthetic_profiles([make_job({"lr": 1e-3})], step_time_s=1.0, startup_s=1.0)
    actor = start_orchestrator(saturn.Cluster(devices="cpu", slots=2), name="saturn-test", backend="simulate",
                               profiles=prof, sim_speed=60, sim_loss=sim_loss, batch_window_s=0.5)
    trainable = SaturnTrainable.with_job(make_job, actor_name="saturn-test", report_every=10, poll_s=0.05)

    def stop(trial_id, result):  # a threshold stopper: Tune decides, Saturn cancels the job
        return result["saturn_step"] >= 30 and result["loss"] > 6.5

    tuner = tune.Tuner(trainable, param_space={"lr": tune.grid_search([1e-3, 8e-3, 2e-3])},
                       tune_config=tune.TuneConfig(metric="loss", mode="min", max_concurrent_trials=3),
                       run_config=tune.RunConfig(stop=stop, storage_path=str(tmp_path), verbose=0))
    grid = tuner.fit()
    assert not grid.errors
    by_lr = {r.config["lr"]: r for r in grid}
    reps = ray.get(actor.reports.remote())
    segs = ray.get(actor.executor_summary.remote())
    for lr in (1e-3, 2e-3):
        m = by_lr[lr].metrics
        assert m["saturn_status"] == "completed" and m["saturn_step"] == STEPS
        assert m["loss"] == pytest.approx(sim_loss(make_job({"lr": lr}), STEPS))
        assert reps[m["saturn_job"]]["status"] == "completed"
    bad = by_lr[8e-3].metrics
    assert bad["saturn_step"] < STEPS
    rep = reps[bad["saturn_job"]]
    assert rep["status"] == "cancelled" and rep["step"] < STEPS  # the Saturn job was stopped
    # 3 one-slot jobs on 2 slots: one waited; the cancelled job's slot was used again
    launches = sorted(s[0][0] for s in segs.values())
    assert launches[2] > launches[0]
    assert grid.get_best_result().config["lr"] == 1e-3
    ray.get(actor.shutdown.remote())
