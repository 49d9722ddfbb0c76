"""#24: the default profile store is a user directory, never the installed package or the
repository's tracked profiles/, whose shipped rows are read-only seed rows (read, never written)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from saturn.errors import SaturnError
from saturn.profiles import store
from tests.helpers.paths import ROOT

ROW = {"signature": "abc123abc123", "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.1,
       "startup_s": 1.0, "feasible": True, "gpu_type": "cpu", "gpu_memory_gb": 4.0, "source": "profiler"}


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.csv"))}


def test_default_store_is_a_user_directory_outside_the_repository(tmp_path, monkeypatch):
    monkeypatch.delenv(store.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.default_dir() == tmp_path / "xdg" / "saturn" / "profiles"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    d = store.default_dir()
    assert d == tmp_path / "home" / ".cache" / "saturn" / "profiles"
    assert ROOT not in d.resolve().parents and Path(store.__file__).parents[1] not in d.resolve().parents
    monkeypatch.setenv(store.ENV, str(tmp_path / "mine"))
    assert store.default_dir() == tmp_path / "mine"


def test_seed_rows_are_read_under_the_default_store_and_never_written(tmp_path, monkeypatch):
    seeds = ROOT / "profiles"
    before = _digest(seeds)
    assert before, "the repository ships seed tables in profiles/"
    monkeypatch.delenv(store.ENV, raising=False)
    monkeypatch.delenv(store.SEED_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    shipped = store.load_store()
    assert len(shipped) > 0 and shipped["source"].astype(str).str.startswith("sample").any()
    store.upsert_rows([ROW])  # a measurement goes to the user directory ...
    assert (tmp_path / "xdg" / "saturn" / "profiles" / store.STORE_FILE).exists()
    both = store.load_store()
    assert len(both) == len(shipped) + 1 and (both["signature"] == ROW["signature"]).any()
    for where in (seeds, seeds.resolve()):  # ... never to the seed tables, however they are named
        with pytest.raises(SaturnError, match="read-only seed rows"):
            store.upsert_rows([ROW], where)
    monkeypatch.setenv(store.ENV, str(seeds))
    with pytest.raises(SaturnError, match="read-only seed rows"):
        store.upsert_rows([ROW])
    assert _digest(seeds) == before
    # $SATURN_PROFILES keeps the seed rows (#34: the shipped measurements must not drop out);
    # an explicit directory is the whole store
    monkeypatch.setenv(store.ENV, str(tmp_path / "mine"))
    assert len(store.load_store()) == len(shipped) and len(store.load_store(tmp_path / "mine")) == 0
    monkeypatch.delenv(store.ENV)
    monkeypatch.setenv(store.SEED_ENV, "none")
    assert len(store.load_store()) == 1  # only the user's measurement
