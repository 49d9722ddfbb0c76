"""Profile rows: their columns, the runtime estimate, and reading/writing the profile store.

One row = one measured trial: (signature, technique, knobs, GPU count, hardware) -> status, step
time, peak memory, start-up time, checkpoint cost. The store (`saturn.profiles.store`, owned by
the planner side) keeps one table of them; this module is the profiler's adapter to it (there is
no second writer).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import pandas as pd

from saturn.parse import num as _num
from saturn.profiler.hardware import HARDWARE_COLUMNS

KEY_COLUMNS = ("signature", "technique", "knobs", "gpus", *HARDWARE_COLUMNS)
VALUE_COLUMNS = ("status", "feasible", "step_time_s", "peak_mem_gb", "startup_s", "launch_s", "worker_start_s",
                 "checkpoint_s", "checkpoint_stage_s", "checkpoint_gb", "checkpoint_source", "first_step_s",
                 "teardown_s", "steps", "short", "reason", "trial_s", "measured_at", "source", "model",
                 "batch_size", "seq_len", "precision")
COLUMNS = KEY_COLUMNS + VALUE_COLUMNS
# The checkpoint at the end of a job (torch.distributed.checkpoint, weights + AdamW state in fp32 =
# 12 bytes per parameter): a fixed cost (DCP planning, metadata, rename) plus bytes / bandwidth.
# Fitted on one H100 run (gpt2-small/medium, DDP and spilling: 3.9-6.6 s measured); override with
# SATURN_CHECKPOINT_FIXED_S and SATURN_CHECKPOINT_GBPS. A technique that measures its own save
# can return `checkpoint_s` in its trial result, which then wins.
CHECKPOINT_BYTES_PER_PARAM = 12
DEFAULT_CHECKPOINT_GBPS = 2.0
DEFAULT_CHECKPOINT_FIXED_S = 3.0
CPU_CHECKPOINT_FIXED_S = 0.5  # CPU slots: no device-to-host copies, tiny models


def estimate_runtime_s(row: Mapping[str, Any], steps: float, checkpoint_cost_s: Optional[float] = None,
                       checkpoints: int = 1) -> float:
    """Predicted wall-clock seconds to train `steps` steps with this profile row:

        steps x step_time_s + launch_s + checkpoints x checkpoint_s

    `launch_s` is the measured fixed cost of one launch (process start, model build, first-step
    overheads, teardown: the trial's wall time not spent in steady steps); `checkpoint_s` the cost
    of writing one checkpoint (default: the row's column; pass `checkpoint_cost_s` to override).
    Rows store `startup_s = launch_s + checkpoint_s`, so the planner's `steps x step + startup_s`
    is this estimate with its defaults. Rows without `launch_s` (tables from elsewhere) use
    `startup_s` as the whole fixed cost. Infeasible rows are `inf`.
    """
    status = row.get("status")
    feasible = row.get("feasible", True)
    if isinstance(feasible, str):
        feasible = feasible.strip().lower() in ("true", "1", "yes")
    step = _num(row.get("step_time_s"), math.nan)
    if (isinstance(status, str) and status != "ok") or not feasible or not math.isfinite(step):
        return math.inf
    launch = _num(row.get("launch_s"), math.nan)
    if math.isnan(launch):  # a table without the split: startup_s is the whole fixed cost
        fixed = _num(row.get("startup_s"), 0.0)
        if checkpoint_cost_s is not None:
            fixed += checkpoints * checkpoint_cost_s
        return float(steps) * step + fixed
    if checkpoint_cost_s is None:
        checkpoint_cost_s = _num(row.get("checkpoint_s"), 0.0)
    return float(steps) * step + launch + checkpoints * checkpoint_cost_s


def fixed_costs(step_time_s: Optional[float], trial_s: float, timed_steps: int,
                first_step_s: Optional[float], warmup_steps: int) -> float:
    """`launch_s` from one trial: wall time minus the steady steps it ran (warm-up + timed).

    A trial takes S + (warmup - 1 + timed) x t + D (S: launch to first step done, D: teardown); a
    run of N steps takes S + (N - 1) x t + checkpoint + D = N x t + launch_s + checkpoint, so
    launch_s = trial wall - (warmup + timed) x t = S - t + D. Never below the technique's own
    S - t (trials that run in-process report S without spending it here).
    """
    if step_time_s is None:
        return 0.0
    from_wall = trial_s - (warmup_steps + timed_steps) * step_time_s
    reported = (first_step_s - step_time_s) if first_step_s is not None else 0.0
    return round(max(from_wall, reported, 0.0), 4)


def checkpoint_cost_s(job: Any, gpu_type: Optional[str] = None) -> float:
    """Seconds to write one technique-neutral checkpoint of `job` (weights + optimizer state):
    the fixed cost plus its parameter bytes over the write bandwidth (the fixed cost alone for user
    model factories, whose size is unknown without building them)."""
    try:
        from saturn.zoo import param_count

        params = param_count(job.model)
    except Exception:  # noqa: BLE001 - an estimate must never fail the profile
        params = None
    default = CPU_CHECKPOINT_FIXED_S if str(gpu_type).lower() == "cpu" else DEFAULT_CHECKPOINT_FIXED_S
    from saturn import env

    fixed = env.checkpoint_fixed_s()
    fixed = default if fixed is None else fixed
    if not params:
        return fixed
    gbps = env.checkpoint_gbps() or DEFAULT_CHECKPOINT_GBPS
    return round(fixed + params * CHECKPOINT_BYTES_PER_PARAM / (gbps * 1e9), 3)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Every profiler column present, in order (extra columns kept after them), keys typed."""
    df = df.copy()
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    df = df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]]
    if len(df):
        from saturn.profiler.search import canonical_knobs

        df["knobs"] = df["knobs"].map(canonical_knobs)
        df["gpus"] = df["gpus"].astype(int)
        df["signature"] = df["signature"].astype(str)
        df["technique"] = df["technique"].astype(str)
        df["gpu_memory_gb"] = df["gpu_memory_gb"].astype(float).round(1)
        df["torch_version"] = df["torch_version"].astype(str)
        df["reason"] = df["reason"].fillna("").astype(str)
        missing = df["status"].isna()
        if missing.any():  # tables from elsewhere may only say feasible or not
            df.loc[missing, "status"] = df.loc[missing, "feasible"].map(
                lambda ok: "ok" if ok else "failed")
        df["feasible"] = df["feasible"].map(
            lambda v: str(v).strip().lower() in ("true", "1", "yes") if isinstance(v, str) else bool(v))
    return df


