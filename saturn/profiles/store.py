"""The profile store: every profiled trial, as one pandas table kept in CSV/parquet files.

Why a plain directory of tables: profiles are small (a row per trial), users ship them between
machines (plan on a laptop for a cluster measured elsewhere), and diffs stay readable. The store is
`profiles/` of the repository by default, `$SATURN_PROFILES`, or an explicit path; every `*.csv`
and `*.parquet` under it is loaded (so a sample table and measured tables can sit side by side).

Rows are keyed by the job's *profile signature* (jobs differing only in learning rate share one),
not by job name; `lookup` turns them into the per-job table the planner takes. Pure pandas: the
planner side must never import torch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import pandas as pd

from saturn.errors import MissingProfilesError, SaturnError
from saturn.parse import canonical_knobs as _canon_knobs

COLUMNS = ("signature", "technique", "knobs", "gpus", "step_time_s", "peak_mem_gb", "startup_s",
           "feasible", "reason", "gpu_type", "gpu_memory_gb", "torch_version", "source", "measured_at")
KEY = ("signature", "technique", "knobs", "gpus", "gpu_type")
STORE_FILE = "profiles.csv"  # where write_store puts the table (other files are read-only inputs)
ENV = "SATURN_PROFILES"

PathLike = Union[str, os.PathLike]


def default_dir() -> Path:
    """$SATURN_PROFILES, else the repository's profiles/ (found relative to this package)."""
    env = os.environ.get(ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "profiles"


def store_path(directory: Optional[PathLike] = None) -> Path:
    return Path(directory or default_dir()) / STORE_FILE


def _normalize(df: pd.DataFrame) -> pd.DataFrame:
    """All store columns present, keys typed, knobs canonical JSON, feasible boolean."""
    df = df.copy()
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    if len(df):
        df["knobs"] = df["knobs"].map(_canon_knobs)
        df["gpus"] = df["gpus"].astype(int)
        df["signature"] = df["signature"].astype(str)
        df["technique"] = df["technique"].astype(str)
        df["feasible"] = df["feasible"].map(
            lambda v: str(v).strip().lower() in ("true", "1", "yes") if isinstance(v, str) else bool(v) and v == v)
        for c in ("step_time_s", "startup_s", "peak_mem_gb"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]]


def read_table(path: PathLike) -> pd.DataFrame:
    """One profile file (CSV or parquet), as given by `saturn plan --profiles`."""
    path = Path(path)
    if not path.exists():
        raise SaturnError(f"profile file {path} does not exist")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        with open(path) as f:  # leading "# ..." lines label sample tables; knobs may contain '#'
            skip = 0
            for line in f:
                if not line.startswith("#"):
                    break
                skip += 1
        return pd.read_csv(path, skiprows=skip, dtype={"signature": str, "knobs": str, "torch_version": str})
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise SaturnError(f"cannot read profile file {path}: {exc}") from exc


def load_store(directory: Optional[PathLike] = None) -> pd.DataFrame:
    """Every *.csv / *.parquet under the store directory (or one file), concatenated."""
    root = Path(directory or default_dir())
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.suffix.lower() in (".csv", ".parquet") and not p.name.startswith("."))
    frames = [read_table(p) for p in files]
    frames = [f for f in frames if len(f)]
    if not frames:
        return _normalize(pd.DataFrame(columns=list(COLUMNS)))
    return _normalize(pd.concat(frames, ignore_index=True))


