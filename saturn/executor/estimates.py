"""What a job's options cost here: the profile table corrected by what the run observed.

Why a module of its own: every decision of the executor (re-planning, retiming a plan, the
planner's inputs) rests on one estimate per job and option, and the rules that make it are easy
to get subtly wrong, so they live in one place, free of processes, clocks and I/O:

* `Estimator`: a job's step time / start-up / checkpoint cost per option, from the profile table
  corrected by what was observed (a job measured 20% slower than profiled on one option is assumed
  20% slower on all of its options, until those are observed too).
* `LaunchFacts`: what launching costs on this backend (warm workers, background drains), as data.
* `profile_records`: profile rows as the journal's `profiles` event keeps them, so a resumed run
  rebuilds the same estimator.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

from saturn.executor.state import JobState, option_key
from saturn.parse import canonical_knobs as knobs_key
from saturn.parse import num as _num

DEFAULT_CHECKPOINT_S = 1.0  # when neither measured nor profiled


def _true(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes", "y", "t")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    return bool(v)


def _opt(v: Any) -> Optional[float]:
    f = _num(v, math.nan)
    return None if math.isnan(f) else f


@dataclass(frozen=True)
class OptionRow:
    technique: str
    knobs: str  # canonical JSON
    gpus: int
    step_time_s: float
    startup_s: float
    checkpoint_s: Optional[float] = None
    gpu_type: Optional[str] = None
    checkpoint_source: Optional[str] = None  # "measured" | "estimated" (profiler)
    checkpoint_stage_s: Optional[float] = None  # blocking part of a background save
    worker_start_s: Optional[float] = None  # starting a warm worker, measured by the trial
    checkpoint_gb: Optional[float] = None  # host staging its background save needs (measured)


@dataclass
class LaunchFacts:
    """What launching costs on this backend, as data (from `Backend.launch_facts`):
    warm: jobs run on long-lived workers, so a launch costs the profile's `launch_s` only, and a
        device whose worker is still starting is held for the rest of that start
        (`worker_starts`, (node, gpu) -> seconds left); cold: every launch also starts its
        processes (`worker_start_s`).
    drains_behind: a one-GPU job's final save blocks only for its staging; the write goes on
        after the job has left its GPU (saturn.training.checkpoint).
    staging_budget_gb / node_gpus: the node's host staging budget, shared by its GPUs. A job
        whose checkpoint needs more than one GPU's share cannot count on it (every GPU may drain
        at once): its save is planned at its full, blocking cost."""

    warm: bool = False
    drains_behind: bool = False
    worker_starts: dict = field(default_factory=dict)
    worker_start_s: Optional[float] = None  # measured by the backend (else the profiles')
    staging_budget_gb: Optional[float] = None
    node_gpus: int = 1


class Estimator:
    """Profiled options per job, corrected by observations in the run state."""

    def __init__(self, profiles: pd.DataFrame, checkpoint_every: int = 0):
        self.rows: dict[str, list[OptionRow]] = {}
        # rows that are no option: job -> {(technique, gpus): (status, reason)} (why a job cannot run)
        self.refused: dict[str, dict[tuple[str, int], tuple[str, str]]] = {}
        self.checkpoint_every = checkpoint_every  # the backend's periodic saves (steps), planned
        self.launch = LaunchFacts()
        self.add_profiles(profiles)

    def worker_start_s(self) -> float:
        """Seconds to start a job's processes from nothing (the backend's measurement, else the
        largest the profiler measured; 0 if neither: the profile's launch_s then holds it)."""
        if self.launch.worker_start_s is not None:
            return self.launch.worker_start_s
        vals = [o.worker_start_s for lst in self.rows.values() for o in lst if o.worker_start_s]
        return max(vals) if vals else 0.0

    def final_save_s(self, o: OptionRow) -> Optional[float]:
        """What the final save blocks: its staging when it drains behind (one GPU, and its share
        of the node's staging budget holds it), else all of it."""
        if o.checkpoint_s is None:
            return None
        if self.over_budget(o):
            return o.checkpoint_s  # the staging budget may be full when it saves: it blocks
        if self.launch.drains_behind and o.gpus == 1:
            from saturn.planner.inputs import BACKGROUND_SAVE_FRACTION

            return o.checkpoint_stage_s if o.checkpoint_stage_s is not None else \
                BACKGROUND_SAVE_FRACTION * o.checkpoint_s
        return o.checkpoint_s

    def over_budget(self, o: OptionRow) -> bool:
        """Whether its checkpoint needs more staging than one GPU's share of the node's budget."""
        f = self.launch
        if o.checkpoint_gb is None or f.staging_budget_gb is None:
            return False
        return o.checkpoint_gb > f.staging_budget_gb / max(1, f.node_gpus)

    def fixed_cost(self, o: OptionRow) -> float:
        """A fresh launch's fixed seconds on this backend: launch (+ process start when cold) +
        the final save's blocking part."""
        extra = 0.0 if self.launch.warm else self.worker_start_s()
        final = self.final_save_s(o)
        if final is None or o.checkpoint_s is None:
            return o.startup_s + extra
        return max(0.0, o.startup_s - o.checkpoint_s) + final + extra

    def add_profiles(self, profiles: pd.DataFrame) -> None:
        for r in profiles.to_dict("records"):
            if not _true(r.get("feasible", True)):
                st = r.get("status")
                why = r.get("reason")
                self.refused.setdefault(str(r["job"]), {})[(str(r["technique"]), int(r["gpus"]))] = (
                    st if isinstance(st, str) and st and st != "ok" else "infeasible",
                    why if isinstance(why, str) else "")
                continue
            st = _num(r.get("step_time_s"), math.nan)
            if not (st >= 0 and math.isfinite(st)):
                continue
            ck = _num(r.get("checkpoint_s"), math.nan)
            gt = r.get("gpu_type")
            row = OptionRow(str(r["technique"]), knobs_key(r.get("knobs")), int(r["gpus"]), st,
                            _num(r.get("startup_s"), 0.0), None if math.isnan(ck) else ck,
                            None if gt is None or (isinstance(gt, float) and math.isnan(gt)) else str(gt),
                            r["checkpoint_source"] if isinstance(r.get("checkpoint_source"), str) else None,
                            _opt(r.get("checkpoint_stage_s")), _opt(r.get("worker_start_s")),
                            _opt(r.get("checkpoint_gb")))
            lst = self.rows.setdefault(str(r["job"]), [])
            lst[:] = [x for x in lst if (x.technique, x.knobs, x.gpus, x.gpu_type) !=
                      (row.technique, row.knobs, row.gpus, row.gpu_type)] + [row]

    def why_no_option(self, js: JobState, cluster_gpus: int) -> str:
        """Why `js` has no option left, option by option, claiming OOM only where it was OOM."""
        info = js.info
        allowed = [o for o in self.rows.get(js.name, []) if (not info.techniques or o.technique in info.techniques)
                   and (not info.gpus or o.gpus in info.gpus)]
        parts = []
        oom = sorted(k for k in js.infeasible if not js.infeasible_why.get(k))
        if oom:  # recorded without a cause: a device OOM (the loop's "oom" status)
            parts.append("ran out of memory at run time (OOM) with " + ", ".join(k.replace("|", "×") for k in oom))
        parts += [f"{k.replace('|', '×')}: {js.infeasible_why[k][:500]}" for k in sorted(js.infeasible)
                  if js.infeasible_why.get(k)]
        refused = {k: v for k, v in self.refused.get(js.name, {}).items()
                   if (not info.techniques or k[0] in info.techniques) and (not info.gpus or k[1] in info.gpus)}
        for (tech, g), (status, why) in sorted(refused.items()):
            label = {"oom": "out of memory (OOM) when profiled", "host_oom": "killed for host memory when measured",
                     "failed": "failed when profiled",
                     "timeout": "timed out when profiled"}.get(status, "infeasible")
            parts.append(f"{tech}×{g}: {label}" + (f": {why.strip()}" if why.strip() else ""))
        if not allowed and not refused and not js.infeasible:
            if info.gpus and min(info.gpus) > cluster_gpus:
                return (f"it needs {min(info.gpus)} GPUs (gpus: {info.gpus}) and the largest node has "
                        f"{cluster_gpus}: more GPUs than the cluster has")
            return "no profile rows for it (not profiled); run `saturn profile` or pass --profiles"
        return "no runnable option: " + "; ".join(parts) if parts else "no runnable option"

    def options(self, js: JobState) -> list[OptionRow]:
        info = js.info
        out = []
        for o in self.rows.get(js.name, []):
            if option_key(o.technique, o.gpus) in js.infeasible:
                continue
            if info.techniques and o.technique not in info.techniques and not (
                    o.technique == "sharp" and "spilling" in info.techniques):  # SHARP = spilling in a group
                continue
            if info.gpus and o.gpus not in info.gpus:
                continue
            out.append(o)
        return out

    def profiled(self, js: JobState, technique: str, gpus: int, knobs: Any = None) -> Optional[OptionRow]:
        cands = [o for o in self.rows.get(js.name, []) if o.technique == technique and o.gpus == gpus]
        if knobs is not None:
            exact = [o for o in cands if o.knobs == knobs_key(knobs)]
            cands = exact or cands
        return min(cands, key=lambda o: o.step_time_s) if cands else None

    def factor(self, js: JobState) -> float:
        """Observed / profiled step time, step-weighted geometric mean over observed options."""
        num, den = 0.0, 0
        for key, (secs, steps) in js.observed.items():
            tech, g = key.rsplit("|", 1)
            p = self.profiled(js, tech, int(g))
            if p is None or p.step_time_s <= 0 or steps <= 0:
                continue
            num += steps * math.log((secs / steps) / p.step_time_s)
            den += steps
        return math.exp(num / den) if den else 1.0

    def step_time(self, js: JobState, technique: str, gpus: int, knobs: Any = None) -> float:
        obs = js.observed_step_time(technique, gpus)
        if obs is not None:
            return obs
        p = self.profiled(js, technique, gpus, knobs)
        if p is None:
            return math.inf
        return p.step_time_s * self.factor(js)

    def startup(self, js: JobState, technique: str, gpus: int, knobs: Any = None) -> float:
        if js.startup_obs:
            return sum(js.startup_obs[-3:]) / len(js.startup_obs[-3:])
        p = self.profiled(js, technique, gpus, knobs)
        return self.fixed_cost(p) if p is not None else 0.0

    def checkpoint_cost(self, js: JobState) -> float:
        if js.checkpoint_obs:
            return sum(js.checkpoint_obs[-3:]) / len(js.checkpoint_obs[-3:])
        cks = [o.checkpoint_s for o in self.rows.get(js.name, []) if o.checkpoint_s is not None]
        return max(cks) if cks else DEFAULT_CHECKPOINT_S

    def switch_cost(self, js: JobState, technique: str, gpus: int, knobs: Any = None) -> float:
        """Measured (else profiled) checkpoint + restart time of moving a running job."""
        return self.checkpoint_cost(js) + self.startup(js, technique, gpus, knobs)

    def remaining_s(self, js: JobState, now: float) -> float:
        """Time a running job needs from `now` to finish on its current option."""
        seg = js.current
        if seg is None:
            return 0.0
        st = self.step_time(js, seg.technique, len(seg.gpus), seg.knobs)
        startup_left = 0.0
        if seg.first_progress is None:
            startup_left = max(0.0, self.startup(js, seg.technique, len(seg.gpus), seg.knobs)
                               - (now - seg.launched_at))
        else:
            # progress reports are discrete: credit the steps done since the last one
            t_last, s_last = seg.last_progress or seg.first_progress
            done_since = min(js.live_remaining_steps, (now - t_last) / st) if st > 0 else 0.0
            return max(0.0, (js.info.total_steps - s_last - done_since) * st)
        return startup_left + js.live_remaining_steps * st


def profile_records(df: pd.DataFrame) -> list[dict]:
    """Profile rows as the journal's `profiles` event keeps them (plain JSON, NaN as None):
    `Executor.resume` rebuilds its `Estimator` from these."""
    cols = [c for c in ("job", "technique", "knobs", "gpus", "step_time_s", "startup_s", "checkpoint_s",
                        "feasible", "gpu_type", "status", "reason") if c in df.columns]
    out = []
    for r in df[cols].to_dict("records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return json.loads(json.dumps(out, default=str))
