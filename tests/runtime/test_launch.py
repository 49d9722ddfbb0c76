"""The launcher: results, structured failures (failed / oom / timeout), and no processes left behind
after a crash, a hang, a SIGTERM to the launcher or a SIGKILL of the launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from saturn.runtime.launch import run_workers
from tests.helpers.paths import ROOT

HERE = "tests.runtime.test_launch"


# ----------------------------------------------------------------- targets run inside workers
def _record_pid(payload: dict) -> None:
    with open(os.path.join(payload["dir"], f"pid-{os.getpid()}"), "w") as f:
        f.write(str(os.getpid()))


def ok_target(payload: dict, ctx) -> dict:
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(t)
    return {"sum": float(t), "world": ctx.world_size, "x": payload["x"]}


def crash_target(payload: dict, ctx) -> dict:
    if ctx.rank == 1:
        raise RuntimeError("boom from rank 1")
    import torch.distributed as dist

    dist.barrier()  # rank 0 hangs here: the launcher must still end it
    return {}


def oom_target(payload: dict, ctx) -> dict:
    import torch

    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 PiB")


def hang_target(payload: dict, ctx) -> dict:
    _record_pid(payload)
    while True:
        time.sleep(0.1)


def stoppable_target(payload: dict, ctx) -> dict:
    """Loops until SIGTERM (as the training loop does), then reports."""
    _record_pid(payload)
    while not ctx.stop_requested():
        time.sleep(0.05)
    return {"status": "interrupted", "rank": ctx.rank}


# ------------------------------------------------------------------------------------ helpers
def _alive(pid_dir: str) -> list[int]:
    pids = [int(n.split("-")[1]) for n in os.listdir(pid_dir) if n.startswith("pid-")]
    return [p for p in pids if psutil.pid_exists(p)
            and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def _wait_for_pids(pid_dir: str, n: int, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while time.time() < end and len([f for f in os.listdir(pid_dir) if f.startswith("pid-")]) < n:
        time.sleep(0.1)


def _no_workers_of(pid: int) -> bool:
    """No live Saturn worker below `pid` (other children, e.g. a Ray cluster an earlier test
    started in this pytest process, are not ours to judge)."""
    def is_worker(c: psutil.Process) -> bool:
        try:
            return (c.is_running() and c.status() != psutil.STATUS_ZOMBIE
                    and "saturn.runtime.worker" in " ".join(c.cmdline()))
        except psutil.Error:
            return False

    return not [c for c in psutil.Process(pid).children(recursive=True) if is_worker(c)]


# --------------------------------------------------------------------------------------- tests
def test_result_of_rank0_and_allreduce_works():
    res = run_workers(f"{HERE}:ok_target", {"x": 7}, [0, 1], device_type="cpu", timeout_s=120)
    assert res == {"sum": 3.0, "world": 2, "x": 7, "status": "ok"}
    assert _no_workers_of(os.getpid())


def test_crash_is_failed_with_log_tail(tmp_path):
    log = tmp_path / "log.txt"
    res = run_workers(f"{HERE}:crash_target", {}, [0, 1], device_type="cpu", timeout_s=120,
                      log_path=str(log), grace_s=2)
    assert res["status"] == "failed"
    assert "boom from rank 1" in res["reason"]
    assert "boom from rank 1" in res["log_tail"]
    assert "===== rank 1 =====" in log.read_text()
    assert _no_workers_of(os.getpid())


def test_oom_is_told_apart():
    res = run_workers(f"{HERE}:oom_target", {}, [0], device_type="cpu", timeout_s=120)
    assert res["status"] == "oom"
    assert "out of memory" in res["reason"]


def test_hang_times_out_and_leaves_nothing(tmp_path):
    t0 = time.time()
    res = run_workers(f"{HERE}:hang_target", {"dir": str(tmp_path)}, [0, 1], device_type="cpu",
                      timeout_s=8)
    assert res["status"] == "timeout"
    assert time.time() - t0 < 30
    assert _alive(str(tmp_path)) == []
    assert _no_workers_of(os.getpid())


_LAUNCHER = textwrap.dedent("""
    import json, sys
    from saturn.runtime.launch import run_workers
    res = run_workers("{target}", {{"dir": sys.argv[1]}}, [0, 1], device_type="cpu",
                      timeout_s=300, grace_s={grace})
    print("RESULT " + json.dumps(res), flush=True)
""")


def _start_launcher(tmp_path, target: str, grace: float) -> subprocess.Popen:
    code = _LAUNCHER.format(target=f"{HERE}:{target}", grace=grace)
    return subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, cwd=str(ROOT))


def test_sigterm_to_launcher_is_forwarded_and_workers_exit(tmp_path):
    proc = _start_launcher(tmp_path, "stoppable_target", grace=30)
    _wait_for_pids(str(tmp_path), 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    res = json.loads(out.split("RESULT ", 1)[1])
    assert res == {"status": "interrupted", "rank": 0}
    assert _alive(str(tmp_path)) == []


def test_sigterm_ignored_by_workers_is_followed_by_kill(tmp_path):
    proc = _start_launcher(tmp_path, "hang_target", grace=1)
    _wait_for_pids(str(tmp_path), 2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert json.loads(out.split("RESULT ", 1)[1])["status"] == "interrupted"
    assert _alive(str(tmp_path)) == []


def test_sigkill_of_launcher_leaves_no_orphans(tmp_path):
    proc = _start_launcher(tmp_path, "hang_target", grace=1)
    _wait_for_pids(str(tmp_path), 2)
    proc.kill()
    proc.wait()
    end = time.time() + 10
    while time.time() < end and _alive(str(tmp_path)):
        time.sleep(0.1)
    assert _alive(str(tmp_path)) == []


@pytest.mark.parametrize("bad", ["no_such_module:f", f"{HERE}:no_such_function"])
def test_bad_target_is_failed_not_raised(bad):
    res = run_workers(bad, {}, [0], device_type="cpu", timeout_s=120)
    assert res["status"] == "failed"
