"""Process facts shared by the modules that keep per-process ledgers (staging memory, data cores)
and the run journal's liveness check: one definition of "this pid is alive"."""

from __future__ import annotations

import os


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
