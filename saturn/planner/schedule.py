"""List scheduling with concrete GPU ids.

Every plan the planner returns is built here, by placing jobs one at a time (in some priority
order) at the earliest time at which enough *specific* GPUs of a node are free for the job's whole
duration. Working with real GPU ids and real durations is what makes every candidate valid by
construction; the MILP only decides options, nodes and the order in which jobs are placed.

`fixed` assignments (jobs already running when the executor re-plans) are pre-placed: their GPUs
are busy from 0 until their end, and every job placed here goes around them.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from saturn.planner.cores import CoreTimeline, constrained
from saturn.planner.inputs import NodeSpec
from saturn.planner.options import Option
from saturn.planner.plan import Assignment


class NodeTimeline:
    """Busy intervals of every GPU of one node; supports backfilling into gaps."""

    def __init__(self, node: NodeSpec):
        self.node = node
        self.starts: list[list[float]] = [[] for _ in range(node.gpus)]
        self.ends: list[list[float]] = [[] for _ in range(node.gpus)]
        self.events: list[float] = [0.0]  # sorted distinct end times: the only useful start times
        self.cores = CoreTimeline(getattr(node, "cpu_cores", None))  # saturn.planner.cores
        self.host = CoreTimeline(getattr(node, "host_memory_gb", None))  # host memory, GB

    def _free_gap(self, gpu: int, t: float, d: float) -> Optional[float]:
        """If `gpu` is free during [t, t+d), return how long it had been idle before t."""
        starts, ends = self.starts[gpu], self.ends[gpu]
        k = bisect_left(starts, t + d)  # intervals k.. start at or after t+d: no overlap
        if k == 0:
            return t
        if ends[k - 1] <= t:  # intervals are disjoint and sorted: only k-1 can overlap
            return t - ends[k - 1]
        return None

    def earliest(self, gpus: int, duration: float, release: float = 0.0, cores: float = 0.0,
                 host_gb: float = 0.0) -> tuple[float, list[int]]:
        """Earliest start >= release with `gpus` GPUs (and `cores`, `host_gb`) free for `duration`.

        Among the free GPUs we take those idle the shortest time before the start (best fit),
        which keeps long idle gaps whole for later jobs.
        """
        if gpus > self.node.gpus:
            raise ValueError(f"{gpus} GPUs do not fit node {self.node.name}")
        i = bisect_left(self.events, release)
        candidates = ([release] if i >= len(self.events) or self.events[i] != release else []) + self.events[i:]
        for t in candidates:
            free = []
            for g in range(self.node.gpus):
                gap = self._free_gap(g, t, duration)
                if gap is not None:
                    free.append((gap, g))
            if len(free) >= gpus and self.cores.fits(t, duration, cores) and self.host.fits(t, duration, host_gb):
                free.sort()
                return t, sorted(g for _, g in free[:gpus])
        raise AssertionError("unreachable: after the last event every GPU is free")

    def place(self, start: float, duration: float, gpu_ids: Iterable[int], cores: float = 0.0,
              host_gb: float = 0.0) -> None:
        end = start + duration
        self.cores.place(start, duration, cores)
        self.host.place(start, duration, host_gb)
        for g in gpu_ids:
            k = bisect_left(self.starts[g], start)
            self.starts[g].insert(k, start)
            self.ends[g].insert(k, end)
        k = bisect_left(self.events, end)
        if k >= len(self.events) or self.events[k] != end:
            insort(self.events, end)


class AppendTimeline:
    """The GPUs of one node as "free from" times, without backfilling: a job starts once enough
    GPUs are free and nothing is placed into earlier gaps. O(1) to find a start and O(GPUs log
    GPUs) to place, against NodeTimeline's scan over every event, which is quadratic in the job
    count; used for workloads of thousands of jobs, where gaps matter little (`BACKFILL_MAX_JOBS`)."""

    def __init__(self, node: NodeSpec):
        self.node = node
        self.free = [0.0] * node.gpus
        self.sorted_free = [0.0] * node.gpus

    def start(self, gpus: int, release: float = 0.0) -> float:
        """Earliest start >= release with `gpus` GPUs free (from then on: nothing follows them)."""
        return max(release, self.sorted_free[gpus - 1])

    def ids_at(self, t: float, gpus: int) -> list[int]:
        """Among the GPUs free by t, those that became free last (best fit, as NodeTimeline)."""
        ids = sorted((g for g in range(self.node.gpus) if self.free[g] <= t), key=lambda g: (-self.free[g], g))
        return sorted(ids[:gpus])

    def earliest(self, gpus: int, duration: float, release: float = 0.0, cores: float = 0.0,
                 host_gb: float = 0.0) -> tuple[float, list[int]]:
        if gpus > self.node.gpus:
            raise ValueError(f"{gpus} GPUs do not fit node {self.node.name}")
        t = self.start(gpus, release)
        return t, self.ids_at(t, gpus)

    def place(self, start: float, duration: float, gpu_ids: Iterable[int], cores: float = 0.0,
              host_gb: float = 0.0) -> None:
        for g in gpu_ids:
            self.free[g] = max(self.free[g], start + duration)
        self.sorted_free = sorted(self.free)


BACKFILL_MAX_JOBS = 400  # above this, list schedules do not backfill (AppendTimeline)


@dataclass
class Choice:
    """What the scheduler places: a job's option, optionally pinned to a node."""

    option: Option
    node: Optional[str] = None
    release: float = 0.0


