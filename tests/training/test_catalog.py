"""#28: checkpoints that belong. A checkpoint loads only if its meta names this job (name and
definition) and a step within the job; otherwise it is skipped with a warning in the run's own
output and the previous valid one is used. A different job re-submitted under a finished job's
name is refused, saying so."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

import saturn
from saturn.api import OrchestratorError, synthetic_profiles
from saturn.training.catalog import CheckpointWarning, Owner, latest_checkpoint, refused_checkpoints
from tests.helpers.paths import ROOT


def _job(name: str, lr: float = 1e-3, steps: int = 50) -> saturn.Job:
    return saturn.Job(name=name, model="gpt2-tiny", batch_size=4, seq_len=16, steps=steps, precision="fp32",
                      gpus=[1], techniques=["ddp"], optimizer={"name": "adamw", "lr": lr})


def _fake_ckpt(d: Path, step: int, job: saturn.Job, meta_step: int | None = None) -> Path:
    p = d / f"step-{step}"
    p.mkdir(parents=True)
    (p / "meta.json").write_text(json.dumps({"step": step if meta_step is None else meta_step,
                                             "job": job.model_dump(mode="json")}))
    (d / "latest").write_text(f"step-{step}\n")
    return p


@pytest.mark.parametrize("intruder", ["other_job", "other_definition", "absurd_step", "past_the_end"])
def test_newest_checkpoint_that_is_not_the_jobs_is_skipped_with_a_warning(tmp_path, intruder):
    a = _job("a-lr1")
    own = _fake_ckpt(tmp_path, 10, a)
    if intruder == "other_job":
        bad, why = _fake_ckpt(tmp_path, 20, _job("b-lr3", lr=3e-3)), "belongs to job 'b-lr3'"
    elif intruder == "other_definition":
        bad, why = _fake_ckpt(tmp_path, 20, _job("a-lr1", lr=3e-3)), "another definition"
    elif intruder == "absurd_step":
        bad, why = _fake_ckpt(tmp_path, 20, a, meta_step=10**9), "past the job's 50 steps"
    else:
        bad, why = _fake_ckpt(tmp_path, 51, a), "past the job's 50 steps"
    assert latest_checkpoint(str(tmp_path)) == str(bad)  # without an owner: the newest, as before
    with pytest.warns(CheckpointWarning, match=why):
        assert latest_checkpoint(str(tmp_path), Owner.of(a)) == str(own)
    refused = refused_checkpoints(str(tmp_path), Owner.of(a))
    assert [p for p, _ in refused] == [str(bad)] and why in refused[0][1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the job's own checkpoint: no warning
        shutil.rmtree(bad)
        assert latest_checkpoint(str(tmp_path), Owner.of(a)) == str(own)


@pytest.mark.parametrize("stripped", [("job",), ("job", "definition"), ("job_name_only",)])
def test_checkpoint_whose_meta_does_not_name_the_job_is_skipped(tmp_path, stripped):
    """#31 item 3: a meta with `job`/`definition` removed (or a bare name where the definition
    cannot be told) is not this job's: skipped with a warning, like a foreign one."""
    a = _job("a-lr1")
    own = _fake_ckpt(tmp_path, 10, a)
    bad = _fake_ckpt(tmp_path, 20, a)
    meta = json.loads((bad / "meta.json").read_text())
    if stripped == ("job_name_only",):
        meta["job"], why = "a-lr1", "names no definition"
    else:
        for k in stripped:
            meta.pop(k, None)
        why = "names no job"
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(CheckpointWarning, match=why):
        assert latest_checkpoint(str(tmp_path), Owner.of(a)) == str(own)
    assert [p for p, _ in refused_checkpoints(str(tmp_path), Owner.of(a))] == [str(bad)]


def test_same_definition_with_more_steps_is_the_same_owner():
    assert Owner.of(_job("a", steps=50)).definition == Owner.of(_job("a", steps=500)).definition
    assert Owner.of(_job("a")).definition != Owner.of(_job("a", lr=2e-3)).definition
    assert Owner.of(_job("a").model_dump(mode="json"), 50) == Owner.of(_job("a"))


def test_resubmitting_a_finished_name_with_another_definition_is_refused():
    prof = synthetic_profiles([_job("x")], step_time_s=1.0, startup_s=1.0)
    with saturn.Orchestrator(saturn.Cluster(devices="cpu", slots=1), backend="simulate", sim_speed=500,
                             profiles=prof) as orch:
        assert orch.submit(_job("a", steps=20)).result(timeout=60).status == "completed"
        with pytest.raises(OrchestratorError, match=r"another definition \(differs in: optimizer\).*refused"):
            orch.submit(_job("a", lr=3e-3, steps=20))
        again = orch.submit(_job("a", steps=30)).result(timeout=60)  # the same job, extended: resumed
        assert again.status == "completed" and again.step == 30


