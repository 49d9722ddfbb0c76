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

import json
import math
import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Mapping, Optional, Union

import pandas as pd
from filelock import FileLock

from saturn.errors import MissingProfilesError, SaturnError
from saturn.parse import canonical_knobs as _canon_knobs
from saturn.parse import finite_or_none

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
NUMBER_COLUMNS = ("step_time_s", "peak_mem_gb", "startup_s", "launch_s", "worker_start_s", "checkpoint_s",
                  "checkpoint_gb", "first_step_s", "trial_s", "gpu_memory_gb")
# Limits far beyond any real measurement and far below what breaks the planner (a 1e299 s step gave
# a plan with no makespan): a value past one is a damaged or hand-edited row, refused by name.
MAX_STEP_TIME_S = 86_400.0  # one optimizer step: a day
MAX_FIXED_S = 7 * 86_400.0  # start-up, launch, checkpoint, trial: a week
MAX_MEMORY_GB = 100_000.0  # peak or device memory of one GPU: 100 TB
LIMITS = {"step_time_s": MAX_STEP_TIME_S, "peak_mem_gb": MAX_MEMORY_GB, "gpu_memory_gb": MAX_MEMORY_GB}
BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "1.0": True,
             "0.0": False}
STORE_FILE = "profiles.csv"  # where write_store puts the table (other files are read-only inputs)
ENV = "SATURN_PROFILES"
SEED_ENV = "SATURN_SEED_PROFILES"
REPO_PROFILES = Path(__file__).resolve().parents[2] / "profiles"  # a checkout's shipped tables

PathLike = Union[str, os.PathLike]


def default_dir() -> Path:
    """Where measurements go and are read from: $SATURN_PROFILES, else
    $XDG_CACHE_HOME/saturn/profiles, else ~/.cache/saturn/profiles (a user directory, so that an
    installed package or a checkout is never written by a run)."""
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else _user_default()


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


def _is_seed(directory: Path) -> bool:
    d = directory.resolve()
    seeds = seed_dir()
    return d == REPO_PROFILES.resolve() or (seeds is not None and d == seeds.resolve())


def check_writable_store(directory: Optional[PathLike] = None) -> Path:
    """The store directory to write, refused (SaturnError) when it is a seed directory."""
    d = Path(directory) if directory else default_dir()
    if _is_seed(d):
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


class ProfileTableError(SaturnError):
    """A profile table has a value the planner cannot use (names file, row and column)."""


def _where(path: Any, i: int, col: str, first_line: Optional[int]) -> str:
    row = f"line {first_line + i}" if first_line is not None else f"row {i + 1}"
    return f"profile file {path}, {row} (data row {i + 1}), column {col!r}"


def validate_table(df: pd.DataFrame, path: Any = "<table>", *, first_line: Optional[int] = 2) -> None:
    """Refuse a table the planner would misread: missing key columns, non-integer or non-positive
    GPU counts, non-JSON knobs, and number cells that are text, NaN on a feasible row, infinite or
    negative. `first_line` is the file line of data row 1 (CSV), None for parquet."""
    if "signature" not in df.columns and "job" not in df.columns:
        raise ProfileTableError(f"profile file {path} has neither a 'signature' nor a 'job' column "
                                f"(columns: {', '.join(map(str, df.columns))})")
    for col in ("technique", "gpus"):
        if col not in df.columns:
            columns = ", ".join(map(str, df.columns))
            raise ProfileTableError(f"profile file {path} has no column {col!r} (columns: {columns})")
    from saturn.parse import table_records

    # rows as dicts, column by column: DataFrame.iterrows builds a Series per row (a minute for
    # the 150,000 rows of a 10,000-job table)
    for i, r in enumerate(table_records(df)):
        g = r["gpus"]
        try:
            ok = float(g) == int(float(g)) and int(float(g)) >= 1
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ProfileTableError(f"{_where(path, i, 'gpus', first_line)}: {g!r} is not a positive whole GPU count")
        if "knobs" in df.columns:
            k = r["knobs"]
            if isinstance(k, str) and k.strip():
                try:
                    if not isinstance(json.loads(k), dict):
                        raise ValueError("not an object")
                except ValueError:
                    raise ProfileTableError(f"{_where(path, i, 'knobs', first_line)}: {k!r} is not a JSON object "
                                            "like {\"activation_checkpointing\": false}") from None
        fv = r.get("feasible", True)
        if not _boolean_cell(fv):
            raise ProfileTableError(f"{_where(path, i, 'feasible', first_line)}: {fv!r} is not a boolean; write True "
                                    "or False (a row is measured feasible or it is not)")
        if isinstance(fv, str):
            is_feasible = fv.strip().lower() in ("true", "1", "yes")
        else:
            is_feasible = fv is None or fv == fv and bool(fv)
        st = r.get("status")
        if isinstance(st, str) and st.strip() and st.strip().lower() != "ok":
            is_feasible = False
        for col in NUMBER_COLUMNS:
            if col not in df.columns:
                continue
            v = r[col]
            if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
                if col == "step_time_s" and is_feasible:
                    raise ProfileTableError(f"{_where(path, i, col, first_line)}: empty or NaN on a feasible row "
                                            "(mark the row feasible=False or re-profile it)")
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise ProfileTableError(f"{_where(path, i, col, first_line)}: {v!r} is not a number") from None
            if not math.isfinite(f) or f < 0 or (col == "step_time_s" and is_feasible and f == 0):
                need = "a positive finite number of seconds" if col == "step_time_s" else "a finite number >= 0"
                raise ProfileTableError(f"{_where(path, i, col, first_line)}: {v!r} must be {need}")
            limit = LIMITS.get(col, MAX_FIXED_S)
            if f > limit:
                unit = "GB" if col.endswith("_gb") else "s"
                raise ProfileTableError(f"{_where(path, i, col, first_line)}: {v!r} is over the limit of {limit:,.0f} "
                                        f"{unit} for {col}; a damaged or hand-edited row? Fix it or re-profile")
        if is_feasible and "peak_mem_gb" in df.columns and "gpu_memory_gb" in df.columns and not _cpu_row(r):
            peak, dev = finite_or_none(r["peak_mem_gb"]), finite_or_none(r["gpu_memory_gb"])
            if peak is not None and dev is not None and dev > 0 and peak > dev:
                raise ProfileTableError(f"{_where(path, i, 'peak_mem_gb', first_line)}: {peak:g} GB on a feasible row "
                                        f"is above its device's {dev:g} GB (gpu_memory_gb); mark it feasible=False "
                                        "or re-profile")


