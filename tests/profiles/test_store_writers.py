"""#15: one profile store, safe for many writers; tables validated on read (file, row, column)."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat

import pandas as pd
import pytest

from saturn.profiler.table import ProfileStore
from saturn.profiles import checks, store


def _row(writer: int, i: int, **kw) -> dict:
    r = dict(signature=f"sig{writer}", technique="ddp", knobs="{}", gpus=1 + i, step_time_s=0.1 + i / 1000,
             feasible=True, gpu_type="H200", gpu_memory_gb=141.0, interconnect="nvlink", torch_version="2.11.0",
             source="profiler", status="ok")
    r.update(kw)
    return r


def _writer(directory: str, writer: int, n: int, via_profiler: bool) -> None:
    for i in range(n):
        if via_profiler:
            ProfileStore(directory).upsert([_row(writer, i)])
        else:
            store.upsert_rows([_row(writer, i)], directory)


@pytest.mark.parametrize("writers,n", [(2, 20), (8, 8)])
def test_concurrent_writers_lose_no_row(tmp_path, writers, n):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, n, w % 2 == 0)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    df = store.load_store(tmp_path)
    assert len(df) == writers * n
    assert set(zip(df["signature"], df["gpus"])) == {(f"sig{w}", 1 + i) for w in range(writers) for i in range(n)}


def test_full_profiler_key_keeps_other_hardware(tmp_path):
    store.upsert_rows([_row(0, 0)], tmp_path)
    store.upsert_rows([_row(0, 0, torch_version="2.10.0"), _row(0, 0, interconnect="pcie"),
                       _row(0, 0, gpu_memory_gb=80.0)], tmp_path)
    assert len(store.load_store(tmp_path)) == 4
    store.upsert_rows([_row(0, 0, step_time_s=0.5)], tmp_path)  # same full key: replaced
    df = store.load_store(tmp_path)
    assert len(df) == 4 and 0.5 in set(df["step_time_s"])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o664])
def test_rewrite_keeps_file_permissions(tmp_path, mode):
    store.upsert_rows([_row(0, 0)], tmp_path)
    path = store.store_path(tmp_path)
    os.chmod(path, mode)
    ProfileStore(tmp_path).upsert([_row(0, 1)])
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_new_store_file_is_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        store.upsert_rows([_row(0, 0)], tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.store_path(tmp_path).stat().st_mode) == 0o644


def _csv(tmp_path, rows, name="t.csv"):
    p = tmp_path / name
    p.write_text("# a comment line\n" + pd.DataFrame(rows).to_csv(index=False))
    return p


@pytest.mark.parametrize("col,value,needle", [
    ("step_time_s", float("nan"), "empty or NaN"),
    ("step_time_s", -0.1, "must be"),
    ("step_time_s", float("inf"), "must be"),
    ("step_time_s", "fast", "is not a number"),
    ("peak_mem_gb", -3, "must be"),
    ("knobs", "{not json", "is not a JSON object"),
    ("gpus", "two", "positive whole GPU count"),
    ("gpus", 0, "positive whole GPU count"),
])
def test_invalid_table_names_file_row_and_column(tmp_path, col, value, needle):
    rows = [_row(0, 0), _row(0, 1, **{col: value}), _row(0, 2)]
    p = _csv(tmp_path, rows)
    with pytest.raises(checks.ProfileTableError) as e:
        store.read_table(p)
    msg = str(e.value)
    assert str(p) in msg and "line 4" in msg and "data row 2" in msg and repr(col) in msg and needle in msg


def test_infeasible_rows_may_lack_step_time(tmp_path):
    p = _csv(tmp_path, [_row(0, 0), _row(0, 1, step_time_s=None, feasible=False, status="oom")])
    assert len(store.read_table(p)) == 2


def test_store_directory_with_bad_table_is_an_error_not_a_skip(tmp_path):
    _csv(tmp_path, [_row(0, 0, step_time_s=-1)], name="bad.csv")
    with pytest.raises(checks.ProfileTableError, match="bad.csv"):
        store.load_store(tmp_path)


def test_repository_tables_are_valid():
    assert len(store.load_store()) > 0
