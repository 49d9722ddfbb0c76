"""#28: a true cause for every failure. A job that validates but breaks at run time is reported in
`saturn run`, `saturn status` and `saturn report` with its real cause and a log path that exists;
a stored failed profile row carries its reason and the inputs it depended on, and is tried again
when they change; OOM is claimed only where it was OOM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import saturn
from saturn.profiler import profile
from saturn.profiles.store import load_store, lookup
from saturn.spec import load_workload
from saturn.spec.signature import inputs_hash
from tests.helpers.fake_techniques import read_log
from tests.helpers.paths import ROOT


def _job(**kw) -> saturn.Job:
    return saturn.Job(**{"name": "j", "model": "gpt2-tiny", "batch_size": 4, "seq_len": 16, "steps": 5,
                         "precision": "fp32", **kw})


def test_inputs_hash_ignores_numbers_but_not_structure():
    base = inputs_hash(_job(optimizer={"name": "adamw", "lr": 1e-3}))
    assert inputs_hash(_job(optimizer={"name": "adamw", "lr": 3e-3})) == base  # an lr sweep: one hash
    assert inputs_hash(_job(optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.1})) != base  # a kwarg
    assert inputs_hash(_job(optimizer={"name": "adamw", "lr": 1e-3, "amsgrad": True})) != inputs_hash(
        _job(optimizer={"name": "adamw", "lr": 1e-3, "amsgrad": False}))
    assert inputs_hash({"model": {"name": "m"}, "optimizer": {"betas": [0.9]}}) != inputs_hash(
        {"model": {"name": "m"}, "optimizer": {"betas": [0.9, 0.99]}})  # a list of another length


def _factory_module(tmp_path: Path, body: str) -> None:
    (tmp_path / "i28_factory.py").write_text(
        "from tests.helpers.slow_data import slow_tokens\n\n\ndef tokens(seq_len, vocab_size):\n" + body)


@pytest.fixture
def trial_log(tmp_path, monkeypatch):
    path = tmp_path / "trials.jsonl"
    monkeypatch.setenv("SATURN_FAKE_TRIAL_LOG", str(path))
    return path


def test_stored_failure_is_tried_again_when_the_factory_changes(tmp_path, trial_log, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT))
    _factory_module(tmp_path, "    raise ValueError('v1 is broken')\n")
    wl = load_workload(
        "name: t\ncluster: {devices: cpu, slots: 1}\n"
        "defaults: {seq_len: 16, batch_size: 2, precision: fp32, steps: 10, gpus: [1],"
        " techniques: ['tests.helpers.fake_techniques:Crashes']}\n"
        "jobs:\n  - {name: lm, model: gpt2-tiny, data: {factory: 'i28_factory:tokens', kwargs: {vocab_size: 64}}}\n")
    store = tmp_path / "store"
    rows = profile(wl, store_dir=store, progress=False)
    assert len(read_log(trial_log)) == 1
    row = rows.iloc[0]
    assert row["status"] == "failed" and "boom" in row["reason"] and row["inputs_hash"] == inputs_hash(wl.jobs[0])
    profile(wl, store_dir=store, progress=False)
    assert len(read_log(trial_log)) == 1  # same inputs: the stored failure is reused
    found, missing = lookup(wl.jobs, wl.cluster, load_store(store))
    assert len(found) == 1 and not missing
    _factory_module(tmp_path, "    return slow_tokens(seq_len, vocab_size, 0.0)  # fixed\n")
    found, missing = lookup(wl.jobs, wl.cluster, load_store(store))
    assert not len(found) and missing == [("lm", 1)]  # stale: the option is missing again
    profile(wl, store_dir=store, progress=False)
    assert len(read_log(trial_log)) == 2  # ... and measured again, not reused
    stored = load_store(store)
    assert len(stored) == 2 and stored["inputs_hash"].nunique() == 2  # both failures kept, by inputs


def test_profiling_failure_is_the_jobs_cause_not_oom(tmp_path):
    from saturn.executor import Executor, ExecutorConfig, SimulatedBackend

    rows = pd.DataFrame([
        {"job": "j", "technique": "ddp", "gpus": 1, "feasible": False, "status": "failed",
         "reason": "rank 0: TypeError: AdamW.__init__() got an unexpected keyword argument 'momentum'"},
        {"job": "j", "technique": "fsdp", "gpus": 1, "feasible": False, "status": "oom",
         "reason": "CUDA out of memory"}])
    ex = Executor([_job()], {"n0": 1}, rows, SimulatedBackend(lambda *a: 0.1), run_dir=tmp_path / "r",
                  config=ExecutorConfig(time_limit_s=1.0))
    ex.run_until_done()
    js = ex.state.jobs["j"]
    assert js.status == "failed"
    assert "ddp×1: failed when profiled: rank 0: TypeError: AdamW.__init__() got an unexpected keyword" in js.reason
    assert "fsdp×1: out of memory (OOM) when profiled" in js.reason
    assert "all OOM" not in js.reason
    assert js.log and Path(js.log).exists() and "TypeError" in Path(js.log).read_text()


def test_job_needing_more_gpus_than_the_cluster_says_so():
    from saturn.executor import Executor, ExecutorConfig, SimulatedBackend

    ex = Executor([_job(gpus=[8])], {"n0": 2}, pd.DataFrame(columns=["job", "technique", "gpus", "step_time_s"]),
                  SimulatedBackend(lambda *a: 0.1), config=ExecutorConfig(time_limit_s=1.0))
    ex.run_until_done()
    assert "needs 8 GPUs" in ex.state.jobs["j"].reason and "more GPUs than the cluster has" in ex.state.jobs["j"].reason


BROKEN = """
def model_42(**kw):
    return 42


