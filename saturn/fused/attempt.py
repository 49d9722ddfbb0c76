"""One member's view of a running fused attempt, for the executor's process backend (no torch).

Why: the backend tracks attempts per job through a `subprocess.Popen`-like handle (`poll`,
`terminate`, `kill`, `pid`). A fused group is one runner process for several jobs, but each member
must finish and stop on its own (`saturn.fused.runner.run_fused_attempt` writes a member's result
file when it leaves, and makes a member leave when its leave file appears). So each member gets
this handle: it has finished once its result file exists (or the process has exited), and
`terminate` asks only this member to checkpoint and leave; the others keep training.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional


def leave_path(result_path: str, attempt: int) -> str:
    """The leave file of a member's attempt, beside its result file."""
    return os.path.join(os.path.dirname(str(result_path)), f"leave-{attempt}")


class MemberAttempt:
    """Popen-like handle of one fused member (see the module docstring)."""

    stops_alone = True  # backends.stop_attempt: terminate() instead of SIGTERM to the shared process

    def __init__(self, popen: Any, result_path: str, leave_path: str):
        self.popen, self.result_path, self.leave_path = popen, str(result_path), str(leave_path)
        self.pid = popen.pid

    def poll(self) -> Optional[int]:
        code = self.popen.poll()
        if code is not None:
            return code
        return 0 if os.path.exists(self.result_path) else None

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() >= end:
                return None
            time.sleep(0.05)
        return self.poll()

    def terminate(self) -> None:
        """Ask this member alone to checkpoint and leave the group (an empty leave file)."""
        if self.poll() is None:
            fd = os.open(self.leave_path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(fd)

    def kill(self) -> None:
        """A member cannot be killed alone (its tensors live in the shared process): kill the group."""
        self.popen.kill()