class ProfileStore:
    """The profiler's view of the profile store: `load()` the table, `upsert(rows)` durably.

    A thin adapter over `saturn.profiles.store`, the one implementation: it holds an inter-process
    file lock around read-merge-replace (so concurrent profile runs lose no row), keys rows by the
    full profiler key (signature, technique, knobs, GPUs and every hardware column), writes to a
    temp file + fsync + rename (readers never see half a table) and keeps the file's permissions.
    """

    def __init__(self, store_dir: Union[str, os.PathLike, None] = None):
        from saturn.profiles import store

        self._store = store
        self.dir = Path(store_dir) if store_dir is not None else Path(store.default_dir())
        self._seeds = store.uses_seeds(store_dir)  # the default store reads the shipped seed rows too

    @property
    def path(self) -> Path:
        """The file new rows go to (other tables under the directory are read, never written)."""
        return Path(self._store.store_path(self.dir))

    def load(self) -> pd.DataFrame:
        return normalize(self._store.load_store(self.dir, seeds=self._seeds))

    def upsert(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Insert rows, replacing stored rows with the same key; one locked, atomic file replace."""
        rows = [{"source": "profiler", **dict(r)} for r in rows]
        if rows:
            self._store.upsert_rows(normalize(pd.DataFrame(rows)).to_dict("records"), self.dir)
