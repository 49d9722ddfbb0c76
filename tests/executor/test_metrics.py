"""#28: metrics that survive tampering. A metrics.jsonl deleted mid-run is rebuilt from the
attempts' progress records; undecodable lines are skipped with a warning and never crash the
run's summary, `saturn status` or `saturn report`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd
import pytest

from saturn.executor.metrics import MetricsLog, read_metrics
from tests.helpers.paths import ROOT

GARBAGE = b'\xff\xfe\x00garbage\n{"step": "x", "loss": 1}\n[1, 2]\n{"step": 3.5}\n{"step": 1, "lo'


def _seg(attempt, start, offset):
    return SimpleNamespace(attempt=attempt, start_step=start, end_step=None, ended_at=None, technique="ddp",
                           gpus=[0], progress_offset=offset)


def test_deleted_metrics_file_is_rebuilt_from_progress_records(tmp_path):
    d = tmp_path / "jobs" / "j"
    d.mkdir(parents=True)
    prog = d / "progress.jsonl"
    prog.write_text("".join(json.dumps({"step": s + 1, "loss": 1.0 / (s + 1)}) + "\n" for s in range(8)))
    m = MetricsLog(tmp_path)
    seg = _seg(1, 0, 0)
    for s in range(8):
        m.record_progress("j", seg, s + 1, 1.0 / (s + 1))
    m.flush()
    assert m.missing() == []
    m.path("j").unlink()
    assert m.missing() == ["j"]
    m.rebuild("j", [seg])
    assert [r["step"] for r in read_metrics(m.path("j"))] == list(range(8))
    m.record_progress("j", seg, 9, 0.1)  # the run goes on: appended once, after the rebuilt steps
    m.flush()
    assert [r["step"] for r in read_metrics(m.path("j"))] == list(range(9)) and m.missing() == []


def test_undecodable_metrics_lines_are_skipped_with_a_warning(tmp_path, caplog):
    p = tmp_path / "jobs" / "j" / "metrics.jsonl"
    p.parent.mkdir(parents=True)
    p.write_bytes(b'{"step": 0, "loss": 2.0, "attempt": 1}\n' + GARBAGE + b'\n{"step": 2, "loss": 1.0, "attempt": 1}\n')
    with caplog.at_level("WARNING"):
        assert [r["step"] for r in read_metrics(p)] == [0, 2]
    assert "undecodable" in caplog.text


WORKLOAD = """name: tamper
cluster: {devices: cpu, slots: 1}
defaults: {seq_len: 16, batch_size: 4, precision: fp32}
jobs:
  - {name: a, model: gpt2-tiny, steps: 80, techniques: [ddp], gpus: [1],
     data: {factory: "tests.helpers.slow_data:slow_tokens", kwargs: {vocab_size: 256, delay_s: 0.02}}}
"""


@pytest.mark.slow
def test_metrics_deleted_mid_run_and_garbled_after(tmp_path):
    w = tmp_path / "w.yaml"
    w.write_text(WORKLOAD)
    p = tmp_path / "p.csv"
    pd.DataFrame([{"job": "a", "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.05, "startup_s": 3.0,
                   "feasible": True}]).to_csv(p, index=False)
    rd = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "saturn.cli.run"]
    proc = subprocess.Popen([*cli, "run", str(w), "--run-dir", str(rd), "--profiles", str(p), "--no-live",
                             "--checkpoint-every", "20", "--interval", "1000", "--time-limit", "1"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = rd / "jobs" / "a" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    try:
        while not (metrics.exists() and len(metrics.read_bytes().splitlines()) >= 10):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the deletion"
            time.sleep(0.1)
        metrics.unlink()
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert [r["step"] for r in read_metrics(metrics)] == list(range(80))
    assert "was deleted during the run; rebuilt" in " ".join(out.split())
    with open(metrics, "ab") as f:
        f.write(GARBAGE)
    for cmd in ("status", "report"):
        r = subprocess.run([*cli, cmd, str(rd)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        text = r.stdout + r.stderr
        assert r.returncode == 0 and "Traceback" not in text, text[-3000:]
        assert "undecodable line(s) skipped" in " ".join(text.split()), text[-3000:]
