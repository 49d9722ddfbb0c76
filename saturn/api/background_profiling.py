"""Profiling new job signatures in the background, so that `submit` returns at once.

An HPO study submits jobs with new signatures all the time (every new batch-size value is one).
Measuring them (minutes) inside `submit` blocked the study with no output. Instead:

1. `submit` gives the job *estimated* profile rows, labelled in their `source` column (and in the
   job's `JobReport.profile`), and the executor plans and may start it with them:
   * "estimate: batch-scaled from batch size B" -- a job this orchestrator already measured differs
     only in batch size: its step times scaled linearly in batch size (a model that holds while
     the step is compute-bound; the measurement replaces it);
   * "estimate: guessed from N parameters" -- nothing similar is known: 6 x parameters x tokens per
     step at an assumed throughput (GUESS_FLOPS; a guess, only good enough to place the job).
2. One background thread measures the queued signatures one after another (profiling them
   concurrently would fight over the same devices), within the study's limits (`techniques`,
   `gpus`, `budget_min`), and reports progress as log lines on the "saturn.api" logger and to an
   optional callback `on_profile(event)`, event = {"signature", "jobs", "status": queued | started
   | done | failed, "elapsed_s", "rows", "reason"}.
3. When the rows arrive the executor thread replaces the estimate with them and re-plans.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import Any, Callable, Optional

import pandas as pd

log = logging.getLogger("saturn.api")

GUESS_FLOPS = {"cpu": 2e10, "gpu": 1e14}  # assumed sustained FLOP/s (a guess, labelled as one)
GUESS_STARTUP_S = 5.0
_NOT_SHAPE = ("name", "batch_size", "optimizer", "seed", "steps", "epochs", "weight")


def shape_key(job: Any) -> str:
    """What must match for a measured job's step time to be scaled by batch size."""
    import json

    d = job.model_dump(mode="json")
    return json.dumps({k: v for k, v in d.items() if k not in _NOT_SHAPE}, sort_keys=True)


def estimate_rows(job: Any, cluster: Any, known: dict[str, tuple[int, pd.DataFrame]]) -> pd.DataFrame:
    """Store-format rows (no `job` column) estimating `job`, labelled in `source` (see above)."""
    base = known.get(shape_key(job))
    if base is not None:
        bs, rows = base
        rows = rows[rows["feasible"].astype(bool)].copy()
        rows["step_time_s"] = rows["step_time_s"].astype(float) * (job.batch_size / bs)
        rows["signature"] = str(job.signature)
        rows["source"] = f"estimate: batch-scaled from batch size {bs}"
        if len(rows):
            return rows.reset_index(drop=True)
    from saturn.zoo import param_count

    nodes = list(getattr(cluster, "nodes", []) or [])
    node = nodes[0] if nodes else None
    is_cpu = bool(getattr(cluster, "is_cpu", False))
    params = param_count(job.model) or 1e8
    tokens = job.batch_size * job.seq_len
    step = 6.0 * params * tokens / GUESS_FLOPS["cpu" if is_cpu else "gpu"]
    tech = (job.techniques or ["ddp"])[0]
    gpus = min(job.gpus or [1])
    return pd.DataFrame([{
        "signature": str(job.signature), "technique": tech, "knobs": "{}", "gpus": gpus, "step_time_s": step,
        "peak_mem_gb": math.nan, "startup_s": GUESS_STARTUP_S, "feasible": True, "reason": "",
        "gpu_type": getattr(node, "gpu_type", None), "gpu_memory_gb": getattr(node, "gpu_memory_gb", None),
        "source": f"estimate: guessed from {params:.3g} parameters", "measured_at": None}])


