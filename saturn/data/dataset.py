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
               tune: true, tuner: hill, cores: 8, heavy: 0}   # tuner: hill (default) | rl

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

from saturn.data.pipeline import Pipeline, Stage
from saturn.data.tuner import LOG_FILE, TUNERS, PipelineTuner, make_tuner

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
    """source: an object with `stages(workers)`, `sample(i)` and `__len__` (ImageFiles, TokenFiles)."""

    def __init__(self, source: Any, *, workers: dict[str, int] | None = None, prefetch: int = 2,
                 pin: bool = True, tune: bool = False, cores: int | None = None, window_s: float = 1.0,
                 processes: int = 0, tuner: str = "hill"):
        self.source = source
        self.workers = dict(workers or {})
        self.prefetch, self.pin, self.tune = int(prefetch), bool(pin), bool(tune)
        self.cores = int(cores) if cores else None
        self.window_s = float(window_s)
        if tuner not in TUNERS:
            raise ValueError(f"data.kwargs.tuner: unknown tuner {tuner!r}; allowed: {list(TUNERS)} "
                             "(hill is the default)")
        self.tuner = tuner
        self.processes = int(processes)  # > 0: the source's `offload_stages` run in that many processes
        self._executor: Any = None
        self.job_dir: str | None = None
        self._pipe: Pipeline | None = None
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
        """Where the tuner logs its decisions (the executor's job directory)."""
        self.job_dir = job_dir

    def pipeline(self, first_batch: int, indices: Any, batch_size: int) -> Pipeline:
        stages = self.source.stages(self.workers)
        if self.processes > 0:
            from saturn.data.procs import make_executor, offload

            if self._executor is None:
                self._executor = make_executor(self.source, self.processes)
            stages = offload(stages, getattr(self.source, "offload_stages", ()))
        collate = Stage("collate", collate_pairs(self.pin), self.workers.get("collate", 1))
        return Pipeline(stages, collate, indices, prefetch=self.prefetch, first_batch=first_batch,
                        executor=self._executor)

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

            self._pipe, self._key = self.pipeline(step, indices, batch_size), key
            if self.tune:
                budget = self.cores or max(len(self._pipe.stage_names), sum(self._pipe.workers.values()))
                log = os.path.join(self.job_dir, LOG_FILE) if self.job_dir else None
                self._tuner = make_tuner(self.tuner, self._pipe, budget=budget, batch_size=per,
                                         window_s=self.window_s, log_path=log).start()
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
        """close() plus the process pool (close() keeps it for a restarted pipeline)."""
        self.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
