"""A real CPU run as a user sees it (#34): `saturn run` piped to a file prints progress lines,
streams losses to TensorBoard, and leaves results, loss curves and job logs behind.

One run of tiny-cpu (4 jobs, 20 steps each, 2 CPU slots; ~20 s) shared by the checks below.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import saturn
from tests.helpers.cli import saturn_cli

ROOT = Path(__file__).resolve().parents[2]


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("user")
    run, out = tmp / "run", tmp / "out.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "SATURN_PROFILES": str(tmp / "store")}
    cmd = [sys.executable, "-m", "saturn", "run", str(ROOT / "configs/examples/tiny-cpu.yaml"), "--run-dir", str(run),
           "--progress-every", "1"]
    if _has_tensorboard():
        cmd += ["--log-to", f"tensorboard:{tmp / 'tb'}"]
    with open(out, "w") as f:  # not a terminal
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=600, cwd=tmp).returncode
    return run, out.read_text(), code, tmp


@pytest.mark.slow
def test_progress_lines_when_output_is_a_file(cpu_run):
    _, text, code, _ = cpu_run
    assert code == 0, text
    lines = text.splitlines()
    assert sum(x.startswith("[t=") and " started " in x for x in lines) >= 4, text
    assert sum(x.startswith("[t=") and " completed " in x for x in lines) == 4, text
    status = [x for x in lines if "] jobs " in x and " done, " in x]
    assert status and "jobs 4/4 done, 0 running, 0 waiting" in status[-1] and "ETA" in status[0], text
    assert " slot " in text and "slot allocation" in text  # CPU slots called slots; the summary follows


@pytest.mark.slow
def test_results_curves_and_logs_of_a_cpu_run(cpu_run, tmp_path, capsys):
    run, _, code, _ = cpu_run
    assert code == 0
    df = saturn.results(run)
    assert len(df) == 4 and set(df["status"]) == {"completed"} and df["best"].sum() == 1
    assert {"optimizer.lr", "model.name"} <= set(df.attrs["hyperparameters"])
    assert df["final_loss"].notna().all() and (df["best_loss"] <= df["final_loss"]).all()
    png = tmp_path / "curves.png"
    code, out, _ = saturn_cli(["report", run, "--curves", png], capsys)
    assert code == 0, out
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert f"saturn results {run}" in out
    job = df["job"].iloc[0]
    code, out, _ = saturn_cli(["logs", run, job, "-f"], capsys)  # ended job: -f returns
    assert code == 0, out
    assert "step 20/20  loss " in out and "===== rank 0 =====" in out
    code, out, _ = saturn_cli(["logs", run, "no-such-job"], capsys)
    assert code == 2 and job in out


@pytest.mark.slow
def test_losses_streamed_to_tensorboard(cpu_run):
    if not _has_tensorboard():
        pytest.skip("tensorboard not installed (pip install 'saturn-spase[track]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, code, tmp = cpu_run
    assert code == 0
    jobs = sorted(p.name for p in (tmp / "tb").iterdir())
    assert jobs == sorted(saturn.results(run)["job"])
    acc = EventAccumulator(str(tmp / "tb" / jobs[0]))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("loss")]
    assert steps == list(range(1, 21))
