"""A sweep's results table (#34): `saturn.results(run_dir)` and `saturn results RUN`.

On a simulated run of tiny-cpu (4 jobs: two models x two learning rates, seconds) and on a hand-
written metrics file; the real CPU run is checked in tests/test_user_run.py.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

import saturn
from saturn.analysis import hyperparameters, sort_results
from tests.helpers.cli import saturn_cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "examples" / "tiny-cpu.yaml"


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("res") / "run"
    wl = saturn.load_workload(TINY)
    saturn.run(wl, simulate=True, run_dir=d, profiles=saturn.synthetic_profiles(wl.jobs, step_time_s=0.05))
    return d


def test_hyperparameters_are_the_fields_that_differ():
    specs = {"a": {"name": "a", "model": {"name": "m"}, "optimizer": {"lr": 1e-3, "name": "adamw"}, "seq_len": 8},
             "b": {"name": "b", "model": {"name": "m"}, "optimizer": {"lr": 3e-3, "name": "adamw"}, "seq_len": 8}}
    assert hyperparameters(specs) == {"a": {"optimizer.lr": 1e-3}, "b": {"optimizer.lr": 3e-3}}


def test_results_columns_best_and_sort(sim_run):
    df = saturn.results(sim_run)
    assert isinstance(df, pd.DataFrame) and len(df) == 4
    assert df.attrs["hyperparameters"] == ["data.name", "model.name", "optimizer.lr", "seq_len"]
    for col in ("job", "optimizer.lr", "status", "steps", "final_loss", "best_loss", "wall_s", "gpu_s",
                "technique", "gpus", "checkpoint", "best"):
        assert col in df.columns, col
    assert set(df["status"]) == {"completed"} and set(df["steps"]) == {20}
    assert sorted(df["optimizer.lr"]) == [1e-3, 1e-3, 3e-3, 3e-3]
    assert (df["best_loss"] <= df["final_loss"] + 1e-12).all()
    assert (df["gpu_s"] >= df["wall_s"] - 1e-9).all() and (df["wall_s"] > 0).all()
    best = df[df["best"]]
    assert len(best) == 1 and best["final_loss"].iloc[0] == df["final_loss"].min()
    assert df.attrs["best"] == best["job"].iloc[0]
    s = sort_results(df, "loss")
    assert list(s["final_loss"]) == sorted(df["final_loss"])
    s = sort_results(df, "-optimizer.lr")
    assert list(s["optimizer.lr"]) == [3e-3, 3e-3, 1e-3, 1e-3]


def test_results_cli_csv_json_and_bad_sort(sim_run, tmp_path, capsys):
    csv, js = tmp_path / "r.csv", tmp_path / "r.json"
    code, out, _ = saturn_cli(["results", sim_run, "--sort", "loss", "--csv", csv], capsys)
    assert code == 0, out
    assert "* " in out and "best:" in out and "lr" in out
    table = pd.read_csv(csv)
    assert list(table["final_loss"]) == sorted(table["final_loss"]) and table["best"].iloc[0]
    old = os.umask(0o022)
    try:
        code, out, _ = saturn_cli(["results", sim_run, "--json", js], capsys)
    finally:
        os.umask(old)
    assert code == 0, out
    rows = json.loads(js.read_text())
    assert len(rows) == 4 and {"job", "optimizer.lr", "final_loss", "best"} <= set(rows[0])
    assert stat.S_IMODE(js.stat().st_mode) == 0o644  # the user's umask, not mkstemp's 0600
    code, out, _ = saturn_cli(["results", sim_run, "--sort", "nope"], capsys)
    assert code == 2 and "--sort nope" in out and "final_loss" in out
    code, out, _ = saturn_cli(["results", tmp_path / "missing"], capsys)
    assert code == 2 and "not a run directory" in out