def data_raises(seq_len):
    raise ValueError("the data factory broke on purpose")
"""

WORKLOAD = """name: broken
cluster: {devices: cpu, slots: 2}
defaults: {seq_len: 16, batch_size: 4, precision: fp32, steps: 20, techniques: [ddp], gpus: [1]}
jobs:
  - {name: m42, model: {factory: "i28_broken:model_42"}}
  - {name: draise, model: gpt2-tiny, data: {factory: "i28_broken:data_raises"}}
"""


@pytest.mark.slow
def test_run_time_failures_name_their_cause_and_an_existing_log(tmp_path):
    (tmp_path / "i28_broken.py").write_text(BROKEN)
    w = tmp_path / "w.yaml"
    w.write_text(WORKLOAD)
    p = tmp_path / "p.csv"
    pd.DataFrame([{"job": j, "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.1, "startup_s": 1.0,
                   "feasible": True} for j in ("m42", "draise")]).to_csv(p, index=False)
    rd = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    cli = [sys.executable, "-m", "saturn.cli.run"]
    res = subprocess.run([*cli, "run", str(w), "--run-dir", str(rd), "--profiles", str(p), "--no-live",
                          "--max-retries", "0", "--time-limit", "1"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    outs = {"run": res.stdout + res.stderr}
    assert res.returncode == 1, outs["run"][-3000:]
    for cmd in ("status", "report"):
        r = subprocess.run([*cli, cmd, str(rd)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        outs[cmd] = r.stdout
    for name, out in outs.items():
        flat = " ".join(out.split())  # (rich wraps long lines)
        assert "m42 failed:" in flat and "draise failed:" in flat, (name, out)
        assert "ValueError: the data factory broke on purpose" in flat, (name, out)
        assert "42" in flat and ("int" in flat or "Module" in flat), (name, out)
        assert "no feasible option" not in flat and "OOM" not in flat, (name, out)
        assert f"(log:{rd}/jobs/m42/error.txt)" in "".join(out.split()), (name, out)
    for job in ("m42", "draise"):
        assert (rd / "jobs" / job / "error.txt").exists()


def test_gantt_names_failed_jobs_with_their_cause(tmp_path, monkeypatch):
    from saturn.executor import Executor, ExecutorConfig, SimulatedBackend
    from saturn.executor.report import gantt
    from saturn.planner import gantt as gantt_mod

    rows = pd.DataFrame([{"job": "j", "technique": "ddp", "gpus": 1, "feasible": False, "status": "failed",
                          "reason": "rank 0: ValueError: the data factory broke"}])
    ex = Executor([_job()], {"n0": 1}, rows, SimulatedBackend(lambda *a: 0.1), run_dir=tmp_path / "r",
                  config=ExecutorConfig(time_limit_s=1.0))
    ex.run_until_done()
    seen = {}
    real = gantt_mod.save_figure
    monkeypatch.setattr(gantt_mod, "save_figure",
                        lambda fig, path, **kw: seen.setdefault("x", fig.axes[-1].get_xlabel()) and real(fig, path))
    out = gantt(tmp_path / "r", tmp_path / "g.png")
    assert out.exists()
    assert "FAILED j:" in seen["x"] and "ValueError: the data factory broke" in seen["x"]