def _cpu_row(r: Any) -> bool:
    """CPU slots: `peak_mem_gb` is the process's peak RSS and their memory size nominal, so the two
    are not compared."""
    return str(r.get("gpu_type", "")).strip().lower() == "cpu"


def _boolean_cell(v: Any) -> bool:
    """True/False, 1/0, yes/no (any case) or empty: what `feasible` may hold."""
    if v is None or isinstance(v, bool) or (isinstance(v, float) and math.isnan(v)):
        return True
    if isinstance(v, str):
        return not v.strip() or v.strip().lower() in BOOL_TEXT
    try:
        return float(v) in (0.0, 1.0)
    except (TypeError, ValueError):
        return False


TableCheck = Callable[[pd.DataFrame, Any, Optional[int]], None]


def cluster_check(*, techniques: Collection[str], memory_gb: Mapping[str, float], signatures: Collection[str],
                  jobs: Collection[str]) -> TableCheck:
    """A check of each table file against what the plan will use, for `read_table`/`load_store`:
    every row of this workload's jobs (by `job` or `signature`) names a registered technique (or a
    'pkg.module:Class' path), and a feasible row for a GPU type of the cluster needs no more memory
    than that type's device has there (`memory_gb`: GPU type, lower case -> GB; CPU slots, whose
    memory is nominal, are not held to it). The caller passes
    the registry's names, so this module stays free of torch."""
    known = set(techniques)
    sigs, names = set(map(str, signatures)), set(map(str, jobs))

    def check(df: pd.DataFrame, path: Any, first_line: Optional[int]) -> None:
        from saturn.parse import table_records

        for i, r in enumerate(table_records(df)):  # to_dict("records") is slow on 150,000 rows
            mine = str(r.get("job")) in names if "job" in df.columns else str(r.get("signature")) in sigs
            if not mine:
                continue
            t = str(r.get("technique"))
            if t not in known and ":" not in t:
                raise ProfileTableError(f"{_where(path, i, 'technique', first_line)}: unknown technique {t!r}; "
                                        f"registered: {', '.join(sorted(known))} (`saturn techniques` lists them)")
            fv = r.get("feasible", True)
            if isinstance(fv, str):
                feasible = BOOL_TEXT.get(fv.strip().lower(), False)
            else:
                feasible = fv is None or fv == fv and bool(fv)
            dev = memory_gb.get(str(r.get("gpu_type", "")).lower())
            peak = finite_or_none(r.get("peak_mem_gb"))
            if feasible and dev is not None and peak is not None and peak > dev and not _cpu_row(r):
                own = finite_or_none(r.get("gpu_memory_gb"))
                if own is None or own <= dev:  # a row measured on a larger device of the type is not this one's
                    raise ProfileTableError(
                        f"{_where(path, i, 'peak_mem_gb', first_line)}: {peak:g} GB on a feasible row is above the "
                        f"{dev:g} GB of the cluster's {r.get('gpu_type')} devices; mark it feasible=False, "
                        "re-profile, or fix the cluster's gpu_memory_gb")
    return check


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
        g = _prefer_measured(g)
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
    again; an OOM row without a recorded hash (older stores) is kept."""
    status = str(row.get("status") or "").strip().lower()
    if status in ("", "ok", "infeasible", "nan", "none"):
        return True
    stored = row.get("inputs_hash")
    stored = stored if isinstance(stored, str) else ""
    if not stored:
        return status == "oom"
    return stored == job_inputs


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
