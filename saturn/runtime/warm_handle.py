"""One warm worker process seen from its pool (`saturn.runtime.warm.WarmPool`): how it is started
(from one long-lived thread, so PDEATHSIG does not fire with a short-lived job thread), its replies
and drain reports read by a thread, and how it is signalled and killed."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

from saturn.runtime.process import kill_and_reap

PRELOAD_ENV = "SATURN_WARM_PRELOAD"  # what a worker imports before it is ready (see warm_worker)


class WarmUnavailable(RuntimeError):
    """No warm worker can take this job now (the caller launches cold instead)."""


class Spawner:
    """Starts workers from one long-lived thread: PR_SET_PDEATHSIG fires when the *thread* that
    forked the child ends, so workers spawned from a short-lived job thread would die with it."""

    def __init__(self) -> None:
        self._q: "queue.Queue[tuple[Callable[[], Any], queue.Queue]]" = queue.Queue()
        threading.Thread(target=self._loop, name="saturn-warm-spawner", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, out = self._q.get()
            try:
                out.put((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                out.put((False, exc))

    def call(self, fn: Callable[[], Any]) -> Any:
        out: queue.Queue = queue.Queue()
        self._q.put((fn, out))
        ok, value = out.get()
        if not ok:
            raise value
        return value


class WarmWorker:
    """Handle of one warm worker process: commands go to its stdin, replies (JSON lines) come on
    a pipe read by a thread into `replies`."""

    def __init__(self, slot: int, device_type: str, env: dict[str, str], log_path: str,
                 spawner: Spawner):
        self.slot, self.device_type = slot, device_type
        self.replies: "queue.Queue[dict]" = queue.Queue()
        self.ready: Optional[dict] = None
        self.baseline: dict[str, float] = {}
        self.jobs = 0
        self.busy = False
        self.replied = True  # answered its last job (alive and idle: safe to retire gracefully)
        self.spawned_at = time.monotonic()
        self.start_s: Optional[float] = None  # spawn -> ready, measured
        self.draining: set[str] = set()  # checkpoint paths this worker is still writing
        self.drains: dict[str, dict] = {}  # path -> its "drained" report
        self.on_drain: Optional[Callable[["WarmWorker", dict], None]] = None
        r, w = os.pipe()
        try:
            with open(log_path, "ab") as out:
                self.popen = spawner.call(lambda: subprocess.Popen(
                    [sys.executable, "-m", "saturn.runtime.warm_worker", str(slot), device_type, str(w)],
                    env=env, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                    pass_fds=(w,), start_new_session=True, cwd=os.getcwd()))
        finally:
            os.close(w)
        self.pid = self.popen.pid
        threading.Thread(target=self._read, args=(r,), name=f"warm-{slot}-replies", daemon=True).start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd) as f:
            for line in f:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("event") in ("draining", "drained"):
                    self._drain_report(msg)
                else:
                    self.replies.put(msg)
        lost = sorted(self.draining)
        self.draining.clear()
        for path in lost:  # died (or was killed) before these were written
            self._drain_report({"event": "drained", "path": path, "ok": False,
                                "error": f"warm worker {self.pid} (slot {self.slot}) exited while "
                                         "writing it"})
        self.replies.put({"event": "eof"})

    def _drain_report(self, msg: dict) -> None:
        path = str(msg.get("path"))
        if msg["event"] == "draining":
            self.draining.add(path)
        else:
            self.draining.discard(path)
            self.drains[path] = msg
        if self.on_drain is not None:
            self.on_drain(self, msg)

    @property
    def returncode(self) -> Optional[int]:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout_s: float) -> None:
        if self.ready is not None:
            return
        try:
            msg = self.replies.get(timeout=timeout_s)
        except queue.Empty:
            raise WarmUnavailable(f"warm worker for slot {self.slot} not ready after {timeout_s:.0f}s") from None
        if msg.get("event") != "ready":
            raise WarmUnavailable(f"warm worker for slot {self.slot} died while starting "
                                  f"(exit code {self.reap()})")
        self.ready, self.baseline = msg, dict(msg.get("mem") or {})
        self.start_s = time.monotonic() - self.spawned_at

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps(cmd) + "\n").encode())
        self.popen.stdin.flush()

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self, timeout_s: float = 120.0) -> Optional[int]:
        """The exit status of a worker whose reply pipe closed (it is dying), never raising: a
        process the kernel killed at 100+ GB can take longer than a few seconds to exit while its
        memory is freed (a 10 s `wait` raised TimeoutExpired, which was reported as the job's
        cause and masked an OOM kill, #33). Past `timeout_s` it is SIGKILLed and reaped."""
        end = time.monotonic() + timeout_s
        while self.popen.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        if self.popen.poll() is None:
            self.kill()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the worker and anything it started (its own session), then reap it."""
        kill_and_reap([self.popen])


class Exited:
    """What `launch.collect` reads of a process: its return code."""

    def __init__(self, code: Optional[int]):
        self.returncode = code