def write_store(df: pd.DataFrame, directory: Optional[PathLike] = None) -> Path:
    """Atomically replace <dir>/profiles.csv with `df` (temp file in the same dir + os.replace)."""
    path = store_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            _normalize(df).to_csv(f, index=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def upsert_rows(rows: Iterable[Mapping[str, Any]], directory: Optional[PathLike] = None) -> pd.DataFrame:
    """Add rows to <dir>/profiles.csv, replacing stored rows with the same key; returns the file's table."""
    new = _normalize(pd.DataFrame(list(rows)))
    path = store_path(directory)
    old = _normalize(read_table(path)) if path.exists() else _normalize(pd.DataFrame(columns=list(COLUMNS)))
    keys = set(map(tuple, new[list(KEY)].astype(str).values.tolist()))
    keep = old[[tuple(k) not in keys for k in old[list(KEY)].astype(str).values.tolist()]]
    table = pd.concat([keep, new], ignore_index=True) if len(keep) else new
    write_store(table, directory)
    return table


def _node_types(cluster: Any) -> set[str]:
    nodes = cluster.resolved().nodes if hasattr(cluster, "resolved") else getattr(cluster, "nodes", cluster)
    return {str(getattr(n, "gpu_type", "") or "").lower() for n in nodes}


def _max_gpus(cluster: Any) -> int:
    nodes = cluster.resolved().nodes if hasattr(cluster, "resolved") else getattr(cluster, "nodes", cluster)
    return max(int(n.gpus) for n in nodes)


def lookup(jobs: Iterable[Any], cluster: Any, table: Optional[pd.DataFrame] = None) -> tuple[pd.DataFrame, list[tuple[str, int]]]:
    """Per-job profile rows for the cluster's GPU types, and the missing (job, GPU count) pairs.

    For each job, rows with its `.signature` and a GPU type of the cluster (case-insensitive) are
    copied with a `job` column; among knob variants of one (technique, GPU count, GPU type) only
    the fastest feasible one is kept. "Missing" = an allowed GPU count no row covers at all.
    """
    table = load_store() if table is None else _normalize(table)
    types = _node_types(cluster)
    cap = _max_gpus(cluster)
    rows = table[table["gpu_type"].astype(str).str.lower().isin(types)] if len(table) else table
    by_sig = {s: g for s, g in rows.groupby("signature")} if len(rows) else {}
    out, missing = [], []
    for job in jobs:
        g = by_sig.get(str(job.signature))
        allowed = list(job.gpus) if getattr(job, "gpus", None) else [k for k in (1, 2, 4, 8, 16) if k <= cap]
        have = set() if g is None else set(g["gpus"].astype(int))
        missing += [(job.name, k) for k in allowed if k <= cap and k not in have]
        if g is None:
            continue
        g = _prefer_measured(g)
        g = g.sort_values(["feasible", "step_time_s"], ascending=[False, True])
        g = g.drop_duplicates(subset=["technique", "gpus", "gpu_type"], keep="first").copy()
        g.insert(0, "job", job.name)
        out.append(g)
    df = pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["job", *COLUMNS])
    return df, missing


def _prefer_measured(g: pd.DataFrame) -> pd.DataFrame:
    """A measurement beats an extrapolated sample row for the same (technique, GPUs, GPU type),
    whichever is faster: samples only fill the gaps that nothing has measured yet."""
    sample = g["source"].astype(str).str.startswith("sample")
    key = ["technique", "gpus", "gpu_type"]
    measured_keys = set(map(tuple, g.loc[~sample, key].astype(str).values.tolist()))
    shadowed = sample & g[key].astype(str).apply(tuple, axis=1).isin(measured_keys)
    return g[~shadowed]


def profiles_for(workload: Any, table: Optional[pd.DataFrame] = None, *, source: str = "the profile store") -> pd.DataFrame:
    """`lookup` for a Workload, raising MissingProfilesError when a job has no rows at all."""
    jobs = list(workload.jobs)
    df, missing = lookup(jobs, workload.cluster, table)
    covered = set(df["job"]) if len(df) else set()
    lacking = [j.name for j in jobs if j.name not in covered]
    if lacking:
        types = sorted(t for t in _node_types(workload.cluster) if t)
        pairs = ", ".join(f"{j}×{k}" for j, k in missing if j in lacking)
        path = getattr(workload, "path", None) or "WORKLOAD.yaml"
        raise MissingProfilesError(
            f"{source} has no profiles for job(s) {', '.join(lacking)} on GPU type {'/'.join(types) or '?'} "
            f"(missing job×GPUs: {pairs}). Fill them with `saturn profile {path}` on such a node, "
            "or pass a table with --profiles FILE."
        )
    return df
