"""File-backed datasets for training jobs: a torch Dataset (sample by index) plus a staged pipeline
that serves whole batches by step number, prefetching the next steps while the model computes.

`saturn.zoo.data.batch_for_step` calls `batch_for_step` here, so the data position stays the step
number (checkpoints stay technique-neutral): the pipeline streams steps s, s+1, ... for one
(batch size, rank, world) and restarts from the requested step whenever a caller jumps (a resume).
`__getitem__` runs the same stage functions inline, so both paths yield identical samples.

Workload YAML (kwargs are all optional except where noted):

    data:
      name: image-files            # or token-files
      path: /data/my-images        # image-files: a directory with index.json; token-files: file/dir/glob
      kwargs: {generate: 2000,     # image-files: write a synthetic set of N JPEGs there first
               workers: {read: 1, decode: 4, augment: 4, collate: 1}, prefetch: 4, pin: true,
               tune: true, tuner: hill, cores: 8, heavy: 0,   # tuner: hill (default) | rl
               processes: true}   # CPU stages in worker processes (procpipe.py); false: threads

Left out, they default (`saturn.data.with_defaults`) to a pipeline that runs ahead from the first
batch: tune on, cores = this process's share of the host (`default_cores`), split over the stages
from the start, prefetch 4. (A PipelineDataset made directly keeps the constructor's plain
defaults: tests and benchmarks set what they compare.)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from saturn.data.ledger import CoreLedger, ledger_path
from saturn.data.pipeline import Pipeline, Stage
from saturn.data.policies import TUNERS, make_tuner
from saturn.data.procpipe import POOL_STAGE, ProcPipeline
from saturn.data.tuner import LOG_FILE, PipelineTuner

PIPELINE_KWARGS = ("workers", "prefetch", "pin", "tune", "tuner", "cores", "window_s", "processes")


def collate_pairs(pin: bool) -> Any:
    """Stack (x, y) samples into two tensors; pin them (page-locked) for async host-to-GPU copies."""
    do_pin = bool(pin) and torch.cuda.is_available()

    def collate(samples: list, _b: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.stack([s[0] for s in samples]))
        y = torch.as_tensor(np.asarray([s[1] for s in samples]), dtype=torch.long)
        if do_pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    return collate


class PipelineDataset(torch.utils.data.Dataset):
    """source: an object with `stages(workers)`, `sample(i)` and `__len__` (ImageFiles, TokenFiles).

    processes: run the stages in a pool of worker processes (procpipe.py) of `workers["workers"]`,
    else `cores`, processes; otherwise per-stage thread pools (pipeline.py).
    ledger: the node's core ledger (saturn.data.ledger; a path) through which a tuned job's budget
    follows its share of the node. Left None, a job directory attached by the executor turns on
    the node's default ledger (`ledger_path()`), with this job's `cores` as what it wants."""

    def __init__(self, source: Any, *, workers: dict[str, int] | None = None, prefetch: int = 2,
                 pin: bool = True, tune: bool = False, cores: int | None = None, window_s: float = 1.0,
                 processes: bool = False, tuner: str = "hill", ledger: str | os.PathLike | None = None,
                 job: str | None = None):
        self.source = source
        self.workers = dict(workers or {})
        self.prefetch, self.pin, self.tune = int(prefetch), bool(pin), bool(tune)
        self.cores = int(cores) if cores else None
        self.window_s = float(window_s)
        if tuner not in TUNERS:
            raise ValueError(f"data.kwargs.tuner: unknown tuner {tuner!r}; allowed: {list(TUNERS)} "
                             "(hill is the default)")
        self.tuner = tuner
        if not isinstance(processes, bool):
            raise ValueError(f"data.kwargs.processes: expected true or false, got {processes!r} (true: the "
                             "stages run in worker processes; the pool's size is the job's `cores`)")
        self.processes = processes
        self.ledger_path = str(ledger) if ledger else None
        self.job = job or f"pid{os.getpid()}"  # its name in the ledger
        self._named = job is not None
        self._ledger: CoreLedger | None = None
        self.job_dir: str | None = None
        self._pipe: Pipeline | ProcPipeline | None = None
        self._key: tuple | None = None
        self._tuner: PipelineTuner | None = None
        self.data_wait_s = 0.0  # consumer wait of the most recent batch_for_step

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample at global position i (i >= len: a later epoch, same file, new augmentation)."""
        x, y = self.source.sample(int(i))
        return torch.from_numpy(np.asarray(x)), torch.as_tensor(y)

    def attach_job_dir(self, job_dir: str) -> None:
        """Where the tuner logs its decisions (the executor's job directory); the job then shares
        the node's cores through the node's ledger."""
        self.job_dir = job_dir
        if not self._named:
            self.job = f"{job_dir}#{os.getpid()}"  # one entry per training process (rank) of the job
        self.ledger_path = self.ledger_path or str(ledger_path())

    @property
    def worker_cpu_s(self) -> float:
        """CPU seconds this dataset's worker processes spent (the ingest rate counts them)."""
        return self._pipe.worker_cpu_s if isinstance(self._pipe, ProcPipeline) else 0.0

    def pipeline(self, first_batch: int, indices: Any, batch_size: int,
                 size: int | None = None) -> Pipeline | ProcPipeline:
        """size: the process pool's starting size (this job's share of the node, when it has one)."""
        stages = self.source.stages(self.workers)
        if self.processes:
            n = size or self.workers.get(POOL_STAGE) or self.cores or sum(st.workers for st in stages)
            return ProcPipeline([st.fn for st in stages], [st.name for st in stages], indices, workers=n,
                                prefetch=self.prefetch, first_batch=first_batch, pin=self.pin)
        collate = Stage("collate", collate_pairs(self.pin), self.workers.get("collate", 1))
        return Pipeline(stages, collate, indices, prefetch=self.prefetch, first_batch=first_batch)

    def _share(self) -> int | None:
        """This job's share of the node's cores, joining the node's ledger on first use (tuned
        pipelines with a ledger only): what it wants is its `cores` (the planner's share)."""
        if not (self.tune and self.ledger_path):
            return None
        if self._ledger is None:
            want = self.cores or max(2, sum(self.workers.values()))
            self._ledger = CoreLedger(self.ledger_path, _usable_cores())
            return self._ledger.register(self.job, want)
        return self._ledger.share(self.job, 1)

    def _start_tuner(self, per: int) -> None:
        assert self._pipe is not None
        budget: Any = self.cores or max(len(self._pipe.stage_names), sum(self._pipe.workers.values()))
        report = None
        if self._ledger is not None:
            led, job = self._ledger, self.job
            budget, report = (lambda: led.share(job, 1)), (lambda w: led.report(job, w))
        log = os.path.join(self.job_dir, LOG_FILE) if self.job_dir else None
        self._tuner = make_tuner(self.tuner, self._pipe, budget=budget, batch_size=per, window_s=self.window_s,
                                 log_path=log, report=report).start()

    def batch_for_step(self, step: int, batch_size: int, rank: int = 0,
                       world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} data-parallel ranks")
        key = (batch_size, rank, world)
        if self._pipe is None or self._key != key or self._pipe.next_batch != step:
            self.close()
            per = batch_size // world
            def indices(b: int) -> list[int]:
                # global positions, not wrapped: sources read position % len, and augmentation seeded
                # by the position differs from one epoch to the next
                return [b * batch_size + rank * per + k for k in range(per)]

            self._pipe, self._key = self.pipeline(step, indices, batch_size, size=self._share()), key
            if self.tune:
                self._start_tuner(per)
        batch = self._pipe.get()
        self.data_wait_s = self._pipe.last_wait_s
        return batch

    def close(self) -> None:
        if self._tuner is not None:
            self._tuner.stop()
            self._tuner = None
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    def shutdown(self) -> None:
        """close() plus this job's entry in the node's ledger (its cores go to the others)."""
        self.close()
        if self._ledger is not None:
            self._ledger.unregister(self.job)
            self._ledger = None

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
