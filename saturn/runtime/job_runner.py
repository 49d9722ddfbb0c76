"""The process (or thread) one attempt of one job runs in, whatever the attempt is.

Cold: `spawn_runner` starts `python -m saturn.runtime.job_runner SPEC.json ENTRY` in its own
session (so a stop reaches the whole attempt, workers included), this checkout first on PYTHONPATH;
the runner dies with its parent, reads SPEC.json and calls ENTRY ("module:function") with it in its
main thread (so the launcher's SIGTERM handling turns our SIGTERM into "checkpoint and exit"). The
executor names the entry (`saturn.executor.backends.runner:run_spec`): the runtime knows no
technique. Warm: `WarmAttempt` runs the attempt in a thread on a warm pool's workers instead, with
the part of `subprocess.Popen`'s interface the backends use. `stop_attempt` and `kill_session`
stop either kind.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from saturn.runtime.process import die_with_parent, kill_and_reap, with_repo_on_path

# In a runner's command line: how an executor that resumes a run recognises its stale runners.
RUNNER_MARKER = b"saturn.runtime.job_runner"


def spawn_runner(spec_path: "Path | str", log_path: "Path | str", extra_env: dict[str, str], entry: str,
                 unset: Sequence[str] = ()) -> subprocess.Popen:
    """Start `python -m saturn.runtime.job_runner SPEC ENTRY` in its own session, its output
    appended to `log_path`; `unset`: variables of this process the runner must not inherit."""
    env = dict(os.environ)
    for k in unset:
        env.pop(k, None)
    env.update(extra_env)
    with_repo_on_path(env)
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "saturn.runtime.job_runner", str(spec_path), entry],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)


def main(spec_path: str, entry: str) -> int:
    die_with_parent()
    with open(spec_path) as f:
        spec = json.load(f)
    module, _, attr = entry.partition(":")
    getattr(importlib.import_module(module), attr)(spec)
    return 0


class WarmAttempt:
    """An attempt run in a thread of the executor on warm workers (`saturn.runtime.warm`),
    with the part of `subprocess.Popen`'s interface the backends use: `pid` (None: no runner
    process), `poll()`, `terminate()` (graceful stop: checkpoint and exit) and `kill()` (SIGKILL
    the attempt's workers; the pool replaces them). The thread only supervises: training runs in
    the workers, so a crash, hang or OOM there never reaches the executor."""

    pid: Optional[int] = None

    def __init__(self, run: Callable[[threading.Event], Any], pool: Any,
                 env: Optional[dict[str, str]] = None, name: str = "attempt"):
        self.run, self.pool, self.env = run, pool, dict(env or {})
        self.returncode: Optional[int] = None
        self._stop, self._abort = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from saturn.runtime.routing import using_pool

        try:
            with using_pool(self.pool, abort=self._abort, env=self.env):
                self.run(self._stop)
            self.returncode = 0
        except BaseException:  # noqa: BLE001 - `run` reports itself; never kill the executor
            self.returncode = 1

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        self._thread.join(timeout)
        return self.returncode

    def terminate(self) -> None:
        self._stop.set()

    def kill(self) -> None:
        self._abort.set()
        self._stop.set()
        self._thread.join(15)


def stop_attempt(handle: Any) -> None:
    """Graceful stop (checkpoint and exit): SIGTERM to a runner process, the stop event of a warm one."""
    if handle.poll() is not None:
        return
    if isinstance(handle, WarmAttempt) or getattr(handle, "stops_alone", False):  # warm, fused member
        handle.terminate()
        return
    try:
        os.kill(handle.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def kill_session(popen: Any) -> None:
    """SIGKILL a job runner and everything in its session (its workers), then reap it; a warm
    attempt's workers are killed (and replaced by the pool)."""
    if isinstance(popen, WarmAttempt):
        popen.kill()
        return
    if popen.poll() is None:
        kill_and_reap([popen])


if __name__ == "__main__":
    rc = main(sys.argv[1], sys.argv[2])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
