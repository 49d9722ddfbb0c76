"""Run GIL-holding stages in worker processes, with per-stage parallelism kept in the pipeline.

A stage marked for offload keeps its pool of threads in the pipeline (so the tuner still sets how
many of its items are in flight), but each thread hands its item to a shared process pool and
waits (without the GIL) for the result. The pool has as many processes as the job's core budget,
so it never queues: a stage with w workers uses w processes' worth of CPU. The source object is
sent to each process once (pool initializer); per item only the item crosses the pipe.

Processes are started with `spawn` (the pipeline has threads; forking a threaded process is
unsafe) and warmed up at creation, so start-up is not billed to the first batches.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

from saturn.data.pipeline import Stage

_SOURCE: Any = None


def _init(source: Any) -> None:
    global _SOURCE
    _SOURCE = source


def _call(name: str, item: Any, index: int) -> Any:
    return getattr(_SOURCE, name)(item, index)


def _ping(delay: float) -> int:
    time.sleep(delay)
    return 0


def make_executor(source: Any, processes: int) -> ProcessPoolExecutor:
    ex = ProcessPoolExecutor(max(1, int(processes)), mp_context=mp.get_context("spawn"),
                             initializer=_init, initargs=(source,))
    for f in [ex.submit(_ping, 0.2) for _ in range(max(1, int(processes)))]:  # start them all now
        f.result()
    return ex


def offload(stages: Iterable[Stage], names: Iterable[str]) -> list[Stage]:
    """The stages with those names rewritten to run `source.<name>` in the process pool."""
    names = set(names)
    out = []
    for st in stages:
        if st.name in names:
            st = Stage(st.name, partial(_call, st.name), st.workers, offload=True)
        out.append(st)
    return out


def choose_backend(source: Any, cores: int, batch_size: int, seconds: float = 2.0) -> dict[str, Any]:
    """Measure the source's pipeline on `cores` workers with threads only and with the offloaded
    stages in processes, and return {"processes": 0 or cores, "threads_samples_s", "processes_samples_s"}.

    Which one wins depends on how much of the stage code holds the GIL versus what the process
    hop costs (pickling samples through the pipeline), so it is measured, not assumed."""
    from saturn.data.dataset import PipelineDataset
    from saturn.data.tuner import initial_workers

    workers = initial_workers(source, cores)
    out: dict[str, Any] = {}
    for label, procs in (("threads", 0), ("processes", cores)):
        ds = PipelineDataset(source, workers=workers, processes=procs, prefetch=4,
                             pin=False)  # CPU stages are compared; pinning would start CUDA here
        try:
            ds.batch_for_step(0, batch_size)
            t0, step = time.perf_counter(), 1
            while time.perf_counter() - t0 < seconds:
                ds.batch_for_step(step, batch_size)
                step += 1
            out[f"{label}_samples_s"] = (step - 1) * batch_size / (time.perf_counter() - t0)
        finally:
            ds.shutdown()
    out["processes"] = cores if out["processes_samples_s"] > out["threads_samples_s"] else 0
    return out
