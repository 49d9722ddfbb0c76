"""The profile store: every profiled trial, as one pandas table kept in CSV/parquet files.

Why a plain directory of tables: profiles are small (a row per trial), users ship them between
machines (plan on a laptop for a cluster measured elsewhere), and diffs stay readable. The store is
a user directory: `$SATURN_PROFILES`, else `$XDG_CACHE_HOME/saturn/profiles` (else
`~/.cache/saturn/profiles`), or an explicit path; every `*.csv` and `*.parquet` under it is loaded
(so a sample table and measured tables can sit side by side). It is never the installed package
nor the repository's tracked `profiles/`: those shipped tables are *seed rows*, read under the
user's default store (`$SATURN_PROFILES` included; not under an explicit path, which is the whole
store; `$SATURN_SEED_PROFILES` names another seed directory, or "none") and never written
-- a writer pointed at them is refused, so a checkout's tracked files never change under a run.

Rows are keyed by the job's *profile signature* (jobs differing only in learning rate share one),
not by job name; `lookup` turns them into the per-job table the planner takes. Pure pandas: the
planner side must never import torch.

Many writers: `upsert_rows` is the one writer of the store (the profiler's `ProfileStore` uses it).
It holds an inter-process file lock (`filelock`, a `.profiles.csv.lock` beside the table) around
read -> merge -> write-temp -> fsync -> rename, so concurrent `saturn profile` runs never lose a
row, and the rewritten file keeps the original's permissions. Every table is validated on read
(types, finite, non-negative) and a bad value is reported with its file, row and column.
"""

from __future__ import annotations

import math
import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import pandas as pd
from filelock import FileLock

from saturn.errors import MissingProfilesError, SaturnError
from saturn.parse import canonical_knobs as _canon_knobs
from saturn.profiles.checks import ProfileTableError, TableCheck, validate_table

COLUMNS = ("signature", "technique", "knobs", "gpus", "step_time_s", "peak_mem_gb", "startup_s",
           "feasible", "reason", "gpu_type", "gpu_memory_gb", "torch_version", "source", "measured_at",
           "inputs_hash")
# The profiler's full key: the same trial on another GPU model, memory size, interconnect or torch
# version is a different measurement, never an overwrite.
# A failed trial's row also carries `inputs_hash` (saturn.spec.signature.inputs_hash: what the failure
# depended on); it is part of the key, so failures of different inputs never overwrite each other.
KEY = ("signature", "technique", "knobs", "gpus", "gpu_type", "gpu_memory_gb", "interconnect", "torch_version",
       "inputs_hash")
LOCK_TIMEOUT_S = 120.0
STORE_FILE = "profiles.csv"  # where write_store puts the table (other files are read-only inputs)
ENV = "SATURN_PROFILES"
SEED_ENV = "SATURN_SEED_PROFILES"
REPO_PROFILES = Path(__file__).resolve().parents[2] / "profiles"  # a checkout's shipped tables

PathLike = Union[str, os.PathLike]


def default_dir() -> Path:
    """Where measurements go and are read from: $SATURN_PROFILES, else
    $XDG_CACHE_HOME/saturn/profiles, else ~/.cache/saturn/profiles (a user directory, so that an
    installed package or a checkout is never written by a run)."""
    from saturn.env import profiles_dir

    return profiles_dir() or _user_default()


def seed_dir() -> Optional[Path]:
    """The read-only seed tables read under the user's default store ($SATURN_PROFILES included;
    not under an explicit directory, which is the whole store): $SATURN_SEED_PROFILES ("" or "none": no
    seeds), else the repository's profiles/ when Saturn runs from a checkout."""
    from saturn.env import seed_profiles

    given, path = seed_profiles()
    if given:
        return path
    return REPO_PROFILES if REPO_PROFILES.is_dir() else None


def uses_seeds(directory: Optional[PathLike] = None) -> bool:
    """Whether the store `directory` (None: the default) reads the seed rows: the default store
    does, $SATURN_PROFILES included (a user who moves the store keeps the rows measured on real
    hardware that ship with Saturn; $SATURN_SEED_PROFILES=none turns them off); an explicit
    directory (`--store`, `store_dir=`) is the whole store."""
    return directory is None


def is_seed_dir(directory: PathLike) -> bool:
    """`directory` holds read-only seed rows (the checkout's profiles/ or $SATURN_SEED_PROFILES):
    Saturn writes nothing there, neither profile rows nor its machine rates."""
    d = Path(directory).resolve()
    seeds = seed_dir()
    return d == REPO_PROFILES.resolve() or (seeds is not None and d == seeds.resolve())


def check_writable_store(directory: Optional[PathLike] = None) -> Path:
    """The store directory to write, refused (SaturnError) when it is a seed directory."""
    d = Path(directory) if directory else default_dir()
    if is_seed_dir(d):
        raise SaturnError(f"profile store {d} holds read-only seed rows (shipped with Saturn); measurements "
                          f"go to a user directory: set ${ENV} or pass another store directory "
                          f"(default {_user_default()})")
    return d


