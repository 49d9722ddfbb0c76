"""#15 crash test: SIGKILL `saturn run` (a tiny CPU workload) at random moments, over 20+ seeds,
resuming each time; at the end every logged step and every completed checkpoint survived.

One run is killed again and again, so 20 kills cost one run. Each seed picks the next moment: every
fourth one a random time after start (planning, launch, model build), the others after a random
number (0-14) of newly logged steps plus a random fraction of a step -- mid-step, mid-metrics line or
mid-checkpoint (checkpoints every 5 steps).
Checked: metrics.jsonl holds every step exactly once; every per-step line the training loop logged
(progress.jsonl) has exactly one record in metrics.jsonl or metrics-superseded.jsonl; after each
kill the next attempt starts at or after the newest complete checkpoint on disk at that kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

pytestmark = pytest.mark.slow
STEPS = 330
KILLS = 20
# ~20 ms a step (4 ms a sample): kills land inside steps and checkpoints, not only between
WORKLOAD = f"""name: crash
cluster: {{devices: cpu, slots: 1}}
defaults: {{seq_len: 16, batch_size: 4, precision: fp32}}
jobs:
  - {{name: lm, model: gpt2-tiny, steps: {STEPS}, techniques: [ddp], gpus: [1],
     data: {{factory: "tests.helpers.slow_data:slow_tokens", kwargs: {{vocab_size: 256, delay_s: 0.004}}}}}}
"""


def _per_step_lines(prog: Path) -> int:
    n = 0
    for line in prog.read_bytes().splitlines() if prog.exists() else []:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        n += isinstance(rec, dict) and "loss" in rec and not rec.get("checkpoint")
    return n


def _records(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_sigkill_at_random_moments_loses_no_logged_step_or_checkpoint(tmp_path):
    from saturn.executor.backends.process import latest_checkpoint_step
    from saturn.executor.report import load_run

    w = tmp_path / "w.yaml"
    w.write_text(WORKLOAD)
    p = tmp_path / "p.csv"
    p.write_text("job,technique,knobs,gpus,step_time_s,startup_s,feasible\nlm,ddp,{},1,0.12,3.0,True\n")
    rd = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = [sys.executable, "-m", "saturn.cli.run", "run", str(w), "--run-dir", str(rd), "--profiles", str(p),
             "--no-live", "--checkpoint-every", "5", "--interval", "1000", "--time-limit", "1"]
    resume = [sys.executable, "-m", "saturn.cli.run", "run", "--resume", str(rd), "--no-live",
              "--checkpoint-every", "5"]
    job = rd / "jobs" / "lm"
    kills = []
    for seed in range(KILLS):
        rng = random.Random(seed)
        cmd = first if not (rd / "journal.sqlite").exists() else resume
        lines0 = _per_step_lines(job / "progress.jsonl")
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if seed % 4 == 0:
            delay = rng.uniform(0.1, 3.0)
            time.sleep(delay)
        else:
            delay = rng.randint(0, 14)  # newly logged steps before the kill
            deadline = time.monotonic() + 120
            while _per_step_lines(job / "progress.jsonl") < lines0 + 1 + delay and proc.poll() is None:
                assert time.monotonic() < deadline, "no training progress"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.03))
        if proc.poll() is not None:
            break  # it finished before this kill: the run is complete
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.2)  # the job runner dies with its parent (PR_SET_PDEATHSIG)
        ckpt_step, _ = latest_checkpoint_step(job / "ckpt")
        segs = len(load_run(rd)[0].jobs["lm"].segments) if (rd / "journal.sqlite").exists() else 0
        kills.append((seed, delay, ckpt_step or 0, segs))
    assert len(kills) >= KILLS, f"the run completed after {len(kills)} kills; make it longer"
    res = subprocess.run(resume, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    state, _ = load_run(rd)
    lm = state.jobs["lm"]
    assert lm.status == "completed" and lm.committed_step == STEPS
    metrics = _records(job / "metrics.jsonl")
    assert [r["step"] for r in metrics] == list(range(STEPS)), "metrics.jsonl must hold every step once"
    superseded = _records(job / "metrics-superseded.jsonl")
    keys = [(r["attempt"], r["step"]) for r in metrics + superseded]
    assert len(keys) == len(set(keys)), "a logged step was recorded twice"
    assert len(keys) == _per_step_lines(job / "progress.jsonl"), "a logged step was lost"
    for seed, delay, ckpt_step, nsegs in kills:  # the next attempt resumed from the newest checkpoint
        if nsegs < len(lm.segments):
            assert lm.segments[nsegs].start_step >= ckpt_step, (seed, delay, ckpt_step)
    assert sum(1 for k in kills if k[2] > 0) >= 3, "too few kills after a checkpoint to mean anything"
    # cost: ~55 s of CPU on 2 cores (20 start-ups of `saturn run` + its job runner); wall time
    # depends on the machine's load, so it is not asserted