def test_executor_submit_refuses_another_definition_under_a_finished_name():
    from saturn.executor import Executor, ExecutorConfig, ExecutorError, SimulatedBackend

    prof = synthetic_profiles([_job("a")], step_time_s=0.1, startup_s=0.0)
    prof["job"] = "a"
    ex = Executor([_job("a", steps=5)], {"n0": 1}, prof, SimulatedBackend(lambda *a: 0.1),
                  config=ExecutorConfig(time_limit_s=1.0))
    ex.run_until_done()
    with pytest.raises(ExecutorError, match="another definition"):
        ex.submit(_job("a", lr=5e-3, steps=5))


# ------------------------------------------------------------------ multi-process (real runs, CPU)
WORKLOAD = """name: own
cluster: {devices: cpu, slots: 2}
defaults: {seq_len: 16, batch_size: 4, precision: fp32, techniques: [ddp], gpus: [1],
           data: {factory: "tests.helpers.slow_data:slow_tokens", kwargs: {vocab_size: 256, delay_s: 0.02}}}
jobs:
  - {name: a-lr1, model: gpt2-tiny, steps: 40, optimizer: {name: adamw, lr: 0.001}}
  - {name: b-lr3, model: gpt2-tiny, steps: 40, optimizer: {name: adamw, lr: 0.003}}
"""


def _newest(ckpt: Path) -> Path:
    return ckpt / (ckpt / "latest").read_text().strip()


def _plant(src: Path, ckpt: Path, step: int, meta_step: int) -> None:
    dst = ckpt / f"step-{step}"
    shutil.copytree(src, dst)
    meta = json.loads((dst / "meta.json").read_text())
    (dst / "meta.json").write_text(json.dumps({**meta, "step": meta_step}))
    (ckpt / "latest").write_text(f"step-{step}\n")


@pytest.mark.slow
def test_foreign_and_absurd_checkpoints_are_skipped_on_resume(tmp_path):
    from saturn.executor.report import load_run

    w = tmp_path / "w.yaml"
    w.write_text(WORKLOAD)
    p = tmp_path / "p.csv"
    pd.DataFrame([{"job": j, "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.1, "startup_s": 3.0,
                   "feasible": True} for j in ("a-lr1", "b-lr3")]).to_csv(p, index=False)
    rd = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "saturn.cli.run"]
    first = subprocess.Popen([*cli, "run", str(w), "--run-dir", str(rd), "--profiles", str(p), "--no-live",
                              "--checkpoint-every", "5", "--interval", "1000", "--time-limit", "1"],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        assert first.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        try:
            state, _ = load_run(rd)
        except Exception:  # noqa: BLE001 - racing the first writes
            state = None
        if state and len(state.jobs) == 2 and all(js.status == "running" and js.committed_step >= 10
                                                  for js in state.jobs.values()):
            break
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    a_ckpt, b_ckpt = rd / "jobs" / "a-lr1" / "ckpt", rd / "jobs" / "b-lr3" / "ckpt"
    a_own, b_own = _newest(a_ckpt), _newest(b_ckpt)
    a_step = json.loads((a_own / "meta.json").read_text())["step"]
    _plant(b_own, a_ckpt, 39, 39)  # b's checkpoint, newest in a's directory
    _plant(b_own, b_ckpt, 10**9, 10**9)  # b's own, claiming step 10^9

    res = subprocess.run([*cli, "run", "--resume", str(rd), "--no-live", "--checkpoint-every", "5"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "belongs to job 'b-lr3', not 'a-lr1'" in out and "past the job's 40 steps" in out, out[-3000:]
    after, journal = load_run(rd)
    texts = [d["text"] for _, kind, d in journal.events() if kind == "warning"]
    assert any("step-39" in t and "b-lr3" in t for t in texts) and any("step-1000000000" in t for t in texts)
    a = after.jobs["a-lr1"]
    resumed = [s for s in a.segments if s.start_step > 0]
    assert resumed and resumed[0].start_step <= a_step  # from its own checkpoint, not b's step 39
    for name in ("a-lr1", "b-lr3"):
        js = after.jobs[name]
        assert js.status == "completed" and js.committed_step == 40 and js.progress_step <= 40
        steps = [json.loads(x)["step"] for x in (rd / "jobs" / name / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(40)), (name, steps)  # every step trained once, none skipped
    status = subprocess.run([*cli, "status", str(rd)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0 and "1000000000/40" not in status.stdout and "40/40" in status.stdout
    assert "skipping checkpoint" in status.stdout  # the warning stays in the run's own record