def _user_default() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "saturn" / "profiles"


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
        df["inputs_hash"] = df["inputs_hash"].map(lambda v: v if isinstance(v, str) else "")
        df["technique"] = df["technique"].astype(str)
        df["feasible"] = df["feasible"].map(
            lambda v: str(v).strip().lower() in ("true", "1", "yes") if isinstance(v, str) else bool(v) and v == v)
        for c in ("step_time_s", "startup_s", "peak_mem_gb"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]]


def read_table(path: PathLike, check: Optional[TableCheck] = None) -> pd.DataFrame:
    """One profile file (CSV or parquet), as given by `saturn plan --profiles`; `check` (see
    `cluster_check`) runs after the file's own validation, with its path and first data line."""
    path = Path(path)
    if not path.exists():
        raise SaturnError(f"profile file {path} does not exist")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
            validate_table(df, path, first_line=None)
            if check is not None:
                check(df, path, None)
            return df
    except ProfileTableError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise ProfileTableError(f"cannot read profile file {path}: {exc}") from exc
    try:
        with open(path) as f:  # leading "# ..." lines label sample tables; knobs may contain '#'
            skip = 0
            for line in f:
                if not line.startswith("#"):
                    break
                skip += 1
        df = pd.read_csv(path, skiprows=skip, dtype={"signature": str, "knobs": str, "torch_version": str,
                                                     "inputs_hash": str})
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise ProfileTableError(f"cannot read profile file {path}: {exc}") from exc
    validate_table(df, path, first_line=skip + 2)
    if check is not None:
        check(df, path, skip + 2)
    return df


def _table_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".csv", ".parquet") and not p.name.startswith("."))


def load_store(directory: Optional[PathLike] = None, check: Optional[TableCheck] = None, *,
               seeds: Optional[bool] = None) -> pd.DataFrame:
    """Every *.csv / *.parquet under the store directory (or one file), concatenated (each file
    validated, and checked by `check` when given). `seeds` (default: when no directory is given,
    and no $SATURN_PROFILES: the user's default store) puts the seed rows (`seed_dir()`) first:
    read, never written."""
    root = Path(directory or default_dir())
    files = _table_files(root)
    seed = seed_dir() if (uses_seeds(directory) if seeds is None else seeds) else None
    if seed is not None and seed.resolve() != root.resolve():
        files = _table_files(seed) + files
    frames = [read_table(p, check) for p in files]
    frames = [f for f in frames if len(f)]
    if not frames:
        return _normalize(pd.DataFrame(columns=list(COLUMNS)))
    return _normalize(pd.concat(frames, ignore_index=True))


