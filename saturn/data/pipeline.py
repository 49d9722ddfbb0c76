"""A staged input pipeline whose configuration can change while it runs without changing its output.

A pipeline turns batch numbers into batches through a chain of per-sample stages (read -> decode ->
augment, each with its own pool of worker threads) and one per-batch stage (collate, optionally
pinning the result), with at most `prefetch` batches in flight ahead of the consumer:

    feeder --idx--> [stage 0: w0 threads] -> [stage 1: w1 threads] -> ... -> reorder by index
         -> [collate: wc threads] -> reorder by batch -> consumer (`get()`)

Why this shape (InTune's observation): the stages have very different costs, so "N workers each
running the whole chain" (DataLoader) wastes cores on cheap stages and starves expensive ones;
per-stage parallelism lets a tuner put the cores where the bottleneck is.

Determinism (the contract the tests check): a sample's content is a pure function of its index
(stages get the index and seed their randomness from it), samples are re-ordered by index before
collation and batches by number before delivery. So every choice of worker counts, prefetch depth
or pinning -- and every change of them mid-run -- yields the same batches in the same order; tuning
never changes what is trained.

Workers are threads, so resizing a pool is cheap (the tuner does it every second or so). Stages
whose code releases the GIL (file reads, zlib, large numpy/torch kernels) scale on threads alone;
GIL-holding stages (JPEG decode, augmentation in Python) scale over cores in procpipe.py's worker
processes instead, which share `Delivery` (the in-order consumer side) with this pipeline.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

_POLL_S = 0.02  # how often an idle worker checks whether its pool shrank or the pipeline stopped


@dataclass
class Stage:
    """One step of the chain. fn(item, index) -> item; `index` is the sample index (per-sample
    stages) or the batch number (the collate stage), so seeded randomness depends on it only."""

    name: str
    fn: Callable[[Any, int], Any]
    workers: int = 1


@dataclass
class StageStats:
    """Work done since the last `take_stats()`: items, seconds busy inside fn (summed over workers)."""

    items: int = 0
    busy_s: float = 0.0
    workers: int = 1

    @property
    def rate_per_worker(self) -> float:
        """Items per second one worker sustains (busy time only: queueing excluded)."""
        return self.items / self.busy_s if self.busy_s > 0 else 0.0


@dataclass
class PipelineStats:
    """What the tuner and the profiler read: consumer side (batches, wait) and per-stage work."""

    wall_s: float
    batches: int
    samples: int
    wait_s: float  # time the consumer spent blocked in get(): the data-wait phase
    stages: dict[str, StageStats] = field(default_factory=dict)
    cores: dict[str, float] = field(default_factory=dict)  # per stage: busy seconds / wall = cores held

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else 0.0


class Tunable(Protocol):
    """What a tuner reads and sets: Pipeline, procpipe.ProcPipeline, simpipe.ModelPipe."""

    stage_names: list[str]
    batch_stages: frozenset[str]  # stages whose items are batches, not samples

    @property
    def workers(self) -> dict[str, int]: ...

    def set_workers(self, workers: dict[str, int]) -> None: ...

    @property
    def prefetch(self) -> int: ...

    def set_prefetch(self, depth: int) -> None: ...

    @property
    def closed(self) -> bool: ...

    def take_stats(self) -> PipelineStats: ...


class Delivery:
    """The consumer side every pipeline shares (this module's thread stages, procpipe's worker
    processes): finished batches wait in `_ready` until their turn, `get()` hands them out in batch
    order and times how long it blocked (the step's data wait), `take_stats()` reads the window."""

    def _init_delivery(self, first_batch: int, num_batches: int | None, prefetch: int) -> None:
        self._prefetch = max(1, int(prefetch))  # batches in flight ahead of the consumer
        self.next_batch = first_batch  # the next batch get() returns
        self.end = None if num_batches is None else first_batch + num_batches  # None: endless
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._cv = threading.Condition()
        self._ready: dict[int, Any] = {}  # batch -> finished batch, awaiting delivery
        self._wait_s, self._got, self._got_samples = 0.0, 0, 0
        self.last_wait_s = 0.0  # how long the latest get() blocked
        self._t_stats = time.perf_counter()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    @property
    def prefetch(self) -> int:
        return self._prefetch

    def set_prefetch(self, depth: int) -> None:
        with self._cv:
            self._prefetch = max(1, int(depth))
            self._cv.notify_all()

    def get(self) -> Any:
        """The next batch in order; the time spent blocked here is the step's data wait."""
        if self.end is not None and self.next_batch >= self.end:
            raise StopIteration
        t0 = time.perf_counter()
        with self._cv:
            while self.next_batch not in self._ready:
                if self._error is not None:
                    raise self._error
                if self._stop.is_set():
                    raise RuntimeError("the data pipeline was closed")
                self._cv.wait(_POLL_S * 5)
            batch = self._ready.pop(self.next_batch)
            self.next_batch += 1
            self._cv.notify_all()
            self.last_wait_s = time.perf_counter() - t0
            self._wait_s += self.last_wait_s
            self._got += 1
            self._got_samples += _batch_len(batch)
        return batch

    def __iter__(self) -> Delivery:
        return self

    def __next__(self) -> Any:
        return self.get()

    def _take_consumer_stats(self) -> PipelineStats:
        """The consumer's counters since the previous call (then reset); the caller holds `_cv`."""
        now = time.perf_counter()
        s = PipelineStats(now - self._t_stats, self._got, self._got_samples, self._wait_s)
        self._got = self._got_samples = 0
        self._wait_s, self._t_stats = 0.0, now
        return s

    def close(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()

    def __enter__(self) -> Delivery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Pool:
    """A resizable set of worker threads draining `inq` ((key, index, item) entries) through `fn`
    into `out(key, index, result)`; key = a sample slot (per-sample stages) or the batch number."""

    def __init__(self, pipe: Pipeline, stage: Stage, inq: queue.Queue, out: Callable[[int, int, Any], None]):
        self.pipe, self.stage, self.inq, self.out = pipe, stage, inq, out
        self.target = max(1, int(stage.workers))
        self.alive = 0
        self.items, self.busy = 0, 0.0
        self.lock = threading.Lock()

    def resize(self, n: int) -> None:
        with self.lock:
            self.target = max(1, int(n))
            missing = self.target - self.alive
            self.alive += max(0, missing)
        for _ in range(max(0, missing)):
            threading.Thread(target=self._work, daemon=True, name=f"saturn-data-{self.stage.name}").start()

    def _work(self) -> None:
        while True:
            with self.lock:
                if self.alive > self.target or self.pipe._stop.is_set():
                    self.alive -= 1
                    return
            try:
                key, index, item = self.inq.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            t0 = time.perf_counter()
            try:
                result = self.stage.fn(item, index)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
                self.pipe._fail(e, self.stage.name, index)
                return
            dt = time.perf_counter() - t0
            with self.lock:
                self.items += 1
                self.busy += dt
            self.out(key, index, result)

    def take(self) -> StageStats:
        with self.lock:
            s = StageStats(self.items, self.busy, self.target)
            self.items, self.busy = 0, 0.0
        return s


class Pipeline(Delivery):
    """Batches `first_batch, first_batch + 1, ...` of `batch_indices(b)` (the sample indices of batch b)
    through `stages` and `collate`. Use as an iterator or call `get()`; `close()` stops the threads."""

    def __init__(self, stages: Sequence[Stage], collate: Stage, batch_indices: Callable[[int], list[int]],
                 *, prefetch: int = 2, first_batch: int = 0, num_batches: int | None = None):
        if not stages:
            raise ValueError("a pipeline needs at least one per-sample stage")
        self.batch_indices = batch_indices
        self._init_delivery(first_batch, num_batches, prefetch)
        self._fed_batches = first_batch  # batches whose samples the feeder has issued
        self._samples: dict[int, dict[int, Any]] = {}  # batch -> {position: sample}, awaiting collation
        self._need: dict[int, int] = {}  # batch -> number of samples
        self._pos: dict[int, tuple[int, int]] = {}  # sample slot id -> (batch, position)
        self._slot = 0
        queues: list[queue.Queue[Any]] = [queue.Queue() for _ in range(len(stages) + 1)]
        self._in = queues[0]
        self.pools: list[_Pool] = []
        for k, st in enumerate(stages):
            nxt = queues[k + 1]
            last = k == len(stages) - 1
            out = self._sample_done if last else (lambda k, i, x, q=nxt: q.put((k, i, x)))
            self.pools.append(_Pool(self, st, queues[k], out))
        self._collate_q = queues[-1]
        self.pools.append(_Pool(self, collate, self._collate_q, self._batch_done))
        self.stage_names = [p.stage.name for p in self.pools]
        self.batch_stages = frozenset({collate.name})  # whose items are batches, not samples
        for p in self.pools:
            p.resize(p.target)
        self._feeder = threading.Thread(target=self._feed, daemon=True, name="saturn-data-feeder")
        self._feeder.start()

    # ------------------------------------------------------------------ configuration (tuner)
    @property
    def workers(self) -> dict[str, int]:
        return {p.stage.name: p.target for p in self.pools}

    def set_workers(self, workers: dict[str, int]) -> None:
        for p in self.pools:
            if p.stage.name in workers:
                p.resize(workers[p.stage.name])

    # ------------------------------------------------------------------------------- internals
    def _feed(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while (self._fed_batches - self.next_batch >= self._prefetch and not self._stop.is_set()) \
                        or (self.end is not None and self._fed_batches >= self.end):
                    if self._stop.is_set() or (self.end is not None and self._fed_batches >= self.end):
                        return
                    self._cv.wait(_POLL_S * 5)
                if self._stop.is_set():
                    return
                b = self._fed_batches
                self._fed_batches += 1
                idx = list(self.batch_indices(b))
                self._samples[b] = {}
                self._need[b] = len(idx)
                slots = []
                for pos in range(len(idx)):
                    self._pos[self._slot] = (b, pos)
                    slots.append(self._slot)
                    self._slot += 1
            for s, i in zip(slots, idx):
                self._in.put((s, i, None))

    def _sample_done(self, slot: int, index: int, item: Any) -> None:
        """Last per-sample stage -> reorder buffer; a complete batch goes to collation in order."""
        with self._cv:
            b, pos = self._pos.pop(slot)
            got = self._samples[b]
            got[pos] = item
            if len(got) < self._need[b]:
                return
            del self._samples[b]
            del self._need[b]
        self._collate_q.put((b, b, [got[k] for k in range(len(got))]))

    def _batch_done(self, b: int, _index: int, batch: Any) -> None:
        with self._cv:
            self._ready[b] = batch
            self._cv.notify_all()

    def _fail(self, e: BaseException, stage: str, index: int) -> None:
        with self._cv:
            if self._error is None:
                self._error = RuntimeError(f"data pipeline stage {stage!r} failed on item {index}: {e!r}")
                self._error.__cause__ = e
            self._cv.notify_all()

    # -------------------------------------------------------------------------------- consumer
    def take_stats(self) -> PipelineStats:
        """Counters since the previous call (then reset): what one tuning window saw."""
        with self._cv:
            s = self._take_consumer_stats()
        s.stages = {p.stage.name: p.take() for p in self.pools}
        s.cores = {n: round(st.busy_s / s.wall_s, 3) if s.wall_s > 0 else 0.0 for n, st in s.stages.items()}
        return s



def _batch_len(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    try:
        return len(first)
    except TypeError:
        return 1
