"""Online tuning of a running pipeline: a job's cores across its stages, and its prefetch depth.

Method: bottleneck-driven hill climbing with a guard rail, not InTune's RL agent. Why: the quantity
InTune's agent learns -- where one more core raises throughput most -- is observable directly here:
each stage reports its busy time per item, so a stage's capacity is workers x items/busy-second and
the pipeline runs at the capacity of its slowest stage. Allocating the budget in proportion to
per-item cost, then moving one worker at a time from the stage with the most spare capacity to the
bottleneck, reaches the same allocation in a few windows with no training episodes, no reward
shaping and nothing to ship. Every move is a trial: if the next window's throughput drops by more
than `tolerance`, the move is reverted (and not retried for a while), so a bad estimate costs one
window, never a run.

Co-located jobs: `budget()` (e.g. `CoreLedger.share`) is polled every window and `report(wait)`
(e.g. `CoreLedger.report`) told the window's data-wait fraction; when a job starts or ends on the
node, or the ledger moves a core from a job whose GPU does not wait to one whose GPU does, the
budget changes and workers are taken from the stages with the most slack, or given to the
bottleneck (for a process pipeline, procpipe.py: processes started or retired while batches
flow). Prefetch grows while the consumer still waits although the stages could keep up (bursty
stages), and shrinks back when the consumer never waits (memory).

Every decision is one JSON line in `log_path` (the job directory's data_tuner.jsonl), which
`saturn report` summarizes.

Two policies share this loop, its observations and its guard rails (trial moves reverted when the
next window is slower, tabu for reverted moves, the core budget): `hill` (this class, the default)
and `rl` (saturn.data.tuner_rl.RLTuner, an InTune-style Q-learning agent). `make_tuner(kind, ...)`
(saturn.data.policies) picks one; the workload knob is `data.kwargs.tuner: hill | rl`. Why hill
is the default (measured by scripts/bench_data_tuners.py, BENCHMARKS.md "Input-pipeline tuners",
CPU, simulated stage costs):
it reached 90% of the best static split in 1-3 s (2-4 windows) with 0 reverts in every scenario
(slow stage, bottleneck shift, budget 10 -> 6) and held 99-100% of it; the agent needed 3.5-5 s and
3-5 reverts per phase, and on the capacity model (no noise, 30 seeds) 7-20 of 30 runs settled short
of 90% of the optimum within 40 windows. The agent learns from throughput what each stage's
measured busy time already says; it adds exploration cost and no information.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saturn.data.pipeline import PipelineStats, Tunable

LOG_FILE = "data_tuner.jsonl"


class PipelineTuner:
    name = "hill"

    def __init__(self, pipe: Tunable, *, budget: int | Callable[[], int], batch_size: int,
                 window_s: float = 1.0, tolerance: float = 0.05, log_path: str | None = None,
                 min_wait_frac: float = 0.02, max_prefetch: int = 16,
                 report: Callable[[float], Any] | None = None):
        self.pipe, self.batch_size = pipe, int(batch_size)
        self._budget = budget if callable(budget) else (lambda b=int(budget): b)
        self._report = report  # told each window's wait fraction (the node's ledger moves cores on it)
        self.cores: dict[str, float] = {}  # the latest window's cores held per stage (measured)
        self.window_s, self.tolerance = float(window_s), float(tolerance)
        self.log_path = log_path
        self.min_wait_frac, self.max_prefetch = min_wait_frac, max_prefetch
        self.rates: dict[str, float] = {}  # EMA of items per busy-second per worker, per stage
        self.pending: dict[str, Any] | None = None  # the last move, awaiting its verdict
        self.tabu: dict[tuple[str, str], int] = {}  # (from, to) -> windows left before a retry
        self.history: list[dict[str, Any]] = []
        self.windows = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.initialized = False

    # ------------------------------------------------------------------------------- running
    def start(self) -> PipelineTuner:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="saturn-data-tuner")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        self.pipe.take_stats()
        while not self._stop.wait(self.window_s):
            if self.pipe.closed:
                return
            self.step(self.pipe.take_stats())

    # --------------------------------------------------------------------------------- logic
    def capacities(self) -> dict[str, float]:
        """Samples per second each stage could sustain with its current workers."""
        w = self.pipe.workers
        out = {}
        for name, r in self.rates.items():
            per = self.batch_size if name in self.pipe.batch_stages else 1  # collate: batches
            out[name] = w[name] * r * per
        return out

    def _observe(self, s: PipelineStats) -> None:
        for name, st in s.stages.items():
            if st.items >= 2 and st.busy_s > 0:
                r = st.items / st.busy_s
                self.rates[name] = r if name not in self.rates else 0.5 * self.rates[name] + 0.5 * r

    def step(self, s: PipelineStats) -> None:
        """One tuning window: judge the pending move, follow the budget, then maybe move again."""
        self.windows += 1
        self._observe(s)
        thr = s.samples_per_s
        wait_frac = s.wait_s / s.wall_s if s.wall_s > 0 else 0.0
        self.cores = dict(s.cores)
        if self._report is not None:
            self._report(wait_frac)
        self.tabu = {k: v - 1 for k, v in self.tabu.items() if v > 1}
        self._on_window(thr, wait_frac)
        if self.pending is not None:
            p, self.pending = self.pending, None
            if thr < p["throughput_before"] * (1 - self.tolerance):
                self.pipe.set_workers(p["workers_before"])
                self.pipe.set_prefetch(p["prefetch_before"])
                if "from" in p:
                    self.tabu[(p["from"], p["to"])] = 5
                self._log("revert", thr, wait_frac, reason=f"throughput {thr:.1f} < {p['throughput_before']:.1f}"
                          f" samples/s after {p['action']}")
                return
            self._log("keep", thr, wait_frac, reason=f"{p['action']}: {p['throughput_before']:.1f} -> {thr:.1f}")
        if len(self.rates) < len(self.pipe.stage_names):
            return  # not every stage measured yet
        budget = max(len(self.pipe.stage_names), int(self._budget()))
        total = sum(self.pipe.workers.values())
        if not self.initialized or total != budget:
            self._fit_budget(budget, thr, wait_frac, first=not self.initialized)
            self.initialized = True
            return
        self._decide(thr, wait_frac)

    # ------------------------------------------------------------ policy (overridden by RLTuner)
    def _on_window(self, thr: float, wait_frac: float) -> None:
        """A window's result, before the guard rail judges the pending move (RLTuner learns here)."""

    def _fit_budget(self, budget: int, thr: float, wait_frac: float, first: bool) -> None:
        self._apportion(budget, thr, wait_frac, first)

    def _decide(self, thr: float, wait_frac: float) -> None:
        if wait_frac >= self.min_wait_frac:
            self._move(thr, wait_frac)
        self._tune_prefetch(thr, wait_frac)

    def _apportion(self, budget: int, thr: float, wait_frac: float, first: bool) -> None:
        """Budget in proportion to per-item cost (largest remainder), at least 1 per stage."""
        before = dict(self.pipe.workers)
        names = self.pipe.stage_names
        cost = {n: 1.0 / (self.rates[n] * (self.batch_size if n in self.pipe.batch_stages else 1)) for n in names}
        tot = sum(cost.values())
        share = {n: budget * cost[n] / tot for n in names}
        alloc = {n: max(1, int(math.floor(share[n]))) for n in names}
        while sum(alloc.values()) > budget:
            n = max((n for n in names if alloc[n] > 1), key=lambda n: alloc[n] - share[n])
            alloc[n] -= 1
        while sum(alloc.values()) < budget:
            n = max(names, key=lambda n: share[n] - alloc[n])
            alloc[n] += 1
        self.pipe.set_workers(alloc)
        self._log("apportion" if first else "budget", thr, wait_frac, before=before,
                  reason=f"{'initial split' if first else 'core budget changed'}: {budget} cores by per-item cost")

    def _move(self, thr: float, wait_frac: float) -> None:
        """Move one worker from the stage with most spare capacity to the bottleneck, if the
        estimated pipeline capacity (its slowest stage) rises by more than 2%."""
        w, cap = self.pipe.workers, self.capacities()
        slow = min(cap, key=lambda n: cap[n])
        best = None
        for d in cap:
            if d == slow or w[d] <= 1 or (d, slow) in self.tabu:
                continue
            new = dict(cap)
            new[d] = cap[d] * (w[d] - 1) / w[d]
            new[slow] = cap[slow] * (w[slow] + 1) / w[slow]
            gain = min(new.values())
            if gain > min(cap.values()) * 1.02 and (best is None or gain > best[0]):
                best = (gain, d)
        if best is None:
            return
        donor = best[1]
        before = dict(w)
        self.pipe.set_workers({donor: w[donor] - 1, slow: w[slow] + 1})
        self.pending = {"action": f"move 1 worker {donor} -> {slow}", "from": donor, "to": slow,
                        "workers_before": before, "prefetch_before": self.pipe.prefetch, "throughput_before": thr}
        self._log("move", thr, wait_frac, before=before,
                  reason=f"bottleneck {slow} ({cap[slow]:.0f} samples/s), {donor} has slack ({cap[donor]:.0f})")

    def _tune_prefetch(self, thr: float, wait_frac: float) -> None:
        cap = self.capacities()
        depth = self.pipe.prefetch
        if self.pending is None and wait_frac > 0.05 and min(cap.values()) > 1.1 * thr and depth < self.max_prefetch:
            before = dict(self.pipe.workers)
            self.pipe.set_prefetch(depth + 1)
            self.pending = {"action": f"prefetch {depth} -> {depth + 1}", "workers_before": before,
                            "prefetch_before": depth, "throughput_before": thr}
            self._log("prefetch", thr, wait_frac, reason="consumer waits although the stages keep up (bursts)")
        elif wait_frac == 0.0 and depth > 2 and self.pending is None:
            self.pipe.set_prefetch(depth - 1)
            self._log("prefetch", thr, wait_frac, reason="consumer never waits: smaller prefetch saves memory")

    def _log(self, action: str, thr: float, wait_frac: float, *, reason: str, before: dict | None = None) -> None:
        rec = {"time": time.time(), "window": self.windows, "tuner": self.name, "action": action,
               "workers": dict(self.pipe.workers),
               "prefetch": self.pipe.prefetch, "throughput_samples_s": round(thr, 2),
               "wait_frac": round(wait_frac, 4), "cores": self.cores, "reason": reason}
        if before is not None:
            rec["workers_before"] = before
        self.history.append(rec)
        if self.log_path:
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:  # one whole line per write (O_APPEND)
                f.write(json.dumps(rec) + "\n")