def store_lock(directory: Optional[PathLike] = None) -> FileLock:
    """The inter-process lock every writer of <dir>/profiles.csv holds (a file beside it); a seed
    directory is refused here, before anything is written."""
    path = store_path(check_writable_store(directory))
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(f".{path.name}.lock")), timeout=LOCK_TIMEOUT_S)


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _replace_file(df: pd.DataFrame, path: Path) -> None:
    """Temp file in the same directory, fsync, chmod to the original's mode, rename, fsync the dir."""
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else _new_file_mode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            df.to_csv(f, index=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass


def write_store(df: pd.DataFrame, directory: Optional[PathLike] = None) -> Path:
    """Atomically replace <dir>/profiles.csv with `df`, under the store lock."""
    path = store_path(directory)
    with store_lock(directory):
        _replace_file(_normalize(df), path)
    return path


def _key_strings(df: pd.DataFrame) -> list[tuple]:
    """The KEY of each row as comparable text (memory to 0.1 GB, missing -> "")."""
    def cell(col: str, v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if col == "gpu_memory_gb":
            try:
                return f"{float(v):.1f}"
            except (TypeError, ValueError):
                return str(v)
        if col == "gpus":
            return str(int(float(v)))
        return str(v)
    return [tuple(cell(c, r.get(c)) for c in KEY) for r in df.to_dict("records")]


def upsert_rows(rows: Iterable[Mapping[str, Any]], directory: Optional[PathLike] = None) -> pd.DataFrame:
    """Add rows to <dir>/profiles.csv, replacing stored rows with the same (full) key; returns the
    file's table. Holds the store lock from read to rename, so concurrent writers lose nothing."""
    host = socket.gethostname()
    new = _normalize(pd.DataFrame([{"host": host, **dict(r)} for r in rows]))
    path = store_path(directory)
    with store_lock(directory):
        old = _normalize(read_table(path)) if path.exists() else _normalize(pd.DataFrame(columns=list(COLUMNS)))
        keys = set(_key_strings(new))
        keep = old[[k not in keys for k in _key_strings(old)]] if len(old) else old
        table = _normalize(pd.concat([keep, new], ignore_index=True)) if len(keep) else new
        _replace_file(table, path)
    return table


def _node_types(cluster: Any) -> set[str]:
    nodes = cluster.resolved().nodes if hasattr(cluster, "resolved") else getattr(cluster, "nodes", cluster)
    return {str(getattr(n, "gpu_type", "") or "").lower() for n in nodes}


def _max_gpus(cluster: Any) -> int:
    nodes = cluster.resolved().nodes if hasattr(cluster, "resolved") else getattr(cluster, "nodes", cluster)
    return max(int(n.gpus) for n in nodes)


def lookup(jobs: Iterable[Any], cluster: Any,
           table: Optional[pd.DataFrame] = None) -> tuple[pd.DataFrame, list[tuple[str, int]]]:
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
        if "status" in g.columns and (g["status"].astype(str).str.lower() != "ok").any():
            from saturn.spec.signature import inputs_hash

            h = inputs_hash(job)  # stored failures of other inputs are stale: the option is missing again
            g = g[[failure_applies(r, h) for r in g.to_dict("records")]]
            have = set(g["gpus"].astype(int))
            missing += [(job.name, k) for k in allowed if k <= cap and k not in have and (job.name, k) not in missing]
            if not len(g):
                continue
        g = _prefer_measured(_memory_failures_win(g))
        g = g.sort_values(["feasible", "step_time_s"], ascending=[False, True])
        g = g.drop_duplicates(subset=["technique", "gpus", "gpu_type"], keep="first").copy()
        g.insert(0, "job", job.name)
        out.append(g)
    df = pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["job", *COLUMNS])
    return df, missing


def failure_applies(row: Mapping[str, Any], job_inputs: str) -> bool:
    """Whether a stored row still speaks for a job whose inputs hash is `job_inputs`: measurements
    and static infeasibility always do; a failed / timed-out trial only while the inputs it ran
    with (factory module contents, spec structure) are unchanged -- else the option is tried
    again. An OOM row without a recorded hash is kept only from a hand-made table: Saturn's own
    measurements (profiler, `run:`) before #31 called failures OOM from words in a log and wrote
    no hash, so they are measured again."""
    status = str(row.get("status") or "").strip().lower()
    if status in ("", "ok", "infeasible", "nan", "none"):
        return True
    stored = row.get("inputs_hash")
    stored = stored if isinstance(stored, str) else ""
    if not stored:
        src = str(row.get("source") or "").strip().lower()
        # a host_oom row (profiles.host_memory.host_oom_row) holds for its host size whatever the
        # inputs; a hashless oom row from the profiler or a run predates inputs_hash: not trusted
        return status == "host_oom" or (status == "oom" and not (src == "profiler" or src.startswith("run:")))
    return stored == job_inputs


def _memory_failures_win(g: pd.DataFrame) -> pd.DataFrame:
    """An option that ran out of memory (device "oom", or "host_oom": killed by the kernel) after
    it was measured fine is no longer plannable: its earlier feasible row of the same (technique,
    knobs, GPUs, GPU type) is dropped, so an unchanged option is never retried (#33). Other knobs
    of the technique (e.g. leaner optimizer state) stay. Only failure rows that apply to the job's
    inputs reach here (`failure_applies`)."""
    if "status" not in g.columns or not len(g):
        return g
    status = g["status"].astype(str).str.lower()
    mem = g[status.isin(["oom", "host_oom"])]
    if not len(mem):
        return g
    when = pd.to_datetime(g.get("measured_at"), utc=True, errors="coerce", format="mixed") \
        if "measured_at" in g.columns else pd.Series(pd.NaT, index=g.index)
    key = g[["technique", "knobs", "gpus", "gpu_type"]].astype(str).apply(tuple, axis=1)
    drop = pd.Series(False, index=g.index)
    for i in mem.index:
        t = when.get(i)
        older = when.isna() | (when <= t) if pd.notna(t) else pd.Series(True, index=g.index)
        drop |= (key == key[i]) & (status == "ok") & older
    return g[~drop]


def _prefer_measured(g: pd.DataFrame) -> pd.DataFrame:
    """A measurement beats an extrapolated sample row for the same (technique, GPUs, GPU type),
    whichever is faster: samples only fill the gaps that nothing has measured yet."""
    sample = g["source"].astype(str).str.startswith("sample")
    key = ["technique", "gpus", "gpu_type"]
    measured_keys = set(map(tuple, g.loc[~sample, key].astype(str).values.tolist()))
    shadowed = sample & g[key].astype(str).apply(tuple, axis=1).isin(measured_keys)
    return g[~shadowed]


def profiles_for(workload: Any, table: Optional[pd.DataFrame] = None, *,
                 source: str = "the profile store") -> pd.DataFrame:
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
