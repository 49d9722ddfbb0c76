"""A warm worker: `python -m saturn.runtime.warm_worker SLOT DEVICE_TYPE REPLY_FD`.

One long-lived process per device slot (see `saturn.runtime.warm`). It pays the interpreter
start, the torch/saturn imports and (on a GPU) the CUDA context once, then runs job after job:
each command line on stdin is one job rank, run exactly as `saturn.runtime.worker` would run it
in a fresh process (same `WorkerContext`, same target, same result file), with its own process
group (fresh rendezvous port, destroyed after the job) and its output redirected to the job's log.

After each job it tells the pool, on REPLY_FD, whether it is still clean: the job succeeded, the
process group was destroyed, and the memory the job used came back (GPU: allocated and reserved
bytes after `empty_cache`, and the device's used memory; CPU: resident set size). A worker that is
not clean is killed and replaced by the pool; a worker that dies (crash, SIGKILL, OOM killer) is
simply replaced. SIGTERM during a job = "finish the step, checkpoint, stop" (as in the cold path).

Checkpoints drain behind (`drain.set_drain_behind`): a completed job's final save returns
once staged, and this process writes, fsyncs and publishes it in a background thread while it
runs the next job. It tells the pool on REPLY_FD ({"event": "draining"|"drained", "path", ...}),
leaves the staging buffers out of its memory check, and on "exit" finishes every drain first.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Optional

from saturn.runtime import drain
from saturn.runtime import worker as cold
from saturn.runtime.causes import exception_result
from saturn.runtime.process import die_with_parent
from saturn.runtime.warm_handle import PRELOAD_ENV

# What every worker imports before it says "ready" (the cost warm execution avoids per job); the
# pool hands it more in SATURN_WARM_PRELOAD ("module" or "module:function" to call, comma-separated:
# the callers know what their jobs import, e.g. the technique registry).
PRELOAD = ("torch", "torch.distributed", "torch.distributed.checkpoint")


def _preload(device_type: str) -> None:
    import importlib

    for mod in PRELOAD:
        importlib.import_module(mod)
    from saturn.env import warm_preload

    for entry in warm_preload(PRELOAD_ENV):
        module, _, fn = entry.partition(":")
        try:
            loaded = importlib.import_module(module)
            if fn:
                getattr(loaded, fn)()  # e.g. technique_names(): imports every built-in technique
        except Exception:  # noqa: BLE001 - an optional module's import error shows in its own job
            pass
    import torch

    if device_type == "cuda":
        torch.cuda.set_device(0)  # the pool gives each worker exactly one visible GPU
        torch.zeros(1, device="cuda")  # create the CUDA context now, not in the first job


def memory_now(device_type: str) -> dict[str, float]:
    """What must come back to baseline after a job (bytes)."""
    import resource

    import torch

    rss = float(_rss_bytes() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    out = {"rss": max(0.0, rss - drain.staged_bytes())}  # drains' staging buffers are budgeted, not leaks
    if device_type == "cuda":
        out["allocated"] = float(torch.cuda.memory_allocated())
        out["reserved"] = float(torch.cuda.memory_reserved())
        free, total = torch.cuda.mem_get_info()
        out["device_used"] = float(total - free)
    return out


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _cleanup(device_type: str) -> None:
    """Drop everything a job left behind that the next job must not see."""
    cold.shutdown_group()  # destroy the process group (NCCL/gloo resources)
    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()
    gc.collect()
    if device_type == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        # pinned host blocks (checkpoint staging, pinned batches) stay cached by torch's host
        # allocator: on an H200 a worker's RSS stayed +8 GiB after a job and it was replaced
        # after every job, paying a cold start each time
        for name in ("_host_emptyCache", "_accelerator_emptyHostCache"):
            fn = getattr(torch._C, name, None)
            if fn is not None:
                fn()
                break
    _malloc_trim()


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc), so RSS tells a leak from allocator caching."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _Job:
    """Which job rank is running (SIGTERM goes to its context; between jobs it is ignored)."""

    ctx: Optional[cold.WorkerContext] = None

    @classmethod
    def on_term(cls, *_: Any) -> None:
        if cls.ctx is not None:
            cls.ctx.request_stop()


def run_one(cmd: dict[str, Any], device_type: str) -> dict[str, Any]:
    """Run one job rank (cmd: rundir, rank, world, port, env, launch_time); the reply to the pool."""
    rundir, rank = cmd["rundir"], int(cmd["rank"])
    env = {"RANK": str(rank), "WORLD_SIZE": str(cmd["world"]), "LOCAL_RANK": "0",
           "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(cmd["port"]),
           "SATURN_DEVICE_TYPE": device_type, **(cmd.get("env") or {})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    log_fd = os.open(os.path.join(rundir, f"log-{rank}.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    out_fd, err_fd = os.dup(1), os.dup(2)
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(log_fd, 1), os.dup2(log_fd, 2)
    from saturn.runtime import drain

    drain.set_drain_behind(bool(cmd.get("drain_behind", True)))
    ctx = cold.WorkerContext(rank=rank, world_size=int(cmd["world"]), local_rank=0,
                             device_type=device_type, launch_time=float(cmd["launch_time"]))
    _Job.ctx = ctx
    ok = False
    try:
        target, payload = cold.read_payload(rundir)
        try:
            cold.init_process_group(ctx, float(payload.get("collective_timeout_s", 600)))
            result = dict(cold.resolve_target(target)(payload, ctx) or {})
            ok = True
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a structured result
            traceback.print_exc()
            result = exception_result(exc)
        cold.write_result(rundir, rank, result)
    finally:
        _Job.ctx = None
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(out_fd, 1), os.dup2(err_fd, 2)
        for fd in (out_fd, err_fd, log_fd):
            os.close(fd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    dirty = not ok
    if ok:
        try:
            _cleanup(device_type)
        except Exception:  # noqa: BLE001 - e.g. a CUDA error surfacing at synchronize: replace us
            traceback.print_exc()
            dirty = True
    try:
        mem = memory_now(device_type)
    except Exception:  # noqa: BLE001
        mem, dirty = {}, True
    return {"event": "done", "ok": ok, "dirty": dirty, "mem": mem}


def main(slot: str, device_type: str, reply_fd: int) -> int:
    die_with_parent()
    signal.signal(signal.SIGTERM, _Job.on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the executor, which stops jobs
    reply = os.fdopen(reply_fd, "w", buffering=1)
    lock = threading.Lock()

    def send(msg: dict[str, Any]) -> None:  # the job thread and the drain thread both report
        with lock:
            reply.write(json.dumps(msg) + "\n")

    t0 = time.time()
    _preload(device_type)
    _cleanup(device_type)

    drain.set_drain_behind(True)
    drain.set_drain_listener(send)
    send({"event": "ready", "pid": os.getpid(), "slot": slot, "import_s": round(time.time() - t0, 3),
          "mem": memory_now(device_type)})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd.get("op") == "exit":
            break
        send(run_one(cmd, device_type))
    drain.wait_pending()  # every result this worker staged is durable before it exits
    return 0


if __name__ == "__main__":
    rc = main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
