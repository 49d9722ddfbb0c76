"""#28: one executor per run directory. A second `saturn run --resume D`, `saturn run --run-dir D` or
`Orchestrator(resume=True)` on a live run is refused at once (exit 2 / RunLockedError) naming the
live pid; after a SIGKILL the OS frees the lock, and of two simultaneous `--resume` only one trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from saturn.executor.run_lock import RunLock, RunLockedError, check_not_locked
from tests.helpers.paths import ROOT

WORKLOAD = """name: lock
cluster: {devices: cpu, slots: 1}
defaults: {seq_len: 16, batch_size: 4, precision: fp32}
jobs:
  - {name: a, model: gpt2-tiny, steps: %d, techniques: [ddp], gpus: [1],
     data: {factory: "tests.helpers.slow_data:slow_tokens", kwargs: {vocab_size: 256, delay_s: 0.02}}}
"""


def test_second_lock_in_this_process_is_refused_naming_the_pid(tmp_path):
    lock = RunLock.acquire(tmp_path / "run")
    with pytest.raises(RunLockedError, match=rf"pid {os.getpid()} \(this process\)"):
        RunLock.acquire(tmp_path / "run")
    with pytest.raises(RunLockedError, match=str(os.getpid())):
        check_not_locked(tmp_path / "run")
    lock.release()
    check_not_locked(tmp_path / "run")
    RunLock.acquire(tmp_path / "run").release()


def test_lock_of_a_killed_process_is_released_by_the_os(tmp_path):
    rd = tmp_path / "run"
    code = ("import sys, time; from saturn.executor.run_lock import RunLock; "
            f"l = RunLock.acquire({str(rd)!r}); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on"):
            RunLock.acquire(rd)
    finally:
        holder.kill()
        holder.wait()
    RunLock.acquire(rd).release()  # SIGKILL freed it


def test_fresh_executor_refuses_a_directory_that_holds_a_run(tmp_path):
    from saturn.executor import Executor, ExecutorConfig, ExecutorError, SimulatedBackend

    prof = pd.DataFrame([{"job": "j", "technique": "ddp", "gpus": 1, "step_time_s": 0.1, "startup_s": 0.0,
                          "feasible": True}])
    ex = Executor({"j": 5}, {"n0": 1}, prof, SimulatedBackend(lambda *a: 0.1), run_dir=tmp_path / "r",
                  config=ExecutorConfig(time_limit_s=1.0))
    with pytest.raises(RunLockedError):  # the first one still holds it
        Executor({"j": 5}, {"n0": 1}, prof, SimulatedBackend(lambda *a: 0.1), run_dir=tmp_path / "r")
    ex.run_until_done()
    ex.close()
    with pytest.raises(ExecutorError, match="already holds a run"):  # free, but not fresh
        Executor({"j": 5}, {"n0": 1}, prof, SimulatedBackend(lambda *a: 0.1), run_dir=tmp_path / "r")
    check_not_locked(tmp_path / "r")  # the refused one left it free


def _files(tmp_path: Path, steps: int) -> tuple[Path, Path]:
    w = tmp_path / "w.yaml"
    w.write_text(WORKLOAD % steps)
    p = tmp_path / "p.csv"
    pd.DataFrame([{"job": "a", "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.05,
                   "startup_s": 3.0, "feasible": True}]).to_csv(p, index=False)
    return w, p


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "saturn.cli.run", *argv]


def _wait_running(rd: Path, proc: subprocess.Popen, min_step: int = 1) -> None:
    from saturn.executor.report import load_run

    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "the run ended before the test could check it"
        assert time.monotonic() < deadline
        if (rd / "journal.sqlite").exists():
            try:
                state, _ = load_run(rd)
            except Exception:  # noqa: BLE001 - racing the first writes
                state = None
            if state and any(js.status == "running" and js.progress_step >= min_step for js in state.jobs.values()):
                return
        time.sleep(0.2)


def _events(rd: Path) -> list[tuple[str, dict]]:
    from saturn.executor.journal import Journal

    j = Journal(rd / "journal.sqlite")
    try:
        return [(kind, d) for _, kind, d in j.events()]
    finally:
        j.close()


def _metric_steps(rd: Path) -> list[int]:
    p = rd / "jobs" / "a" / "metrics.jsonl"
    return [json.loads(line)["step"] for line in p.read_text().splitlines()]


@pytest.mark.slow
def test_second_executor_on_a_live_run_is_refused_and_the_first_trains_once(tmp_path):
    import saturn

    w, p = _files(tmp_path, 300)
    rd = tmp_path / "run"
    first = subprocess.Popen(_cli("run", str(w), "--run-dir", str(rd), "--profiles", str(p), "--no-live",
                                  "--checkpoint-every", "10", "--interval", "1000", "--time-limit", "1"),
                             cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_running(rd, first)
        with pytest.raises(RunLockedError, match=f"pid {first.pid}"):
            saturn.Orchestrator(saturn.Cluster(devices="cpu", slots=1), run_dir=rd, backend="process", resume=True)
        for argv in (("run", "--resume", str(rd), "--no-live"),
                     ("run", str(w), "--run-dir", str(rd), "--profiles", str(p), "--no-live")):
            t0 = time.monotonic()
            res = subprocess.run(_cli(*argv), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
            out = res.stdout + res.stderr
            assert first.poll() is None, "the first run ended before the check: make it longer"
            assert res.returncode == 2, out
            assert f"pid {first.pid}" in out and "Traceback" not in out, out
            assert time.monotonic() - t0 < 30
        out, _ = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out[-3000:]
    ev = _events(rd)
    assert [d["job"] for k, d in ev if k == "finished" and d["status"] == "completed"] == ["a"]
    assert not any(k == "resumed" for k, _ in ev)
    assert not any(k == "finished" and d["status"] == "lost" for k, d in ev)
    assert _metric_steps(rd) == list(range(300))


@pytest.mark.slow
def test_two_simultaneous_resumes_after_a_kill_only_one_trains(tmp_path):
    w, p = _files(tmp_path, 40)
    rd = tmp_path / "run"
    first = subprocess.Popen(_cli("run", str(w), "--run-dir", str(rd), "--profiles", str(p), "--no-live",
                                  "--checkpoint-every", "10", "--interval", "1000", "--time-limit", "1"),
                             cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    _wait_running(rd, first, min_step=3)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    resume = _cli("run", "--resume", str(rd), "--no-live", "--checkpoint-every", "10")
    procs = [subprocess.Popen(resume, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [pr.communicate(timeout=240)[0] for pr in procs]
    codes = sorted(pr.returncode for pr in procs)
    assert codes == [0, 2], outs
    refused = outs[[pr.returncode for pr in procs].index(2)]
    winner = procs[[pr.returncode for pr in procs].index(0)]
    assert f"pid {winner.pid}" in refused and "Traceback" not in refused, refused
    ev = _events(rd)
    assert sum(k == "resumed" for k, _ in ev) == 1
    assert [d["job"] for k, d in ev if k == "finished" and d["status"] == "completed"] == ["a"]
    assert _metric_steps(rd) == list(range(40))


# --- #31 item 2: a lock that holds against deletion and links -------------------------------------

def test_deleting_the_lock_file_of_a_live_run_does_not_free_it(tmp_path):
    rd = tmp_path / "run"
    lock = RunLock.acquire(rd)
    (rd / "executor.lock").unlink()  # a "stale lock" clean-up while the run is live
    with pytest.raises(RunLockedError, match="live executor"):
        RunLock.acquire(rd)
    with pytest.raises(RunLockedError):
        check_not_locked(rd)
    lock.release()
    RunLock.acquire(rd).release()


def test_deleting_the_lock_file_of_a_live_process_does_not_free_it(tmp_path):
    rd = tmp_path / "run"
    code = ("import time; from saturn.executor.run_lock import RunLock; "
            f"l = RunLock.acquire({str(rd)!r}); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        (rd / "executor.lock").unlink()
        with pytest.raises(RunLockedError):
            RunLock.acquire(rd, create_dir=False)
    finally:
        holder.kill()
        holder.wait()


def test_a_symlink_in_the_locks_place_is_never_written_through(tmp_path):
    rd = tmp_path / "run"
    rd.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("user data\n")
    (rd / "executor.lock").symlink_to(target)
    lock = RunLock.acquire(rd)
    assert target.read_text() == "user data\n"
    assert not (rd / "executor.lock").is_symlink()  # the link itself was replaced
    # swapped for a link while held: still refused, the target still untouched
    (rd / "executor.lock").unlink()
    (rd / "executor.lock").symlink_to(target)
    with pytest.raises(RunLockedError):
        RunLock.acquire(rd)
    assert target.read_text() == "user data\n"
    lock.release()


def test_a_directory_in_the_locks_place_is_exit_2_naming_it(tmp_path, capsys):
    from saturn.errors import SaturnError
    from saturn.executor import Executor, ExecutorConfig, SimulatedBackend
    from tests.helpers.cli import saturn_cli

    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "executor.lock").mkdir()
    with pytest.raises(SaturnError, match="executor.lock is a directory"):
        RunLock.acquire(rd)
    check_not_locked(rd)  # the refusal left the directory unlocked
    # a run directory whose lock was replaced by a directory: `saturn run --resume` exits 2 naming it
    rd2 = tmp_path / "run2"
    prof = pd.DataFrame([{"job": "j", "technique": "ddp", "gpus": 1, "step_time_s": 0.1, "startup_s": 0.0,
                          "feasible": True}])
    ex = Executor({"j": 50}, {"n0": 1}, prof, SimulatedBackend(lambda *a: 0.1), run_dir=rd2,
                  config=ExecutorConfig(time_limit_s=1.0))
    ex.close()
    (rd2 / "executor.lock").unlink()
    (rd2 / "executor.lock").mkdir()
    code, out, _ = saturn_cli(["run", "--resume", rd2, "--no-live"], capsys)
    assert code == 2, out
    assert str(rd2 / "executor.lock") in out and "directory" in out and "Traceback" not in out, out