class BackgroundProfiler:
    """One thread measuring queued signatures; see the module docstring.

    profile_fn(workload, store_dir=..., budget_min=...) measures a Workload into the store (default
    saturn.api.stages.profile); lookup_fn(job) -> measured rows (store format) after it ran;
    deliver(job names, rows or None, reason) hands the outcome to the orchestrator."""

    def __init__(self, profile_fn: Callable[..., Any], lookup_fn: Callable[[Any], pd.DataFrame],
                 deliver: Callable[[list[str], Optional[pd.DataFrame], str], None], *, cluster: Any,
                 store_dir: Any = None, limits: Optional[dict] = None,
                 on_profile: Optional[Callable[[dict], None]] = None):
        self._profile, self._lookup, self._deliver = profile_fn, lookup_fn, deliver
        self.cluster, self.store_dir = cluster, store_dir
        self.limits = dict(limits or {})
        bad = set(self.limits) - {"techniques", "gpus", "budget_min"}
        if bad:
            from saturn.errors import SaturnError

            raise SaturnError(f"profile_limits: unknown key(s) {sorted(bad)}; use techniques, gpus, budget_min")
        self.on_profile = on_profile
        self._q: "queue.Queue[Optional[str]]" = queue.Queue()
        self._waiting: dict[str, list[Any]] = {}  # signature -> jobs waiting for its rows
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self.spent_s = 0.0

    def limit_job(self, job: Any) -> Any:
        """The job restricted to the study's profiling limits (what is measured is what may run)."""
        upd = {}
        if self.limits.get("techniques"):
            allowed = [t for t in (job.techniques or self.limits["techniques"]) if t in self.limits["techniques"]]
            upd["techniques"] = allowed or list(self.limits["techniques"])
        if self.limits.get("gpus"):
            allowed = [g for g in (job.gpus or self.limits["gpus"]) if g in self.limits["gpus"]]
            upd["gpus"] = allowed or list(self.limits["gpus"])
        if not upd:
            return job
        from saturn.spec import Job

        return Job.model_validate({**job.model_dump(), **upd})

    def pending(self, job: Any) -> bool:
        with self._lock:
            return str(job.signature) in self._waiting

    def enqueue(self, job: Any) -> None:
        sig = str(job.signature)
        with self._lock:
            first = sig not in self._waiting
            self._waiting.setdefault(sig, []).append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="saturn-profiler", daemon=True)
                self._thread.start()
        if first:
            self._event(sig, "queued")
            self._q.put(sig)

    def close(self) -> None:
        self._q.put(None)

    def _event(self, sig: str, status: str, **kw: Any) -> None:
        with self._lock:
            names = [j.name for j in self._waiting.get(sig, [])]
        ev = {"signature": sig, "jobs": names, "status": status, **kw}
        log.info("profiling %s (jobs %s): %s%s", sig, ", ".join(names), status,
                 "".join(f", {k}={v}" for k, v in kw.items() if k != "rows"))
        if self.on_profile is not None:
            try:
                self.on_profile(ev)
            except Exception:  # noqa: BLE001 - a user callback never stops profiling
                log.exception("on_profile callback failed")

    def _run(self) -> None:
        from saturn.errors import SaturnError
        from saturn.spec import Workload

        while True:
            sig = self._q.get()
            if sig is None:
                return
            with self._lock:
                jobs = list(self._waiting.get(sig, []))
            t0 = time.monotonic()
            self._event(sig, "started")
            rows, reason = None, ""
            try:
                budget = self.limits.get("budget_min")
                left = None if budget is None else budget - self.spent_s / 60
                if left is not None and left <= 0:
                    raise SaturnError(f"the study's profiling budget ({budget} min) is spent")
                probe = self.limit_job(jobs[0])
                kw = {"store_dir": self.store_dir}
                if left is not None:
                    kw["budget_min"] = left
                self._profile(Workload(name=f"orchestrator-{probe.name}", cluster=self.cluster, jobs=[probe]), **kw)
                rows = self._lookup(probe)
                if rows is None or not len(rows) or not rows["feasible"].astype(bool).any():
                    rows, reason = None, "no feasible option was measured"
            except Exception as exc:  # noqa: BLE001 - a failed profile fails its jobs, not the loop
                rows, reason = None, f"{type(exc).__name__}: {exc}"
            elapsed = time.monotonic() - t0
            self.spent_s += elapsed
            with self._lock:
                jobs = self._waiting.pop(sig, [])
            self._deliver([j.name for j in jobs], rows, reason)
            if rows is not None:
                self._event(sig, "done", elapsed_s=round(elapsed, 1), rows=len(rows))
            else:
                with self._lock:
                    self._waiting[sig] = jobs  # for the event's job list only
                self._event(sig, "failed", elapsed_s=round(elapsed, 1), reason=reason)
                with self._lock:
                    self._waiting.pop(sig, None)
