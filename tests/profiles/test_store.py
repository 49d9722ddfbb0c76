"""The profile store: load CSV/parquet, atomic writes, upsert, lookup by signature + GPU type."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from saturn.errors import MissingProfilesError
from saturn.profiles import store


def row(sig, tech, g, step, feasible=True, gpu_type="H200", knobs="{}"):
    return dict(signature=sig, technique=tech, knobs=knobs, gpus=g, step_time_s=step, feasible=feasible,
                gpu_type=gpu_type, gpu_memory_gb=141.0, source="test")


def test_load_csv_with_comment_header_and_parquet(tmp_path):
    (tmp_path / "a.csv").write_text("# sample, not measured\n"
                                    + pd.DataFrame([row("s1", "ddp", 1, 0.1)]).to_csv(index=False))
    pd.DataFrame([row("s2", "fsdp", 2, 0.2, knobs='{"x": 1}')]).to_parquet(tmp_path / "b.parquet")
    df = store.load_store(tmp_path)
    assert sorted(df["signature"]) == ["s1", "s2"]
    assert list(df.columns[: len(store.COLUMNS)]) == list(store.COLUMNS)
    assert df["feasible"].tolist() == [True, True]


def test_env_var_and_default_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SATURN_PROFILES", str(tmp_path))
    assert store.default_dir() == tmp_path
    monkeypatch.delenv("SATURN_PROFILES")
    assert store.default_dir().name == "profiles"


def test_write_is_atomic_and_upsert_replaces_same_key(tmp_path):
    store.upsert_rows([row("s1", "ddp", 1, 0.1), row("s1", "ddp", 2, 0.07)], tmp_path)
    table = store.upsert_rows([row("s1", "ddp", 1, 0.09)], tmp_path)
    assert len(table) == 2
    assert table.set_index("gpus").loc[1, "step_time_s"] == pytest.approx(0.09)
    assert [p.name for p in tmp_path.iterdir() if p.name != ".profiles.csv.lock"] == ["profiles.csv"]  # no temp files


def _workload(jobs, gpu_type="h200", gpus=4):
    nodes = [SimpleNamespace(name="n0", gpus=gpus, gpu_type=gpu_type, gpu_memory_gb=141.0)]
    return SimpleNamespace(jobs=jobs, cluster=SimpleNamespace(nodes=nodes), path="w.yaml")


def test_lookup_matches_signature_and_gpu_type_and_keeps_fastest_knobs():
    table = pd.DataFrame([
        row("s1", "fsdp", 2, 0.3, knobs='{"ckpt": true}'), row("s1", "fsdp", 2, 0.2, knobs='{"ckpt": false}'),
        row("s1", "ddp", 1, 0.1), row("s1", "ddp", 1, 0.01, gpu_type="A100"),
    ])
    jobs = [SimpleNamespace(name="a", signature="s1", gpus=[1, 2, 4]),
            SimpleNamespace(name="b", signature="s1", gpus=None)]
    df, missing = store.lookup(jobs, _workload(jobs).cluster, table)
    assert set(df["job"]) == {"a", "b"}
    a = df[df["job"] == "a"].set_index(["technique", "gpus"])
    assert a.loc[("fsdp", 2), "knobs"] == '{"ckpt":false}'
    assert a.loc[("ddp", 1), "step_time_s"] == pytest.approx(0.1)  # A100 row ignored
    assert ("a", 4) in missing and ("b", 4) in missing


def test_profiles_for_names_missing_jobs_and_the_fix():
    jobs = [SimpleNamespace(name="a", signature="s1", gpus=None),
            SimpleNamespace(name="z", signature="nope", gpus=None)]
    with pytest.raises(MissingProfilesError, match=r"job\(s\) z.*saturn profile w.yaml"):
        store.profiles_for(_workload(jobs), pd.DataFrame([row("s1", "ddp", 1, 0.1)]))


def test_store_table_plans():
    from saturn.planner import plan

    table = pd.DataFrame([row("s1", "ddp", 1, 0.1), row("s1", "ddp", 2, 0.06)])
    jobs = [SimpleNamespace(name="a", signature="s1", gpus=None, steps=100, techniques=None)]
    wl = _workload(jobs)
    p = plan(jobs, wl.cluster, store.profiles_for(wl, table), time_limit_s=1)
    assert p.makespan_s == pytest.approx(6.0)
