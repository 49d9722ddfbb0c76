"""Run a technique's worker function in a fresh set of processes, one per device (cold), or on
the warm workers of the calling thread's `saturn.runtime.warm.WarmPool` (`routing.using_pool`).

Why fresh processes: every trial and every run must start from a clean CUDA context and process
group (an OOM or a NCCL hang poisons the process), and the executor must be able to stop, time out
and relaunch a job with another technique or GPU count without leaking GPUs, ports or orphans.

    result = run_workers("saturn.training.loop:worker_entry", payload, devices=[0, 1],
                         timeout_s=600, log_path="runs/job/log.txt")

`result` is always a dict with a `status`:
  * on success, rank 0's JSON result (whatever the target returned; `status` defaults to "ok");
  * on failure, {"status": "oom" | "host_oom" | "failed" | "timeout" | "interrupted", "reason",
    "error_type", "signal", "host_peak_gb", "host_limit_gb", "log_tail"} (an "interrupted" run whose
    rank 0 still wrote its result returns that result instead). The status comes from typed
    signals only (`saturn.runtime.causes`): the exception type a rank wrote, or how a rank that
    wrote nothing died (its signal; a SIGKILL with the kernel's OOM evidence is "host_oom");
    `log_tail` is context, never read for the cause.

Each worker is `python -m saturn.runtime.worker <rundir>`: it reads `<rundir>/payload.json`,
initializes the process group (nccl on GPUs, gloo on CPU "slots"), calls `target(payload, ctx)`
(`ctx` is a `worker.WorkerContext`) and writes `<rundir>/result-<rank>.json`.

Stopping: SIGTERM/SIGINT to the launcher (main thread only) or setting `stop_event` forwards SIGTERM
to all workers; the training loop finishes its step, checkpoints and returns "interrupted". After
`grace_s` every worker's process group is SIGKILLed. Workers also die with the launcher (Linux
PDEATHSIG), so a SIGKILLed launcher leaves no orphans either.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional, Protocol, Sequence

from saturn.runtime.causes import MemoryWatch
from saturn.runtime.process import kill_and_reap, log_tail, signal_group, with_repo_on_path
from saturn.runtime.routing import current_abort, current_pool
from saturn.runtime.warm_handle import WarmUnavailable
from saturn.runtime.worker import write_payload


def resolve_device_type(device_type: str = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'."""
    if device_type != "auto":
        return device_type
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def free_port() -> int:
    """A TCP port free right now (the OS picks it; the rendezvous binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(target: str, payload: dict[str, Any], devices: list[int], *,
                device_type: str = "auto", timeout_s: float = 600.0,
                log_path: Optional[str] = None, env: Optional[dict[str, str]] = None,
                grace_s: float = 60.0, stop_event: Optional[threading.Event] = None) -> dict[str, Any]:
    """Run `target(payload, ctx)` ("pkg.module:function") in one process per device; rank 0's result.

    `devices`: GPU ids (become CUDA_VISIBLE_DEVICES, in this order) or, on CPU, just one slot per
    rank. `env`: extra environment for the workers. `timeout_s`: wall-clock limit for the whole
    launch (start-up included). Never raises for worker failures: see the module docstring.
    """
    device_type = resolve_device_type(device_type)
    pool = current_pool()
    if pool is not None and pool.device_type == device_type:
        try:  # the calling thread asked for warm workers (see saturn.runtime.warm)
            return pool.run(target, payload, devices, timeout_s=timeout_s, log_path=log_path, env=env,
                            grace_s=grace_s, stop_event=stop_event, abort_event=current_abort())
        except WarmUnavailable as exc:
            print(f"saturn: warm workers unavailable ({exc}); launching cold", file=sys.stderr)
    rundir = tempfile.mkdtemp(prefix="saturn-launch-")
    try:
        write_payload(rundir, target, payload)
        procs = _spawn(rundir, devices, device_type, env or {})
        watch = MemoryWatch([p.pid for p in procs])
        outcome, culprit = _supervise(procs, timeout_s, grace_s, stop_event, watch)
        result = collect(rundir, procs, outcome, culprit, watch)
        if log_path:
            write_log(rundir, len(procs), log_path)
        return result
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def _worker_env(rank: int, world: int, port: int, devices: list[int], device_type: str,
                extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)  # keeps NCCL_* (e.g. NCCL_NVLS_ENABLE) and the like from the parent
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
               LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               SATURN_DEVICE_TYPE=device_type, SATURN_LAUNCH_TIME=repr(time.time()),
               PYTHONUNBUFFERED="1")
    with_repo_on_path(env)
    if device_type == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    else:  # CPU slots: one thread each, so N workers do not fight over the cores
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   SATURN_TORCH_THREADS="1")
    env.update(extra)
    return env


def _spawn(rundir: str, devices: list[int], device_type: str,
           extra: dict[str, str]) -> list[subprocess.Popen]:
    """One process per device, each in its own session (so a kill takes its children along)."""
    port, world, procs = free_port(), len(devices), []
    try:
        for rank in range(world):
            log = open(os.path.join(rundir, f"log-{rank}.txt"), "wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "saturn.runtime.worker", rundir],
                env=_worker_env(rank, world, port, devices, device_type, extra),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=os.getcwd()))
            log.close()
    except BaseException:
        kill_and_reap(procs)
        raise
    return procs


class Signals:
    """Turn SIGTERM/SIGINT to the launcher into a flag while workers run (main thread only)."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _supervise(procs: list[subprocess.Popen], timeout_s: float, grace_s: float,
               stop_event: Optional[threading.Event], watch: MemoryWatch) -> tuple[str, int]:
    """Wait for the workers: ('done' | 'failed' | 'timeout' | 'interrupted', first failed rank).
    The first rank to fail is the culprit: its peers fail after it (connection closed)."""
    deadline = time.monotonic() + timeout_s
    try:
        with Signals() as sigs:
            while True:
                watch.sample()
                codes = [p.poll() for p in procs]
                if all(c == 0 for c in codes):
                    return "done", 0
                bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
                if bad:
                    _wait_or_kill(procs, min(grace_s, 5.0))  # peers usually hang in a collective
                    return "failed", bad[0]
                if time.monotonic() > deadline:
                    kill_and_reap(procs)
                    return "timeout", 0
                if sigs.received is not None or (stop_event is not None and stop_event.is_set()):
                    _terminate_gracefully(procs, grace_s)
                    return "interrupted", 0
                time.sleep(0.05)
    finally:
        kill_and_reap(procs)  # no-op when they all exited; covers exceptions in this thread


