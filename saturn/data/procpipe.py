"""A pipeline whose CPU-bound work runs in a resizable pool of worker processes, batches handed back
through shared memory: throughput grows with the cores the pool is given, as a DataLoader's does
with `num_workers`, and the pool grows and shrinks while batches flow.

    feeder: batch numbers -> pending -> [worker process k: every per-sample stage of the batch's
    samples, then collate into shared-memory tensors] -> reorder by batch -> pin (main) -> get()

What PyTorch does here: `torch.multiprocessing` pickles tensors as shared-memory handles (the
workers allocate the batch in shared memory, `Tensor.share_memory_()`, so nothing is copied
through a pipe). Workers are forked, as DataLoader's are on Linux: a grown worker costs a fork of
a process that already imported torch (milliseconds), and unlike spawn/forkserver it never
re-imports the user's main script (which would demand an `if __name__ == "__main__"` guard); the
child runs only the stage functions, single-threaded, and never touches CUDA, which is what makes
forking a threaded, CUDA-using parent safe for DataLoader too. What is written by hand, and why: DataLoader's
worker pool has a fixed size for the loader's lifetime (changing `num_workers` means a new
iterator, i.e. restarting every worker and dropping what was in flight), it fails the whole
iterator when one worker dies, and it exposes no per-stage timings. This pool keeps one pipe pair
per worker (a private channel: a worker killed mid-write cannot leave a shared queue's lock held)
and tracks which batches each worker holds, so

- growing starts processes that take work once they report ready;
- shrinking sends a retiring worker a stop mark behind what it already holds: it finishes those
  batches, then exits -- no batch lost, none computed twice;
- a worker that dies (any signal, the kernel's OOM kill included) has its batches re-issued and is
  replaced; more than `max_deaths` deaths within `death_window_s` (a crash that repeats, e.g. a
  sample that kills its decoder) fail the pipeline with the exit cause -- never a hang.

Why whole batches per task, all stages in one worker (as DataLoader does) rather than one process
pool per stage: handing every sample between stage processes costs a shared-memory segment per
hop, and a per-stage split of a few cores loses to integer rounding (2 cores over a 35%/65%
decode/augment split run at 70%). A worker runs whichever stage its batch needs next, so the
job's processes move between its stages item by item; the tuner decides how many processes the
job holds (its share of the node, `saturn.data.ledger`). Each stage's busy time is still measured
inside the workers and reported (`PipelineStats.cores`: the cores each stage held).

Determinism: a sample is a pure function of its index (as in pipeline.py) and batches are
delivered in batch order, so every pool size, every resize and every resume yields the same
batches in the same order.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait as wait_any
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as tmp

from saturn.data.pipeline import Delivery, PipelineStats, StageStats

POOL_STAGE = "workers"  # the one tunable stage of a process pipeline: its worker processes
_POLL_S = 0.02
_PER_WORKER = 2  # batches queued per worker: one in work, one ready to start without a round trip


def stack_shared(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate (x, y) samples into two tensors allocated in shared memory (no copy on hand-over)."""
    xs = [np.asarray(s[0]) for s in samples]
    x = torch.empty((len(xs), *xs[0].shape), dtype=torch.from_numpy(xs[0][:0]).dtype).share_memory_()
    np.stack(xs, out=x.numpy())
    y = torch.as_tensor(np.asarray([s[1] for s in samples]), dtype=torch.long)  # as collate_pairs
    return x, y.share_memory_()


def _worker(fns: list, conn_in: Any, conn_out: Any) -> None:
    """Worker process main: batches in, shared-memory batches out, until a stop mark or EOF.

    After a stop mark it says goodbye and stays until the pipeline says "exit": the batches it
    sent are shared by file descriptor (torch's default strategy), fetched from this process when
    the pipeline unpickles them, so it must not exit before the pipeline has read them all. It
    cannot count on EOF (forked siblings hold copies of its pipe), so it also watches its parent,
    as DataLoader's workers do, and exits when the parent is gone."""
    torch.set_num_threads(1)  # the pool is the parallelism; intra-op threads would oversubscribe
    # the training process's handlers were inherited by the fork: a stop request (SIGTERM) ends a
    # worker at once, and Ctrl-C is the training process's to handle (it then stops the pool)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    conn_out.send(("ready",))
    while True:
        try:
            if not conn_in.poll(1.0):
                if os.getppid() != parent:
                    return
                continue
            msg = conn_in.recv()
        except (EOFError, OSError):  # the pipeline's process is gone
            return
        if msg == "exit":
            return
        if msg is None:
            conn_out.send(("bye",))
            continue
        b, indices = msg
        c0 = time.process_time()
        busy = [0.0] * (len(fns) + 1)
        try:
            samples = []
            for i in indices:
                item = None
                for k, fn in enumerate(fns):
                    t = time.perf_counter()
                    item = fn(item, i)
                    busy[k] += time.perf_counter() - t
                samples.append(item)
            t = time.perf_counter()
            batch = stack_shared(samples)
            busy[-1] += time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - reported to the pipeline, which fails with it
            conn_out.send(("err", b, f"{type(e).__name__}: {e}", traceback.format_exc()))
            continue
        conn_out.send(("ok", b, batch, busy, time.process_time() - c0))


