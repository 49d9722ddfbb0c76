"""The README's Optuna and Ray Tune snippets run as written (#16).

Each snippet is cut from README.md and executed verbatim; only what it trains on is swapped for
speed: the orchestrator it builds gets the simulated backend and synthetic profiles (the snippet's
own code -- names, arguments, the dropped actor handle -- is untouched).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import saturn
from saturn.api import synthetic_profiles

README = Path(__file__).resolve().parents[2] / "README.md"


def snippet(heading: str) -> str:
    """The first ```python block after the `### <heading>` line of README.md."""
    text = README.read_text()
    at = text.index(f"\n### {heading}")
    m = re.search(r"```python\n(.*?)```", text[at:], re.S)
    assert m, f"no python block under ### {heading}"
    return m.group(1)


def sim_loss(job, step):
    return 1.0 + abs(job.optimizer.lr - 3e-3) * 100 + 2.0 / (1 + step)


def test_readme_optuna_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    optuna = pytest.importorskip("optuna")
    code = snippet("Optuna")
    assert "optimize(study, objective, orch" in code and "batch_size=3" not in code
    real = saturn.Orchestrator
    ns: dict = {}

    def simulated(cluster=None, **kw):
        probe = ns["objective"](optuna.trial.FixedTrial({"lr": 1e-3}))
        kw.update(backend="simulate", profiles=synthetic_profiles([probe], step_time_s=1.0, startup_s=0.5),
                  sim_speed=200, sim_loss=sim_loss, run_dir=tmp_path / "run")
        return real(cluster, **kw)

    monkeypatch.setattr(saturn, "Orchestrator", simulated)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md:optuna", "exec"), ns)
    study, results = ns["study"], ns["results"]
    assert len(study.trials) == 4 and set(results) == {t.number for t in study.trials}
    assert all(t.state.is_finished() for t in study.trials)
    assert "lr" in capsys.readouterr().out


@pytest.mark.slow
def test_readme_tune_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    import saturn.integrations.ray_tune as rt

    code = snippet("Ray Tune")
    assert "start_orchestrator(" in code and "= start_orchestrator" not in code  # the handle is dropped
    real_start = rt.start_orchestrator
    ns: dict = {}

    def sim_loss(job, step):  # defined here so that Ray pickles it by value into the actor
        return 1.0 + abs(job.optimizer.lr - 3e-3) * 100 + 2.0 / (1 + step)

    def simulated(cluster=None, **kw):
        probe = ns["job_from_config"]({"lr": 1e-3})
        kw.update(backend="simulate", profiles=synthetic_profiles([probe], step_time_s=1.0, startup_s=0.5),
                  sim_speed=40, sim_loss=sim_loss, run_dir=str(tmp_path / "run"))
        real_start(cluster, **kw)  # the snippet drops the handle; so do we

    monkeypatch.setattr(rt, "start_orchestrator", simulated)
    monkeypatch.chdir(tmp_path)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        exec(compile(code, "README.md:tune", "exec"), ns)
        grid = ns["tuner"].get_results()  # what the snippet's fit() printed from
        assert not grid.errors
        assert any(r.metrics["saturn_step"] >= 30 for r in grid)  # ASHA let the best one reach max_t
        for r in grid:
            m = r.metrics
            if m["saturn_step"] >= 30:  # reached max_t = the job's steps: a final, completed result
                assert m["saturn_status"] == "completed" and m["loss"] == pytest.approx(m["final_loss"])
        assert "lr" in capsys.readouterr().out
        assert rt.stop_orchestrator()
        with pytest.raises(saturn.errors.SaturnError, match="start_orchestrator"):
            rt._get_actor(rt.DEFAULT_ACTOR)
    finally:
        ray.shutdown()


def test_tune_result_at_the_last_step_is_final(monkeypatch):
    """The result at the job's last step waits for its end: completed, with the final loss (a
    real job's last metrics line arrives before its process has exited and checkpointed)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    from saturn.integrations.ray_tune import SaturnTrainable

    seen = iter([
        {"status": "running", "metrics": [[20, 2.0]], "loss": 2.0},
        {"status": "running", "metrics": [[20, 2.0], [30, 1.5]], "loss": 1.5},  # last step, not ended yet
        {"status": "completed", "metrics": [[20, 2.0], [30, 1.5]], "loss": 1.5},
    ])
    base = {"technique": "ddp", "gpus": [0], "checkpoint": "ckpt", "reason": ""}

    class Remote:
        def remote(self, name):
            return {**base, **next(seen)}

    class FakeActor:
        report = Remote()

    monkeypatch.setattr(ray, "get", lambda x: x)
    t = object.__new__(SaturnTrainable.with_job(lambda c: None, report_every=10, poll_s=0.0))
    t._actor, t.job_name, t._total, t._last, t._finished = FakeActor(), "lm-1", 30, 0, False
    first = t.step()
    assert first["saturn_step"] == 20 and first["saturn_status"] == "running"
    last = t.step()
    assert last["saturn_step"] == 30 and last["saturn_status"] == "completed" and last["done"]
    assert last["loss"] == last["final_loss"] == 1.5