def _terminate_gracefully(procs: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM every worker (they checkpoint and exit), then SIGKILL what is left after grace_s."""
    for p in procs:
        if p.poll() is None:
            signal_group(p.pid, signal.SIGTERM)
    _wait_or_kill(procs, grace_s)


def _wait_or_kill(procs: list[subprocess.Popen], grace_s: float) -> None:
    end = time.monotonic() + grace_s
    while time.monotonic() < end and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    kill_and_reap(procs)


class Exit(Protocol):
    """What `collect` reads of a worker: a `Popen`, or `warm_handle.Exited` for a warm worker."""

    @property
    def returncode(self) -> Optional[int]: ...


def collect(rundir: str, procs: Sequence[Exit], outcome: str, culprit: int,
            watch: Optional[MemoryWatch] = None) -> dict[str, Any]:
    """Rank 0's result, or a structured failure whose status and reason come from typed signals:
    the exception type a rank wrote, else how the rank died (`causes.Death`)."""
    results = [_read_json(os.path.join(rundir, f"result-{r}.json")) for r in range(len(procs))]
    if outcome == "done" and results[0] is not None:
        results[0].setdefault("status", "ok")
        return results[0]
    if outcome == "interrupted" and results[0] is not None:
        return results[0]
    peak = {"host_peak_gb": watch.peak_gb()} if watch is not None else {}
    bad = _root_cause(procs, results, culprit)
    tail = log_tail(os.path.join(rundir, f"log-{bad}.txt"))
    typed = [str((r or {}).get("status")) for r in results]
    out: dict[str, Any] = {**peak, "error_type": (results[bad] or {}).get("error_type", ""), "signal": None}
    if outcome == "done":  # exited 0 but wrote nothing: the target did not return a result
        status, reason = "failed", "rank 0 exited without writing a result"
    elif results[bad] is None and outcome == "failed":  # it died: its signal and memory say how
        death = (watch or MemoryWatch([None] * len(procs))).death(bad, procs[bad].returncode)
        status, reason = death.status, death.describe()
        out.update(signal=death.signal, host_limit_gb=death.limit_gb,
                   host_peak_gb=death.peak_gb if death.peak_gb is not None else out.get("host_peak_gb"))
    else:
        mem = next((s for s in ("oom", "host_oom") if s in typed), None)  # any rank's typed OOM
        status = outcome if outcome in ("timeout", "interrupted") else (mem or "failed")
        reason = _reason(status, bad, procs[bad].returncode, results[bad], tail)
    return {**out, "status": status, "reason": reason, "log_tail": tail}


_PEER_LOSS = ("Connection closed by peer", "Connection reset by peer", "remote worker crash",
              "NCCL communicator was aborted", "Broken pipe", "ProcessGroupGloo")


def _root_cause(procs: Sequence[Exit], results: list[Optional[dict]], culprit: int) -> int:
    """The rank that failed for its own reason: the first to exit non-zero, unless its error only
    says that a peer went away (ranks failing within one poll interval look simultaneous)."""
    failed = [culprit] + [r for r, p in enumerate(procs) if r != culprit and p.returncode not in
                          (0, None, -signal.SIGKILL, -signal.SIGTERM)]
    for r in failed:
        reason = (results[r] or {}).get("reason", "")
        if reason and not any(m in reason for m in _PEER_LOSS):
            return r
    return culprit


def _reason(status: str, rank: int, code: Optional[int], result: Optional[dict], tail: str) -> str:
    if result is not None and result.get("reason"):
        return f"rank {rank}: {result['reason']}"
    last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
    return f"{status}: rank {rank} exit code {code}: {last[-300:]}"


def _read_json(path: str) -> Optional[dict[str, Any]]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_log(rundir: str, world: int, log_path: str) -> None:
    """All ranks' output in one file, rank by rank (appended: a job's relaunches share a log)."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "ab") as out:
        for r in range(world):
            out.write(f"===== rank {r} =====\n".encode())
            try:
                with open(os.path.join(rundir, f"log-{r}.txt"), "rb") as f:
                    shutil.copyfileobj(f, out)
            except OSError:
                pass
