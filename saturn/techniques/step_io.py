"""What the shared training loop does around each step without stalling the device.

A step's kernels are queued asynchronously; anything that makes the host wait for the device
(`.item()`, `float(t)`, `.tolist()`, `.cpu()`, a blocking collective, `torch.cuda.synchronize`)
drains the queue, so Python can no longer prepare the next step while the GPU computes. The loop
(`training.train`) therefore touches device values only at *read-back boundaries*, every few
steps, and everything here is built for that:

* `BatchPrefetcher`: batches are built and pinned in a helper thread, and copied to the device on
  a side stream one step ahead (CUDA); on CPU it only builds the next batch ahead.
* `ReadBack`: per-step losses stay device tensors until a boundary, where one small all-reduce
  carries all of them plus the stop vote and rank 0's choice of the next interval, and one copy
  brings them to the host (the only synchronization of the step path).
* `StepClock`: per-step times from CUDA events (read at the boundary) or host clocks on CPU.
* `MetricsWriter`: buffered metrics lines, written with one O_APPEND write and fsync'd at every
  boundary, so a kill loses at most the steps since the last boundary; those steps are after the
  newest checkpoint (checkpoints are taken at boundaries, after the flush), so a resume redoes and
  re-logs them.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

Batch = tuple[torch.Tensor, torch.Tensor]


def distributed() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


# ------------------------------------------------------------------------------------ batches
class BatchPrefetcher:
    """`get(step)` returns the batch of `step` on the device and starts preparing `step + 1`
    (when below `end`): the CPU batch is built and pinned in a thread, and its host-to-device copy
    is queued on a side stream so it overlaps the current step's compute."""

    def __init__(self, build: Callable[[int], Batch], device: torch.device, end: int):
        self.build, self.device, self.end = build, device, end
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="saturn-batches")
        self._cpu: dict[int, Future] = {}
        self._dev: dict[int, tuple[Batch, Any]] = {}

    def _host(self, step: int) -> Batch:
        x, y = self.build(step)
        if self.cuda:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def _submit(self, step: int) -> None:
        if step < self.end and step not in self._cpu and step not in self._dev:
            self._cpu[step] = self.pool.submit(self._host, step)

    def _to_device(self, step: int) -> None:
        if step >= self.end or step in self._dev:
            return
        self._submit(step)
        x, y = self._cpu.pop(step).result()
        if not self.cuda:
            self._dev[step] = ((x, y), None)
            return
        with torch.cuda.stream(self.stream):
            xd, yd = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        self._dev[step] = ((xd, yd), done)

    def get(self, step: int) -> Batch:
        self._to_device(step)
        (x, y), done = self._dev.pop(step)
        if done is not None:  # the compute stream waits for the copy (a device-side wait)
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            x.record_stream(current)
            y.record_stream(current)
        self._to_device(step + 1)  # queued now, runs on the side stream during this step
        self._submit(step + 2)
        return x, y

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# -------------------------------------------------------------------------------------- clock
class StepClock:
    """Per-step durations without synchronizing: CUDA events recorded after each step and read
    at the boundary (the device-side period of each step, idle gaps included), or the host clock
    on CPU, where a step has finished when its call returns."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list[Any] = []
        self._last: Any = None
        self.mark_start()

    def _now(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def mark_start(self) -> None:
        self._last = self._now()

    def mark_step(self) -> None:
        self._marks.append(self._now())

    def read(self) -> list[float]:
        """Durations of the steps marked since the last read (call only at a boundary, after the
        device work of those steps is known to be done)."""
        out, prev = [], self._last
        for m in self._marks:
            out.append(prev.elapsed_time(m) / 1000.0 if self.cuda else m - prev)
            prev = m
        if self._marks:
            self._last = self._marks[-1]
        self._marks = []
        return out


# ---------------------------------------------------------------------------------- read-back
class ReadBack:
    """Losses of the steps since the last boundary, kept as device tensors (no per-step work)."""

    def __init__(self, device: torch.device, loss_weight: float):
        self.device, self.weight = device, loss_weight
        self.pending: list[tuple[int, Any]] = []  # (step, loss tensor | float | None)

    def add(self, step: int, loss: Any) -> None:
        self.pending.append((step, loss))

    def _values(self) -> torch.Tensor:
        parts = []
        for _, loss in self.pending:
            if torch.is_tensor(loss):
                parts.append(loss.detach().reshape(-1)[:1].to(self.device, torch.float64))
            else:
                value = 0.0 if loss is None else float(loss)
                parts.append(torch.full((1,), value, dtype=torch.float64, device=self.device))
        if not parts:
            return torch.zeros(0, dtype=torch.float64, device=self.device)
        return torch.cat(parts) * self.weight

    def sync(self, stop: bool, vote: int) -> tuple[list[tuple[int, float]], bool, int]:
        """The boundary: global losses of the pending steps, whether any rank asked to stop, and
        rank 0's `vote` (the next interval, so every rank agrees on the next boundary). One
        all-reduce and one device-to-host copy; the only synchronization of the step path."""
        ctrl = torch.tensor([1.0 if stop else 0.0, float(vote)], dtype=torch.float64)
        buf = torch.cat([self._values(), ctrl.to(self.device)])
        if distributed():
            dist.all_reduce(buf)
        host = buf.tolist()
        losses = [(s, v) for (s, _), v in zip(self.pending, host[:-2])]
        self.pending = []
        return losses, host[-2] > 0, int(round(host[-1]))


# ------------------------------------------------------------------------------------ metrics
class MetricsWriter:
    """Per-step metrics lines ({"step": next step, "loss", "step_time_s", "data_wait_s", "wall"}), buffered and
    written by `flush()` with one O_APPEND write (lines stay whole next to other appenders)
    followed by fsync."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.lines: list[str] = []

    def add(self, step: int, loss: float, step_time_s: float, wall: float, data_wait_s: float = 0.0) -> None:
        if self.path:
            self.lines.append(json.dumps({"step": step, "loss": loss, "step_time_s": round(step_time_s, 6),
                                          "data_wait_s": round(data_wait_s, 6), "wall": wall}) + "\n")

    def flush(self) -> None:
        if not self.path or not self.lines:
            return
        data = "".join(self.lines).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.lines = []


def next_interval(step_times: list[float], every: int, target_s: float) -> int:
    """Steps until the next boundary: `every`, fewer when steps are slow, so that a boundary
    (metrics flush, stop check) comes at least every ~`target_s` seconds."""
    if not step_times or target_s <= 0:
        return max(1, every)
    per = sorted(step_times)[len(step_times) // 2]
    return max(1, min(every, int(target_s / per) if per > 0 else every))