def make_assignment(opt: Option, node: str, start: float, gpu_ids: list[int]) -> Assignment:
    return Assignment(
        job=opt.job,
        technique=opt.technique,
        knobs=opt.knobs_dict,
        node=node,
        gpus=list(gpu_ids),
        start_s=start,
        end_s=start + opt.runtime_s,
        phases={k: {"s": v, "source": src} for k, v, src in opt.phases},
        cpu_cores=getattr(opt, "cpu_cores", 0.0),
        host_mem_gb=getattr(opt, "host_mem_gb", 0.0),
    )


class Scheduler:
    """Places jobs one by one on a cluster; `best_place` picks the earliest-finishing node.

    `fixed` assignments block their GPUs but are not part of `assignments`.
    """

    def __init__(self, nodes: Sequence[NodeSpec], fixed: Sequence[Assignment] = (), backfill: bool = True):
        self.nodes = list(nodes)
        timeline = NodeTimeline if backfill or constrained(self.nodes) \
            else AppendTimeline  # core / host-memory limits need NodeTimeline's bookkeeping
        self.timelines: dict[str, Any] = {n.name: timeline(n) for n in self.nodes}
        self.append = timeline is AppendTimeline
        self._fits: dict[tuple, list[NodeSpec]] = {}  # (gpus, gpu type, cores) -> nodes it fits
        self.assignments: list[Assignment] = []
        for a in fixed:
            if a.node in self.timelines:
                self.timelines[a.node].place(a.start_s, a.duration_s, a.gpus, a.cpu_cores, a.host_mem_gb)

    def candidates(self, opt: Option, node: Optional[str] = None, release: float = 0.0):
        """(finish, start, node, gpu ids) for each node the option fits (or just `node`)."""
        for n in self.nodes:
            if (node is not None and n.name != node) or not opt.fits(n):
                continue
            t, ids = self.timelines[n.name].earliest(opt.gpus, opt.runtime_s, release, opt.cpu_cores, opt.host_mem_gb)
            yield t + opt.runtime_s, t, n, ids

    def best_place(self, opt: Option, node: Optional[str] = None, release: float = 0.0):
        """Earliest finish; ties go to the node whose size fits the option most tightly."""
        if self.append:
            return self._best_append(opt, node, release)
        best = None
        for fin, t, n, ids in self.candidates(opt, node, release):
            key = (fin, n.gpus - opt.gpus)
            if best is None or key < best[0]:
                best = (key, t, n, ids)
        if best is None:
            raise ValueError(f"option {opt.technique}x{opt.gpus} of job {opt.job} fits no node")
        return best[1], best[2], best[3]

    def _best_append(self, opt: Option, node: Optional[str], release: float):
        """best_place for AppendTimelines: start times are O(1) per node, GPU ids only for the winner."""
        key = (opt.gpus, opt.gpu_type, opt.cpu_cores, opt.host_mem_gb)
        fit = self._fits.get(key)
        if fit is None:
            fit = self._fits[key] = [n for n in self.nodes if opt.fits(n)]
        best = None
        for n in fit:
            if node is not None and n.name != node:
                continue
            k = (self.timelines[n.name].start(opt.gpus, release) + opt.runtime_s, n.gpus - opt.gpus)
            if best is None or k < best[0]:
                best = (k, n)
        if best is None:
            raise ValueError(f"option {opt.technique}x{opt.gpus} of job {opt.job} fits no node")
        n = best[1]
        t = self.timelines[n.name].start(opt.gpus, release)
        return t, n, self.timelines[n.name].ids_at(t, opt.gpus)

    def place(self, opt: Option, start: float, node: NodeSpec, ids: list[int]) -> Assignment:
        self.timelines[node.name].place(start, opt.runtime_s, ids, opt.cpu_cores, opt.host_mem_gb)
        a = make_assignment(opt, node.name, start, ids)
        self.assignments.append(a)
        return a

    def add(self, choice: Choice) -> Assignment:
        t, n, ids = self.best_place(choice.option, choice.node, choice.release)
        return self.place(choice.option, t, n, ids)

    @property
    def makespan(self) -> float:
        return max((a.end_s for a in self.assignments), default=0.0)


def list_schedule(nodes: Sequence[NodeSpec], choices: Iterable[Choice],
                  fixed: Sequence[Assignment] = ()) -> list[Assignment]:
    """Place the choices in the given order (around `fixed`), each at its earliest finish
    (backfilling into gaps up to BACKFILL_MAX_JOBS choices)."""
    choices = list(choices)
    s = Scheduler(nodes, fixed, backfill=len(choices) <= BACKFILL_MAX_JOBS)
    for c in choices:
        s.add(c)
    return s.assignments
