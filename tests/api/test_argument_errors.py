"""#28 Python API rows: bad arguments are clear errors naming the argument, never a TypeError,
AttributeError or ZeroDivisionError from inside Saturn."""

from __future__ import annotations

import pytest

import saturn
from saturn.api import OrchestratorError, synthetic_profiles

optuna = pytest.importorskip("optuna")
from saturn.integrations.optuna import optimize  # noqa: E402

CPU2 = saturn.Cluster(devices="cpu", slots=2)


def _job(name="a", **kw):
    return saturn.Job(name=name, model="gpt2-tiny", batch_size=4, seq_len=16, steps=10, precision="fp32",
                      techniques=["ddp"], **kw)


def _orch():
    return saturn.Orchestrator(CPU2, backend="simulate", sim_speed=500,
                               profiles=synthetic_profiles([_job()], step_time_s=0.1, startup_s=0.1))


@pytest.mark.parametrize("bad", [None, 42, "a", object()])
def test_submit_of_a_non_job_names_the_argument(bad):
    with _orch() as orch:
        with pytest.raises(OrchestratorError, match=r"submit\(job\): job must be a saturn.Job"):
            orch.submit(bad)
        assert orch.submit(_job()).result(timeout=60).status == "completed"  # the orchestrator goes on


def test_submit_many_of_a_single_job_names_the_argument():
    with _orch() as orch:
        with pytest.raises(OrchestratorError, match=r"submit_many\(jobs\)"):
            orch.submit_many(_job())
        with pytest.raises(OrchestratorError, match=r"submit_many\(jobs\)"):
            orch.submit_many(None)


def test_job_needing_more_gpus_than_the_cluster_fails_saying_so():
    with _orch() as orch:
        r = orch.submit(_job("wide", gpus=[8])).result(timeout=30)
        assert r.status == "failed" and "needs 8 GPUs" in r.reason
        assert "largest node of the cluster has 2: more GPUs than the cluster has" in r.reason
        assert "no profile rows" not in r.reason
        assert orch.submit(_job("ok")).result(timeout=60).status == "completed"


def test_executor_submit_of_none_is_a_clear_error():
    import pandas as pd

    from saturn.executor import Executor, ExecutorError, SimulatedBackend

    ex = Executor([], {"n0": 1}, pd.DataFrame(), SimulatedBackend(lambda *a: 0.1))
    with pytest.raises(ExecutorError, match=r"submit\(job\)"):
        ex.submit(None)


@pytest.mark.parametrize("kw, match", [({"report_every": 0}, "report_every"), ({"report_every": -3}, "report_every"),
                                       ({"report_every": 1.5}, "report_every"), ({"poll_s": 0}, "poll_s"),
                                       ({"poll_s": float("nan")}, "poll_s")])
def test_optimize_bad_numbers_are_value_errors(kw, match):
    study = optuna.create_study()
    with _orch() as orch:
        with pytest.raises(ValueError, match=match):
            optimize(study, lambda t: _job(f"t{t.number}"), orch, n_trials=1, **kw)
    assert not study.trials  # refused before any trial was asked