def initial_workers(source: Any, cores: int) -> dict[str, int]:
    """The starting split of `cores` over a source's stages, before any window is measured: one
    worker for each light stage and for collate, the rest evenly over the heavy ones (the source's
    `offload_stages`, else every stage). The tuner re-apportions by measured cost after its first
    window; starting with the whole budget means a job never begins at one worker per stage."""
    names = [st.name for st in source.stages()]
    heavy = [n for n in names if n in getattr(source, "offload_stages", ())] or names
    per = max(1, (int(cores) - (len(names) + 1 - len(heavy))) // len(heavy))
    return {**{n: (per if n in heavy else 1) for n in names}, "collate": 1}


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The decisions of a tuner log, skipping a torn last line (a process killed mid-write)."""
    out: list[dict[str, Any]] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def summarize_log(path: str | Path) -> dict[str, Any] | None:
    """For `saturn report`: decisions by kind, reverts, the final allocation and its throughput."""
    recs = read_log(path)
    if not recs:
        return None
    kinds: dict[str, int] = {}
    for r in recs:
        kinds[r["action"]] = kinds.get(r["action"], 0) + 1
    last = recs[-1]
    moves = sum(kinds.get(k, 0) for k in ("move", "budget")) - kinds.get("revert", 0)
    return {"decisions": len(recs), "by_action": kinds, "moves": moves, "workers": last["workers"],
            "cores": last.get("cores", {}), "prefetch": last["prefetch"],
            "throughput_samples_s": last["throughput_samples_s"], "wait_frac": last["wait_frac"]}
