"""One executor per run directory, held for the executor's life: an exclusive `flock` on an open
descriptor of the run directory itself.

Two executors on one run directory both train every job and fight over its journal and metrics
(#28). Why the directory and not a lock file inside it (#31): a file can be deleted (a "stale lock"
clean-up) or swapped for a symlink or a directory while a run holds it, and the next executor then
locks a new inode and trains beside the first. The directory cannot be swapped under its own open
descriptor, and its identity (st_dev, st_ino) is checked against the path after the lock is taken,
so a directory replaced between open and lock is retried, then refused. The kernel releases the
lock when the holder's process dies (SIGKILL included), so a crashed run never stays locked, while a
live one refuses every second executor -- `saturn run --resume D`, `saturn run --run-dir D`,
`Orchestrator(run_dir=D, resume=True)`, in another process or in this one (`flock` locks belong to
the open file description, so two opens in one process exclude each other too).

`RUN_DIR/executor.lock` only names the holder (pid/host, JSON) so a refusal can say who runs it.
It is written to a temp file and renamed into place, so a symlink there is replaced, never written
through; a directory there is refused naming it. Runners are started with exec (close-on-exec
fds), so they never inherit the lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any, Optional, Union

from saturn.errors import SaturnError

LOCK_FILE = "executor.lock"
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
_SWAP_RETRIES = 3


class RunLockError(SaturnError):
    """The run directory cannot be locked as it is (exit code 2); the message names the path."""


class RunLockedError(RunLockError):
    """Another executor is alive on this run directory (exit code 2)."""


def holder(run_dir: Union[str, Path]) -> dict[str, Any]:
    """What the holder file says about the holder ({} if missing, unreadable, a link or not a file)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        data = os.read(fd, 65536)
        return dict(json.loads(data or b"{}"))
    except (OSError, ValueError, TypeError):
        return {}
    finally:
        os.close(fd)


def _describe(run_dir: Path) -> str:
    h = holder(run_dir)
    for _ in range(20):  # the holder writes its pid just after taking the lock
        if h.get("pid") is not None:
            break
        time.sleep(0.05)
        h = holder(run_dir)
    pid = h.get("pid")
    if pid is None:
        return (f"a live executor holds the lock on {run_dir} ({run_dir / LOCK_FILE}, which names it, is "
                "missing or unreadable)")
    me = " (this process)" if int(pid) == os.getpid() and h.get("host") == socket.gethostname() else ""
    return f"a live executor (pid {pid}{me} on {h.get('host', '?')}) is running it"


def _refusal(run_dir: Path) -> RunLockedError:
    return RunLockedError(f"{run_dir}: {_describe(run_dir)}; one executor per run directory -- wait for it "
                          "to finish (or stop it), or pick another --run-dir")


def _open_dir(run_dir: Path) -> int:
    try:
        return os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except NotADirectoryError:
        raise RunLockError(f"{run_dir} is not a directory, so it cannot be a run directory; "
                           "pick another --run-dir") from None


def _same(fd: int, run_dir: Path) -> bool:
    """The path still names the directory the descriptor holds (nobody swapped it)."""
    try:
        a, b = os.fstat(fd), os.stat(run_dir)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _write_holder(run_dir: Path) -> None:
    """Name the holder in RUN_DIR/executor.lock: a temp file renamed over it (a link there is
    replaced, not followed). A directory there is refused naming it."""
    path = run_dir / LOCK_FILE
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise RunLockError(f"{path} is a directory, not Saturn's lock file; remove it (it is not "
                               "Saturn's) and run again")
    except FileNotFoundError:
        pass
    tmp = run_dir / f".{LOCK_FILE}.{os.getpid()}.tmp"
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, info)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise RunLockError(f"{path}: cannot be written ({exc.strerror or exc}); free space or pick a "
                           "writable --run-dir") from None


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
            try:
                lock.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunLockError(f"run directory {lock.run_dir}: cannot be created ({exc.strerror or exc}); "
                                   "free space or pick a writable --run-dir") from None
        elif not lock.run_dir.is_dir():
            raise RunLockedError(f"{lock.run_dir} is not a run directory")
        for _ in range(_SWAP_RETRIES):
            fd = _open_dir(lock.run_dir)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in _BUSY:
                    raise _refusal(lock.run_dir) from None
                raise
            if _same(fd, lock.run_dir):
                break
            os.close(fd)  # the directory was swapped between open and lock: take the new one
        else:
            raise RunLockError(f"{lock.run_dir} keeps being replaced while Saturn locks it; stop whatever "
                               "renames it and run again")
        lock._fd = fd
        try:
            _write_holder(lock.run_dir)
        except BaseException:
            lock.release()
            raise
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
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _BUSY:
            raise _refusal(Path(run_dir)) from None
    finally:
        os.close(fd)
