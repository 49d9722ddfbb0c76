"""One executor per run directory: `RUN_DIR/executor.lock`, held for the executor's life.

Two executors on one run directory both train every job and fight over its journal and metrics
(#28). The lock is an exclusive `flock` on an open file descriptor: the kernel releases it when the
holder's process dies (SIGKILL included), so a crashed run never stays locked, while a live one
refuses every second executor -- `saturn run --resume D`, `saturn run --run-dir D`,
`Orchestrator(run_dir=D, resume=True)`, in another process or in this one (`flock` locks belong
to the open file, so two opens in one process exclude each other too).

The file holds the holder's pid/host (JSON) so the refusal can name it. It is taken before
anything else is written into the run directory, and released by `RunLock.release` (the
executor's `close`) or by the process ending. Runners are started with exec (close-on-exec fds),
so they never inherit it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional, Union

from saturn.errors import SaturnError

LOCK_FILE = "executor.lock"


class RunLockedError(SaturnError):
    """Another executor is alive on this run directory (exit code 2)."""


def holder(run_dir: Union[str, Path]) -> dict[str, Any]:
    """What the lock file says about its holder ({} if unreadable or empty)."""
    try:
        return dict(json.loads((Path(run_dir) / LOCK_FILE).read_text() or "{}"))
    except (OSError, ValueError, TypeError):
        return {}


def _describe(run_dir: Path) -> str:
    h = holder(run_dir)
    for _ in range(20):  # the holder writes its pid just after taking the lock
        if h.get("pid") is not None:
            break
        time.sleep(0.05)
        h = holder(run_dir)
    pid = h.get("pid")
    if pid is None:
        return f"another executor holds {run_dir / LOCK_FILE} (it is just starting)"
    me = " (this process)" if int(pid) == os.getpid() and h.get("host") == socket.gethostname() else ""
    return f"a live executor (pid {pid}{me} on {h.get('host', '?')}) is running it"


class RunLock:
    """The exclusive lock of one run directory (see the module docstring)."""

    def __init__(self, run_dir: Union[str, Path]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: Optional[int] = None

    @classmethod
    def acquire(cls, run_dir: Union[str, Path], *, create_dir: bool = True) -> "RunLock":
        """Take the lock now or raise RunLockedError naming the live holder. create_dir: make the
        run directory if it is missing (a fresh run); else a missing one is an error."""
        lock = cls(run_dir)
        if create_dir:
            lock.run_dir.mkdir(parents=True, exist_ok=True)
        elif not lock.run_dir.is_dir():
            raise RunLockedError(f"{lock.run_dir} is not a run directory")
        fd = os.open(lock.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(f"{lock.run_dir}: {_describe(lock.run_dir)}; one executor per run "
                                     "directory -- wait for it to finish (or stop it), or pick another "
                                     "--run-dir") from None
            raise
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        lock._fd = fd
        return lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __del__(self) -> None:  # an executor dropped without close(): the fd goes, and the lock with it
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def check_not_locked(run_dir: Union[str, Path]) -> None:
    """Raise RunLockedError if a live executor holds `run_dir` (nothing is created or changed)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLockedError(f"{run_dir}: {_describe(Path(run_dir))}; one executor per run directory -- "
                                 "wait for it to finish (or stop it), or pick another --run-dir") from None
    finally:
        os.close(fd)
