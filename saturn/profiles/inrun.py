"""Trials that count: a job's own first steps measure the option nobody measured.

Why: measuring an option in a separate trial process before the run costs a model build, a
warm-up and a teardown per option -- for the option the job then runs anyway. Instead, when a job
is the first of its profile signature to run on an option whose rows are not measured (provenance
extrapolated / simulated / guessed / estimated), the executor hands this object the per-step times
its attempt reports; after `MIN_STEPS` steps past the first `SKIP_STEPS` (lazy initialization and
compilation), the median goes to the profile store as a measured row (`source` "run:<run id>",
this host), and the executor gives the same row to every job of that signature in the run (they
use the measurement) and re-plans. When the attempt ends, the row is refined from all its steps.
An attempt that runs out of memory -- on the device (status "oom", CUDA's OutOfMemoryError) or on
the host (status "host_oom": killed by the kernel, with `host_peak_gb`, the process tree's sampled
peak, and `host_memory_gb`, what the node allowed) -- writes an infeasible row instead, measured or
not before, and the executor drops the option for every job of the signature; the row carries the
job's `inputs_hash`, so a change of inputs measures it again, and an unchanged option is never
retried from scratch. One that crashes before its first measurement drops it for this run only
(where the jobs have another option), so a wrong estimate costs one attempt, never the job.

The executor knows nothing of the store: it calls `on_steps` / `on_end` and gets a `Measurement`
(or None) back. Pure pandas here; the hardware key comes from the caller.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import pandas as pd

from saturn.parse import canonical_knobs, finite_or_none

MIN_STEPS = 5  # timed steps before the first measurement is written
SKIP_STEPS = 2  # an attempt's first steps: lazy init, compilation, allocator warm-up
RUN_SOURCE = "run"  # rows' `source` is "run:<run id>" (saturn.planner.provenance: measured)


@dataclass
class Measurement:
    """What one attempt measured for its signature, as the executor consumes it.

    rows: per-job rows (a `job` column) for every job of the signature in this run; feasible False
    for an out-of-memory attempt. first: the first measurement of this option in the run (the
    picture changed: re-plan)."""

    signature: str
    technique: str
    knobs: str
    gpus: int
    feasible: bool
    step_time_s: Optional[float]
    steps: int
    jobs: list[str]
    rows: pd.DataFrame
    first: bool
    source: str
    reason: str = ""
    stored: bool = True  # False: this run only (a crash says nothing durable about the option)


@dataclass
class _Attempt:
    job: str
    technique: str
    knobs: str
    gpus: int
    start_step: int
    times: list[float] = field(default_factory=list)
    seen: set = field(default_factory=set)
    written: bool = False
    launch_s: Optional[float] = None
    measures: bool = True  # an unmeasured option: its steps are measured (else only an OOM is recorded)


class RunMeasurer:
    """Measures unmeasured options from the run's own attempts (see the module docstring).

    signatures: job name -> profile signature. table: the per-job table the run started with (a
    `job` column; `source`, `host` as stored). hardware: the store key columns of this machine
    (gpu_type, gpu_memory_gb, interconnect, torch_version). store_dir: where rows go (None: the
    default store). inputs: job name -> `saturn.spec.signature.inputs_hash` (failure rows carry it)."""

    def __init__(self, *, signatures: Mapping[str, str], table: pd.DataFrame, hardware: Mapping[str, Any],
                 run_id: str, store_dir: Any = None, min_steps: int = MIN_STEPS, skip_steps: int = SKIP_STEPS,
                 inputs: Optional[Mapping[str, str]] = None):
        from saturn.planner.provenance import nobody_measured

        self.signatures = dict(signatures)
        self.inputs = dict(inputs or {})
        self.hardware = dict(hardware)
        self.source = f"{RUN_SOURCE}:{run_id}"
        self.store_dir = store_dir
        self.min_steps = max(1, int(min_steps))
        self.skip_steps = max(0, int(skip_steps))
        self.unmeasured: set[tuple[str, str, str, int]] = set()
        self.base: dict[tuple[str, str, str, int], dict] = {}  # the row each option rested on
        for r in table.to_dict("records") if len(table) else []:
            sig = self.signatures.get(str(r.get("job")))
            if sig is None:
                continue
            key = (sig, str(r["technique"]), canonical_knobs(r.get("knobs")), int(r["gpus"]))
            self.base.setdefault(key, r)
            if nobody_measured(r):
                self.unmeasured.add(key)
        self.measured: dict[tuple[str, str, str, int], float] = {}  # key -> step time (this run)
        self._attempts: dict[str, _Attempt] = {}

    def add_jobs(self, signatures: Mapping[str, str], table: pd.DataFrame,
                 inputs: Optional[Mapping[str, str]] = None) -> None:
        """Jobs submitted while running (the Orchestrator): their signatures and rows."""
        more = RunMeasurer(signatures=signatures, table=table, hardware=self.hardware, run_id="-")
        self.signatures.update(signatures)
        self.inputs.update(inputs or {})
        self.unmeasured |= {k for k in more.unmeasured if k not in self.measured}
        for k, v in more.base.items():
            self.base.setdefault(k, v)

    def to_meta(self) -> dict[str, Any]:
        """What a resumed run needs to measure on (`from_meta`): kept in the run's journal, so a
        run killed before its first measurement still measures after `saturn run --resume`."""
        import json

        rows = list(self.base.values())  # one row per option (each with its `job`)
        return {"signatures": self.signatures, "hardware": self.hardware, "source": self.source,
                "store_dir": None if self.store_dir is None else str(self.store_dir),
                "min_steps": self.min_steps, "skip_steps": self.skip_steps,
                "rows": json.loads(pd.DataFrame(rows).to_json(orient="records"))}

    @classmethod
    def from_meta(cls, d: Mapping[str, Any], measured: Iterable[Mapping[str, Any]] = ()) -> "RunMeasurer":
        """The measurer of a resumed run; `measured`: the journal's `measured` events (options an
        earlier executor of this run measured are not measured again)."""
        m = cls(signatures=d["signatures"], table=pd.DataFrame(d.get("rows") or []), hardware=d["hardware"],
                run_id="-", store_dir=d.get("store_dir"), min_steps=int(d.get("min_steps", MIN_STEPS)),
                skip_steps=int(d.get("skip_steps", SKIP_STEPS)))
        m.source = str(d["source"])
        for e in measured:
            if e.get("stored", True):
                step = finite_or_none(e.get("step_time_s"))
                key = (str(e["signature"]), str(e["technique"]), canonical_knobs(e.get("knobs")), int(e["gpus"]))
                m.measured[key] = step if e.get("feasible") and step is not None else math.inf
        return m

    def pending(self) -> list[tuple[str, str, str, int]]:
        """Unmeasured options no attempt of this run has measured yet."""
        return sorted(k for k in self.unmeasured if k not in self.measured)

    # ---------------------------------------------------------------------------- executor side
    def _key(self, job: str, technique: str, knobs: Any, gpus: int) -> Optional[tuple[str, str, str, int]]:
        sig = self.signatures.get(job)
        return None if sig is None else (sig, str(technique), canonical_knobs(knobs), int(gpus))

    def on_launch(self, job: str, technique: str, knobs: Any, gpus: int, start_step: int) -> bool:
        """An attempt started; True when it measures an unmeasured option (every attempt is
        followed, so one that runs out of memory is recorded either way)."""
        key = self._key(job, technique, knobs, gpus)
        self._attempts.pop(job, None)
        if key is None:
            return False
        measures = key in self.unmeasured and key not in self.measured  # else measured: use it
        self._attempts[job] = _Attempt(job, key[1], key[2], key[3], int(start_step), measures=measures)
        return measures

    def on_steps(self, job: str, steps: Iterable[tuple[int, float]],
                 launch_s: Optional[float] = None) -> Optional[Measurement]:
        """Per-step times ((step number after the step, seconds)) of the job's running attempt;
        a Measurement once enough steps are in (once per attempt; `on_end` refines it).
        launch_s: the attempt's measured launch -> first step, when known."""
        a = self._attempts.get(job)
        if a is None or not a.measures:
            return None
        if launch_s is not None and math.isfinite(launch_s):
            a.launch_s = float(launch_s)
        for step, dt in steps:
            if step in a.seen or step <= a.start_step + self.skip_steps or not (dt > 0 and math.isfinite(dt)):
                continue
            a.seen.add(step)
            a.times.append(float(dt))
        if a.written or len(a.times) < self.min_steps:
            return None
        a.written = True
        return self._write(a, feasible=True)

    def on_end(self, job: str, status: str, reason: str = "", *, host_peak_gb: Optional[float] = None,
               host_limit_gb: Optional[float] = None) -> Optional[Measurement]:
        """The attempt ended: refine its row from every timed step, or record an out-of-memory
        (status "oom": the device's; "host_oom": the host's, with its measured peak and limit)."""
        a = self._attempts.pop(job, None)
        if a is None:
            return None
        first = reason.strip().splitlines()[0][:300] if reason.strip() else ""
        if status == "oom":
            return self._write(a, feasible=False, reason=f"out of memory ({first})" if first else "out of memory")
        if status == "host_oom":
            return self._write(a, feasible=False, status="host_oom", reason=first or "host out of memory",
                               host={"host_peak_gb": finite_or_none(host_peak_gb),
                                     "host_memory_gb": finite_or_none(host_limit_gb)})
        if not a.measures:
            return None
        if status in ("failed", "lost") and not a.written:
            # the option nobody measured crashed before its first measurement: no job of the
            # signature is planned on it again in this run (the store keeps no verdict: a crash
            # may be transient), so a broken estimate costs one attempt, not the job
            sig = self.signatures[a.job]
            jobs = sorted(j for j, s in self.signatures.items() if s == sig)
            return Measurement(sig, a.technique, a.knobs, a.gpus, False, None, len(a.times), jobs,
                               pd.DataFrame(), False, self.source, reason=f"crashed on its first attempt "
                               f"({reason[-300:]})" if reason else "crashed on its first attempt", stored=False)
        if len(a.times) < (self.min_steps if not a.written else 1):
            return None  # too few steps to say anything (an early stop)
        return self._write(a, feasible=True)

    # ------------------------------------------------------------------------------------ rows
    def _rescaled(self, key: tuple[str, str, str, int], step: Optional[float]) -> list[dict]:
        """The signature's other unmeasured options, their estimates scaled by how far this
        option's estimate was from its measurement -- only ever up: a measurement never makes a
        guess look better, since moving a running job onto a guess costs a relaunch (on one H200 a
        2x-optimistic estimate once moved a measured ViT job onto a slower option). In-run
        estimates only: nothing of this goes to the store."""
        ratio = _ratio(step, self.base.get(key, {})) if key in self.unmeasured else None
        if ratio is None or ratio <= 1.0:
            return []
        out = []
        for k in self.pending():
            base = self.base.get(k)
            st = finite_or_none((base or {}).get("step_time_s"))
            if k[0] != key[0] or k == key or base is None or st is None:
                continue
            out.append({**{c: v for c, v in base.items() if c != "job"}, "step_time_s": st * ratio,
                        "source": f"estimated: {base.get('source') or 'prior'}; x{ratio:.2f} as this run measured "
                                  f"{key[1]} on {key[3]} GPU(s)"})
        return out

    def _write(self, a: _Attempt, *, feasible: bool, reason: str = "", status: str = "oom",
               host: Optional[dict] = None) -> Measurement:
        from saturn.profiles.store import upsert_rows

        sig = self.signatures[a.job]
        key = (sig, a.technique, a.knobs, a.gpus)
        step = statistics.median(a.times) if feasible and a.times else None
        first = key not in self.measured
        base = self.base.get(key, {})
        ckpt = finite_or_none(base.get("checkpoint_s"))
        launch = a.launch_s if a.launch_s is not None else finite_or_none(base.get("launch_s"))
        # the planner's start-up = launch + final save (as the profiler writes it)
        startup = a.launch_s + (ckpt or 0.0) if a.launch_s is not None else finite_or_none(base.get("startup_s"))
        row = {"signature": sig, "technique": a.technique, "knobs": a.knobs, "gpus": a.gpus, **self.hardware,
               "status": "ok" if feasible else status, "feasible": feasible, "step_time_s": step,
               # what a failure depended on: a change of inputs measures the option again
               "inputs_hash": "" if feasible else self.inputs.get(a.job, ""), **(host or {}),
               "peak_mem_gb": None, "startup_s": startup, "launch_s": launch, "checkpoint_s": ckpt,
               "checkpoint_source": "estimated" if ckpt is not None else None,
               "steps": len(a.times), "reason": reason, "source": self.source,
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        upsert_rows([row], self.store_dir)
        if feasible and step is not None:
            self.measured[key] = step
        else:
            self.measured[key] = math.inf
        jobs = sorted(j for j, s in self.signatures.items() if s == sig)
        rows = pd.DataFrame([{"job": j, **r} for r in [row, *self._rescaled(key, step)] for j in jobs])
        return Measurement(sig, a.technique, a.knobs, a.gpus, feasible, step, len(a.times), jobs, rows,
                           first, self.source, reason=reason)


def _ratio(step: Optional[float], base: Mapping[str, Any]) -> Optional[float]:
    est = finite_or_none(base.get("step_time_s"))
    return step / est if step is not None and est and est > 0 else None


