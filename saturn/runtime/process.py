"""Process facts and acts every part of the runtime shares, written once: is a pid alive, this
checkout on a child's PYTHONPATH, die with the parent, kill a process group and reap it, the tail
of a log, and a function called in a fresh spawned process under a time limit."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import time
from typing import Any, Callable, Iterable, Optional

# The directory that holds the `saturn` package: children import this checkout, wherever they run.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a process we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def with_repo_on_path(env: dict[str, str]) -> dict[str, str]:
    """`env` with this checkout first on PYTHONPATH (in place; returned for chaining)."""
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so a killed launcher leaves no orphans."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def signal_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid` (children started with start_new_session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_and_reap(procs: Iterable[Any], timeout_s: float = 10.0) -> None:
    """SIGKILL each process's whole group (its session: workers, their children) and reap it, so
    no zombie stays and its ports and devices are free. `procs`: `subprocess.Popen`-like objects
    (`pid`, `wait(timeout)`), started in their own session."""
    procs = list(procs)
    for p in procs:
        signal_group(p.pid, signal.SIGKILL)
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass


def kill_stale(pid: Optional[int], marker: bytes) -> None:
    """SIGKILL the process group of `pid` if that pid still runs a command line containing
    `marker` (a process of ours that outlived its parent; a recycled pid is left alone)."""
    if not pid:
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return
    if marker in cmd:
        signal_group(pid, signal.SIGKILL)


def log_tail(path: "str | os.PathLike", n: int = 4000) -> str:
    """The last `n` bytes of a log file as text ('' when it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _child(target: Callable[..., dict], args: tuple, conn: Any) -> None:
    try:
        out = target(*args)
    except BaseException as exc:  # noqa: BLE001
        out = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    try:
        conn.send(out)
    finally:
        conn.close()


def call_in_process(target: Callable[..., dict], args: tuple, timeout_s: float,
                    grace_s: float = 10.0, what: str = "trial") -> dict[str, Any]:
    """`target(*args)` (a picklable, module-level function returning a dict) in a fresh spawned
    process; its dict, or {"status": "failed" | "timeout", "reason"} when the process could not
    start, died, or gave no answer within timeout + grace (it is then killed)."""
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(target, args, send), daemon=True)
    start = time.monotonic()
    try:
        proc.start()
    except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable job from a user plug-in
        return {"status": "failed", "reason": f"could not start the {what} process: {exc}"}
    send.close()
    try:
        if recv.poll(timeout_s + grace_s):
            try:
                return recv.recv()
            except EOFError:
                pass
            proc.join(5)
            return {"status": "failed", "reason": f"{what} process died (exit code {proc.exitcode})"}
        if proc.is_alive():
            return {"status": "timeout",
                    "reason": f"no result after {time.monotonic() - start:.0f}s (limit {timeout_s:.0f}s);"
                              f" the {what} process was killed"}
        proc.join(5)
        return {"status": "failed", "reason": f"{what} process died (exit code {proc.exitcode})"}
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        recv.close()
