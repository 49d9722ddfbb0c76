"""The worker process started by `launch.run_workers`: `python -m saturn.runtime.worker RUNDIR`.

It sets up what every technique needs (process group, device, thread count, a SIGTERM flag), then
calls the target named in RUNDIR/payload.json and writes RUNDIR/result-<rank>.json. An exception
becomes a result with its type and a status from that type (`saturn.runtime.causes`: "oom" for
CUDA's OutOfMemoryError, "host_oom" for MemoryError, else "failed"; exit code 1), so the launcher
can tell an out-of-memory configuration (a profiling outcome) from a bug.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable

from saturn.runtime.causes import exception_result
from saturn.runtime.process import die_with_parent


@dataclass
class WorkerContext:
    """What a target gets besides its payload. `stop_requested()` turns True after SIGTERM; the
    training loop agrees on it across ranks (see training.train) before acting on it."""

    rank: int
    world_size: int
    local_rank: int
    device_type: str  # "cuda" | "cpu"
    launch_time: float  # launcher's clock when this process was spawned (start-up time origin)
    _stop: list = field(default_factory=lambda: [False])

    @property
    def device(self) -> "Any":
        import torch

        return torch.device("cuda", self.local_rank) if self.device_type == "cuda" else torch.device("cpu")

    def stop_requested(self) -> bool:
        return self._stop[0]

    def request_stop(self, *_: Any) -> None:
        self._stop[0] = True


def context_from_env() -> WorkerContext:
    from saturn import env

    launched = env.launch_time()
    return WorkerContext(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                         local_rank=int(os.environ["LOCAL_RANK"]),
                         device_type=env.worker_device_type() or "cpu",
                         launch_time=time.time() if launched is None else launched)


def init_process_group(ctx: WorkerContext, timeout_s: float) -> None:
    import torch
    import torch.distributed as dist

    if ctx.device_type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group("nccl", timeout=timedelta(seconds=timeout_s),
                                device_id=torch.device("cuda", ctx.local_rank))
    else:
        from saturn.env import torch_threads

        torch.set_num_threads(torch_threads())
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))


def resolve_target(path: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def write_result(rundir: str, rank: int, result: dict[str, Any]) -> None:
    path = os.path.join(rundir, f"result-{rank}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


def write_payload(rundir: str, target: str, payload: dict[str, Any]) -> None:
    """What every rank of a launch runs (cold or warm): `target(payload, ctx)`."""
    with open(os.path.join(rundir, "payload.json"), "w") as f:
        json.dump({"target": target, "payload": payload}, f)


def read_payload(rundir: str) -> tuple[str, dict[str, Any]]:
    """(target, payload) of the launch in `rundir` (see `write_payload`)."""
    with open(os.path.join(rundir, "payload.json")) as f:
        spec = json.load(f)
    return spec["target"], spec["payload"]


def main(rundir: str) -> int:
    die_with_parent()
    ctx = context_from_env()
    signal.signal(signal.SIGTERM, ctx.request_stop)
    signal.signal(signal.SIGINT, ctx.request_stop)
    target, payload = read_payload(rundir)
    code = 0
    try:
        init_process_group(ctx, float(payload.get("collective_timeout_s", 600)))
        result = resolve_target(target)(payload, ctx)
        result = dict(result or {})
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a structured result
        traceback.print_exc()
        result, code = exception_result(exc), 1
    write_result(rundir, ctx.rank, result)
    sys.stdout.flush()
    if code == 0:
        shutdown_group()
    return code


def shutdown_group() -> None:
    """Destroy the process group so NCCL/gloo release their resources before exit."""
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - exit anyway
        pass


if __name__ == "__main__":
    rc = main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # skip interpreter teardown: stuck NCCL/gloo threads must not keep us alive
