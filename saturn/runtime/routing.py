"""Which warm pool the calling thread's launches go to (`using_pool`), read by `launch.run_workers`.

A module of its own so that the cold launcher and the warm pool do not import each other: the pool
uses the launcher's supervision, the launcher only asks this thread-local which pool (if any) to
hand a launch to. A pool is anything with `device_type` and `run(...)` (`saturn.runtime.warm.WarmPool`)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Optional

_local = threading.local()


def current_pool() -> Optional[Any]:
    return getattr(_local, "pool", None)


def current_abort() -> Optional[threading.Event]:
    return getattr(_local, "abort", None)


def current_env() -> dict[str, str]:
    return getattr(_local, "env", None) or {}


@contextlib.contextmanager
def using_pool(pool: Optional[Any], abort: Optional[threading.Event] = None,
               env: Optional[dict[str, str]] = None) -> Iterator[None]:
    """Route `run_workers` calls made in this thread to `pool` (None: cold). Setting `abort`
    SIGKILLs the running job's workers (they are replaced); stop_event stays the graceful stop.
    `env`: extra environment for these jobs (what a cold runner would have inherited)."""
    old = (current_pool(), current_abort(), current_env())
    _local.pool, _local.abort, _local.env = pool, abort, dict(env or {})
    try:
        yield
    finally:
        _local.pool, _local.abort, _local.env = old