def exit_cause(exitcode: int | None) -> str:
    """A worker's end in words, from its exit status (a negative code is the signal that ended it)."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}" + (" (the kernel's OOM killer sends SIGKILL)" if exitcode == -9 else "")
    return f"exited with status {exitcode}"


class _Worker:
    def __init__(self, ctx: Any, fns: list):
        r_in, self.tx = ctx.Pipe(duplex=False)
        self.rx, w_out = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_worker, args=(fns, r_in, w_out), daemon=True, name="saturn-data-worker")
        self.proc.start()
        r_in.close()
        w_out.close()
        self.ready = self.retiring = False
        self.held: list[int] = []  # batches sent to it, not yet returned
        self.broken: str | None = None  # why its channel could not be read (it is then killed)

    def send(self, msg: Any) -> bool:
        try:
            self.tx.send(msg)
            return True
        except (BrokenPipeError, OSError):
            return False

    def close(self) -> None:
        for c in (self.tx, self.rx):
            c.close()

    def release(self) -> None:
        """Its goodbye was read, so every batch it sent was: let it exit."""
        self.send("exit")


class ProcPipeline(Delivery):
    """Batches `first_batch, first_batch + 1, ...` of `batch_indices(b)` through the per-sample
    `fns` (the source's stage functions, in order; `stage_names` names them) in `workers` processes.
    The interface is Pipeline's (get, workers/set_workers, prefetch/set_prefetch, take_stats, close)."""

    batch_stages: frozenset[str] = frozenset()  # the pool's items are samples

    def __init__(self, fns: Sequence[Callable[[Any, int], Any]], stage_names: Sequence[str],
                 batch_indices: Callable[[int], list[int]], *, workers: int, prefetch: int = 2,
                 first_batch: int = 0, num_batches: int | None = None, pin: bool = False, max_deaths: int = 3,
                 death_window_s: float = 600.0):
        self.fns, self.names = list(fns), [*stage_names, "collate"]
        self.batch_indices = batch_indices
        self._init_delivery(first_batch, num_batches, prefetch)
        self.pin = bool(pin) and torch.cuda.is_available()
        self.max_deaths, self.death_window_s = int(max_deaths), float(death_window_s)
        self._death_times: collections.deque[float] = collections.deque()
        self.stage_names = [POOL_STAGE]
        self._target = max(1, int(workers))
        self._ctx = tmp.get_context("fork")
        self._pool: list[_Worker] = []
        self._pending: collections.deque[int] = collections.deque()
        self._fed = first_batch
        self.deaths: list[str] = []  # causes, in order
        self.started = self.retired = 0  # worker processes started (replacements included) / retired
        self.worker_cpu_s = 0.0  # CPU seconds the workers spent, all time (ingest accounting)
        self._items, self._busy = 0, [0.0] * len(self.names)
        self._engine = threading.Thread(target=self._run, daemon=True, name="saturn-data-procs")
        self._engine.start()

    # ------------------------------------------------------------------ configuration (tuner)
    @property
    def workers(self) -> dict[str, int]:
        return {POOL_STAGE: self._target}

    def set_workers(self, workers: dict[str, int]) -> None:
        if POOL_STAGE in workers:
            with self._cv:
                self._target = max(1, int(workers[POOL_STAGE]))

    def live_workers(self) -> list[int]:
        """Pids of the worker processes not retiring (tests kill one of them)."""
        return [w.proc.pid for w in list(self._pool) if not w.retiring and w.proc.pid is not None]

    # ------------------------------------------------------------------------------- engine
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._resize()
                self._feed()
                self._dispatch()
                self._poll()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
            self._fail(e)
        finally:
            for w in self._pool:
                w.release()  # a worker exits after the batch in hand (what is in flight is dropped)
            deadline = time.monotonic() + 5
            for w in self._pool:
                w.proc.join(max(0.0, deadline - time.monotonic()))
                if w.proc.is_alive():
                    w.proc.kill()
                    w.proc.join(1)
                w.close()

    def _resize(self) -> None:
        active = [w for w in self._pool if not w.retiring]
        with self._cv:
            target = self._target
        for _ in range(target - len(active)):
            self._pool.append(_Worker(self._ctx, self.fns))
            self.started += 1
        if len(active) > target:
            # retire the ones that hold least (not yet started first): a stop mark queued behind
            # what each already holds, so those batches still come back
            for w in sorted(active, key=lambda w: (w.ready, len(w.held)))[: len(active) - target]:
                w.retiring = True
                w.send(None)
                self.retired += 1

    def _feed(self) -> None:
        with self._cv:
            limit = self._prefetch + _PER_WORKER * self._target  # batches in flight or waiting
            while self._fed - self.next_batch < limit and (self.end is None or self._fed < self.end):
                self._pending.append(self._fed)
                self._fed += 1

    def _dispatch(self) -> None:
        while self._pending:
            free = [w for w in self._pool if w.ready and not w.retiring and len(w.held) < _PER_WORKER]
            if not free:
                return
            w = min(free, key=lambda w: len(w.held))
            b = self._pending.popleft()
            w.held.append(b)
            if not w.send((b, list(self.batch_indices(b)))):
                return  # it died: _poll sees its sentinel and re-issues what it held

    def _poll(self) -> None:
        conns = {w.rx: w for w in self._pool}
        sentinels = {w.proc.sentinel: w for w in self._pool}
        for obj in wait_any([*conns, *sentinels], timeout=_POLL_S):
            w = conns.get(obj)
            if w is not None:
                self._receive(w)
        for w in list(self._pool):
            if w.proc.exitcode is not None:
                while w.rx.poll():  # results it sent before it ended are still good
                    if not self._receive(w):
                        break
                self._ended(w)

    def _receive(self, w: _Worker) -> bool:
        try:
            msg = w.rx.recv()
        except EOFError:
            return False
        except Exception as e:  # noqa: BLE001 - a torn message, or a batch whose sender died
            w.broken = f"a batch it sent could not be read ({type(e).__name__}: {e})"
            if w.proc.exitcode is None:  # alive, its channel out of step: stopped, what it held re-issued
                w.broken += "; the pipeline killed it"
                w.proc.kill()
            return False
        if msg[0] == "ready":
            w.ready = True
        elif msg[0] == "bye":
            w.release()
        elif msg[0] == "err":
            _, b, text, tb = msg
            raise RuntimeError(f"data pipeline worker failed on batch {b}: {text}\n{tb}")
        else:
            _, b, batch, busy, cpu = msg
            w.held.remove(b)  # each batch is held by one worker at a time: never delivered twice
            if self.pin:
                batch = tuple(t.pin_memory() for t in batch)
            with self._cv:
                self._ready[b] = batch
                self._items += len(batch[0])
                self._busy = [a + c for a, c in zip(self._busy, busy)]
                self.worker_cpu_s += cpu
                self._cv.notify_all()
        return True

    def _ended(self, w: _Worker) -> None:
        self._pool.remove(w)
        w.close()
        if w.retiring and not w.held:
            return
        cause = exit_cause(w.proc.exitcode) + (f"; {w.broken}" if w.broken else "")
        self.deaths.append(f"pid {w.proc.pid} {cause}")
        self._pending.extendleft(sorted(w.held, reverse=True))  # re-issued first, in order
        now = time.monotonic()
        self._death_times.append(now)
        while self._death_times[0] < now - self.death_window_s:
            self._death_times.popleft()
        if len(self._death_times) > self.max_deaths:
            raise RuntimeError(f"data pipeline: {len(self._death_times)} worker processes died within "
                               f"{self.death_window_s:g} s (last: pid {w.proc.pid} {cause}); giving up "
                               f"after max_deaths={self.max_deaths}")
        # a live replacement comes from _resize (the active count is now below the target)

    def _fail(self, e: BaseException) -> None:
        with self._cv:
            if self._error is None:
                self._error = e
            self._stop.set()
            self._cv.notify_all()

    # -------------------------------------------------------------------------------- consumer
    def take_stats(self) -> PipelineStats:
        """Counters since the previous call (then reset). The pool is one tunable stage (its items
        are samples, its busy time the workers' summed); `cores` splits that busy time by stage."""
        with self._cv:
            s = self._take_consumer_stats()
            wall = s.wall_s
            s.stages = {POOL_STAGE: StageStats(self._items, sum(self._busy), self._target)}
            s.cores = {n: round(b / wall, 3) if wall > 0 else 0.0 for n, b in zip(self.names, self._busy)}
            self._items, self._busy = 0, [0.0] * len(self.names)
        return s

    def close(self) -> None:
        """Stop, and wait (up to 10 s) for the engine to stop the workers."""
        super().close()
        if threading.current_thread() is not self._engine:
            self._engine.join(timeout=10)
