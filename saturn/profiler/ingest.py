"""Ingestion cost: samples a job's input pipeline makes per CPU core-second (measured).

The planner needs to know how many cores keep a job's GPUs busy: the GPUs consume
batch_size / step_time_s samples per second, one core makes `samples_per_core_s`, so the job
needs ceil(ratio) cores (`saturn.planner.cores.cores_needed`). The rate is measured, not guessed:
the job's real dataset produces batches for `seconds` and we divide the samples made by the
process CPU time it took (`time.process_time`, all threads, plus the CPU time of the pipeline's
worker processes, `worker_cpu_s`), which is the cost per core whatever parallelism the pipeline
happened to use. It is measured once per dataset (data spec, sequence
length, model shape, batch size) and added to every profile row of the job as two additive columns:

    ingest_samples_per_core_s   measured rate (NaN in old profile stores: planned as 0 cores)
    cpu_cores                   cores this row's option needs at its measured step time

Only file-backed pipeline datasets (`image-files`, `token-files`) are measured; synthetic datasets
cost next to nothing and their rows get no ingest columns (planned as needing no cores).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from saturn.planner.cores import cores_needed

_cache: dict[str, float] = {}


def measure_dataset(dataset: Any, batch_size: int, *, seconds: float = 1.5, max_batches: int = 200,
                    warmup_batches: int = 1) -> dict[str, float]:
    """Drive `dataset` like training does (saturn.zoo.data.batch_for_step) and time it.

    Returns samples, wall_s, cpu_s, samples_per_core_s and samples_per_s (the last at whatever
    parallelism the dataset was configured with)."""
    from saturn.zoo.data import batch_for_step

    for b in range(warmup_batches):  # pipeline start-up, file cache
        batch_for_step(dataset, b, batch_size)
    samples, step = 0, warmup_batches
    def cpu_now() -> float:  # this process and its pipeline's worker processes
        return time.process_time() + float(getattr(dataset, "worker_cpu_s", 0.0))

    w0, c0 = time.perf_counter(), cpu_now()
    while time.perf_counter() - w0 < seconds and step - warmup_batches < max_batches:
        x, _ = batch_for_step(dataset, step, batch_size)
        samples += int(x.shape[0])
        step += 1
    wall, cpu = time.perf_counter() - w0, cpu_now() - c0
    close = getattr(dataset, "close", None)
    if close is not None:
        close()
    rate = samples / cpu if cpu > 0 else math.inf
    return {"samples": samples, "wall_s": wall, "cpu_s": cpu, "samples_per_core_s": rate,
            "samples_per_s": samples / wall if wall > 0 else math.inf}


def _key(job: Any) -> str:
    data = job.data.model_dump(mode="json") if hasattr(job.data, "model_dump") else str(job.data)
    model = job.model.model_dump(mode="json") if hasattr(job.model, "model_dump") else str(job.model)
    return json.dumps([data, model, getattr(job, "seq_len", None), getattr(job, "batch_size", None),
                       getattr(job, "seed", 0)], sort_keys=True, default=str)


def ingest_rate(job: Any, *, seconds: float = 1.5) -> float | None:
    """Samples per core-second of `job`'s dataset (cached per dataset); None if it cannot be built."""
    key = _key(job)
    if key not in _cache:
        try:
            from saturn.zoo import model_config
            from saturn.zoo.data import build_dataset

            spec = job.model
            cfg = model_config(spec.name, dict(spec.overrides)) if getattr(spec, "name", None) else None
            ds = build_dataset(job.data, job.seq_len, cfg, seed=getattr(job, "seed", 0))
            _cache[key] = measure_dataset(ds, int(job.batch_size), seconds=seconds)["samples_per_core_s"]
        except Exception:  # noqa: BLE001 - a dataset that needs the GPU worker: leave it unplanned
            _cache[key] = math.nan
    r = _cache[key]
    return None if math.isnan(r) else r


def ingest_columns(job: Any, step_time_s: float | None, outcome: dict | None = None) -> dict[str, Any]:
    """The additive profile columns for one row of `job` (see module docstring), plus the trial's
    median data-wait per step (`data_wait_s`, the cost model's data-wait phase) when it reported one."""
    from saturn.zoo.data import PIPELINE_DATASETS

    wait = (outcome or {}).get("data_wait_s")
    extra = {"data_wait_s": round(float(wait), 6)} if wait is not None else {}
    if getattr(getattr(job, "data", None), "name", None) not in PIPELINE_DATASETS:
        return extra
    rate = ingest_rate(job)
    if rate is None:
        return {**extra, "ingest_samples_per_core_s": None, "cpu_cores": None}
    cores = cores_needed(int(job.batch_size), step_time_s or 0.0, rate) if math.isfinite(rate) else 1
    return {**extra, "ingest_samples_per_core_s": round(rate, 3) if math.isfinite(rate) else None,
            "cpu_cores": cores or None}
