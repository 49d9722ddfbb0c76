"""A stand-in for a Pipeline computed from per-stage costs: tuner tests and the tuner benchmark.

It exposes the knobs a tuner turns (`workers`, `set_workers`, `prefetch`, `set_prefetch`,
`stage_names`) and produces the windows a tuner reads (`window()` -> PipelineStats) from a capacity
model: the pipeline runs at its slowest stage's capacity (workers / cost per item, the last stage
per batch), each stage's busy time is items x cost, the consumer waits half of each window. No
threads and no timing noise, so a tuner policy's decisions can be checked window by window and its
convergence counted in windows, separately from a real pipeline's measurement noise.
"""

from __future__ import annotations

from saturn.data.pipeline import PipelineStats, StageStats


class ModelPipe:
    def __init__(self, costs: dict[str, float], workers: dict[str, int], batch_size: int, prefetch: int = 2):
        self.costs = dict(costs)  # stage -> seconds per item (the last stage: per batch)
        self.stage_names = list(costs)
        self.batch_size = int(batch_size)
        self._w = {n: max(1, int(workers.get(n, 1))) for n in self.stage_names}
        self.prefetch = int(prefetch)
        self.batch_stages = frozenset(self.stage_names[-1:])  # the last stage's items are batches
        self.closed = False  # what PipelineTuner's thread loop checks

    @property
    def workers(self) -> dict[str, int]:
        return dict(self._w)

    def set_workers(self, workers: dict[str, int]) -> None:
        self._w.update({k: max(1, int(v)) for k, v in workers.items() if k in self._w})

    def set_prefetch(self, depth: int) -> None:
        self.prefetch = max(1, int(depth))

    def _per(self, name: str) -> int:
        return self.batch_size if name in self.batch_stages else 1

    def capacity(self, workers: dict[str, int] | None = None) -> float:
        """Samples per second the slowest stage sustains (the pipeline's throughput)."""
        w = workers or self._w
        return min(w[n] / c * self._per(n) for n, c in self.costs.items())

    def best(self, budget: int) -> tuple[float, dict[str, int]]:
        """The best split of `budget` workers (at least 1 per stage), by exhaustive search."""
        import itertools

        k = len(self.stage_names)
        best: tuple[float, dict[str, int]] = (0.0, {})
        for c in itertools.product(range(1, budget - k + 2), repeat=k):
            if sum(c) == budget:
                w = dict(zip(self.stage_names, c))
                best = max(best, (self.capacity(w), w), key=lambda b: b[0])
        return best

    def window(self, wall: float = 1.0) -> PipelineStats:
        thr = self.capacity()
        stages = {}
        for n, c in self.costs.items():
            items = int(thr * wall / self._per(n))
            stages[n] = StageStats(items=items, busy_s=items * c, workers=self._w[n])
        return PipelineStats(wall, int(thr * wall / self.batch_size), int(thr * wall), 0.5 * wall, stages)
