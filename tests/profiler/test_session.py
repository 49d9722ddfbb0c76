"""The profiler end to end on CPU slots, with fake techniques (tests/helpers/fake_techniques.py)
passed by import path: outcomes, timeouts, store reuse, budget, concurrency, CLI."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from saturn.errors import SaturnError
from saturn.profiler import ProfileStore, estimate_runtime_s, profile
from saturn.profiler.hardware import parse_topology
from saturn.profiler.table import fixed_costs
from saturn.spec import load_workload
from tests.helpers.fake_techniques import read_log

F = "tests.helpers.fake_techniques:"


def workload(techniques, gpus=(1, 2), slots=2, jobs=None, lr_sweep=True):
    techs = ", ".join(f'"{F}{t}"' for t in techniques)
    jobs = jobs or ["{name: lm, model: gpt2-tiny}"]
    sweep = "sweep:\n  optimizer.lr: [1.0e-3, 3.0e-3]\n" if lr_sweep else ""
    return load_workload(
        f"name: t\ncluster: {{devices: cpu, slots: {slots}}}\n"
        f"defaults: {{seq_len: 16, batch_size: 2, precision: fp32, steps: 100, "
        f"gpus: {list(gpus)}, techniques: [{techs}]}}\n"
        "jobs:\n" + "".join(f"  - {j}\n" for j in jobs) + sweep)


@pytest.fixture
def trial_log(tmp_path, monkeypatch):
    path = tmp_path / "trials.jsonl"
    monkeypatch.setenv("SATURN_FAKE_TRIAL_LOG", str(path))
    monkeypatch.setenv("SATURN_FAKE_HANG_S", "1.5")
    return path


def rows_of(df, tech, gpus=None):
    out = df[df["technique"] == F + tech]
    return out if gpus is None else out[out["gpus"] == gpus]


def test_outcomes_end_to_end(tmp_path, trial_log):
    wl = workload(["Scales", "NeedsOffload", "Crashes", "Hangs", "OnlyTwo"])
    df = profile(wl, store_dir=tmp_path, progress=False, timeout_s=0.3, grace_s=0.3)
    report = df.attrs["report"]
    assert report["signatures"] == 1  # the lr sweep shares one profile
    assert set(df["job"]) == {"lm-lr=0.001", "lm-lr=0.003"}
    one = df[df["job"] == "lm-lr=0.001"]
    ok = rows_of(one, "Scales")
    assert list(ok.sort_values("gpus")["step_time_s"]) == pytest.approx([0.1, 0.05])
    assert ok["feasible"].all() and (ok["first_step_s"] == 1.5).all()
    # fixed cost = first step done - one step (the fake spends no wall time on start-up)
    assert list(ok.sort_values("gpus")["launch_s"]) == pytest.approx([1.4, 1.45])
    # OOM is recorded (infeasible, with the reason), then offload is tried
    off = rows_of(one, "NeedsOffload", 1).set_index("knobs")
    assert off.loc['{"offload":false}', "status"] == "oom"
    assert "out of memory" in off.loc['{"offload":false}', "reason"]
    assert off.loc['{"offload":true}', "status"] == "ok"
    assert list(rows_of(one, "NeedsOffload", 2)["knobs"]) == ['{"offload":false}']  # plain fits
    crash = rows_of(one, "Crashes")
    assert (crash["status"] == "failed").all() and not crash["feasible"].any()
    assert crash["reason"].str.contains("boom").all()
    hang = rows_of(one, "Hangs")
    assert set(hang["status"]) == {"timeout"} and len(hang) == 2
    static = rows_of(one, "OnlyTwo", 1)
    assert static["status"].tolist() == ["infeasible"] and "at least 2" in static["reason"].iloc[0]
    assert rows_of(one, "OnlyTwo", 2)["status"].tolist() == ["ok"]
    # persisted, with the hardware key
    stored = ProfileStore(tmp_path).load()
    assert len(stored) == len(one)
    assert set(stored["gpu_type"]) == {"cpu"} and set(stored["interconnect"]) == {"none"}
    # the planner's estimate: steps x step time + start-up + checkpoint
    r = ok[ok["gpus"] == 1].iloc[0]
    assert r["runtime_s"] == pytest.approx(100 * 0.1 + 1.4 + r["checkpoint_s"])
    assert r["startup_s"] == pytest.approx(1.4 + r["checkpoint_s"])  # the planner's fixed cost
    assert math.isinf(estimate_runtime_s(crash.iloc[0], 100))


def test_store_reuse_and_force(tmp_path, trial_log):
    wl = workload(["Scales", "NeedsOffload"])
    first = profile(wl, store_dir=tmp_path, progress=False)
    ran = len(read_log(trial_log))
    assert ran == first.attrs["report"]["trials_run"] == 5  # 2 + (1 GPU: plain, offload; 2: plain)
    again = profile(wl, store_dir=tmp_path, progress=False)
    assert len(read_log(trial_log)) == ran  # nothing re-run
    assert again.attrs["report"]["trials_run"] == 0 and again.attrs["report"]["reused"] == 5
    pd.testing.assert_frame_equal(first.drop(columns="measured_at"),
                                  again.drop(columns="measured_at"))
    # another workload with the same signature reuses too; --force re-runs
    wl2 = workload(["Scales"], lr_sweep=False)
    profile(wl2, store_dir=tmp_path, progress=False)
    assert len(read_log(trial_log)) == ran
    profile(wl2, store_dir=tmp_path, progress=False, force=True)
    assert len(read_log(trial_log)) == ran + 2


def test_flat_scaling_skips_larger_counts(tmp_path, trial_log):
    wl = workload(["Flat", "Scales"], gpus=(1, 2, 4), slots=4, lr_sweep=False)
    df = profile(wl, store_dir=tmp_path, progress=False)
    assert sorted(rows_of(df, "Flat")["gpus"]) == [1, 2]
    assert sorted(rows_of(df, "Scales")["gpus"]) == [1, 2, 4]
    assert any("flattened" in s["reason"] for s in df.attrs["report"]["skipped"])


def test_trials_run_side_by_side(tmp_path, trial_log, monkeypatch):
    """Four 1-GPU trials on 4 idle slots: well under half the one-by-one time."""
    monkeypatch.setenv("SATURN_FAKE_SLOW_S", "0.6")
    jobs = [f"{{name: j{b}, model: gpt2-tiny, batch_size: {b}}}" for b in (1, 2, 3, 4)]
    wl = workload(["Slow"], gpus=(1,), slots=4, jobs=jobs, lr_sweep=False)
    df = profile(wl, store_dir=tmp_path, progress=False)
    rep = df.attrs["report"]
    assert rep["signatures"] == 4 and rep["trials_run"] == 4
    assert rep["wall_s"] < 0.5 * rep["sequential_s"]
    log = read_log(trial_log)
    assert sorted(d for e in log for d in e["devices"]) == [0, 1, 2, 3]  # one per slot
    assert max(e["start"] for e in log) - min(e["start"] for e in log) < 0.5


def test_budget_stops_new_trials(tmp_path, trial_log, monkeypatch):
    monkeypatch.setenv("SATURN_FAKE_SLOW_S", "0.5")
    wl = workload(["Slow"], gpus=(1, 2), slots=2, lr_sweep=False)
    df = profile(wl, store_dir=tmp_path, progress=False, budget_min=0.1 / 60)
    rep = df.attrs["report"]
    assert rep["budget_hit"] and rep["trials_run"] == 1  # the 2-slot trial went first, alone
    assert any("budget" in s["reason"] for s in rep["skipped"])
    assert len(ProfileStore(tmp_path).load()) == 1  # what was measured is kept
    # the next run fills in the rest only
    profile(wl, store_dir=tmp_path, progress=False)
    assert len(read_log(trial_log)) == 2


def test_interrupted_run_keeps_finished_trials(tmp_path, trial_log, monkeypatch):
    wl = workload(["Scales", "Flat"], gpus=(1,), slots=1, lr_sweep=False)
    real = ProfileStore.upsert
    calls = []

    def upsert(self, rows):
        out = real(self, rows)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C right after the first trial was stored
        return out

    monkeypatch.setattr(ProfileStore, "upsert", upsert)
    with pytest.raises(KeyboardInterrupt):
        profile(wl, store_dir=tmp_path, progress=False)
    monkeypatch.setattr(ProfileStore, "upsert", real)
    assert len(ProfileStore(tmp_path).load()) == 1
    df = profile(wl, store_dir=tmp_path, progress=False)
    assert df.attrs["report"]["reused"] == 1 and df.attrs["report"]["trials_run"] == 1


def test_process_isolation_kills_a_hung_trial(tmp_path, trial_log, monkeypatch):
    monkeypatch.setenv("SATURN_FAKE_HANG_S", "30")
    wl = workload(["Hangs"], gpus=(1,), slots=1, lr_sweep=False)
    df = profile(wl, store_dir=tmp_path, progress=False, isolation="process", timeout_s=1.0,
                 grace_s=6.0)
    row = df.iloc[0]
    assert row["status"] == "timeout" and "killed" in row["reason"]
    assert row["trial_s"] < 10


def test_user_errors(tmp_path):
    with pytest.raises(SaturnError):
        profile(tmp_path / "missing.yaml", store_dir=tmp_path)
    wl = workload(["Scales"], lr_sweep=False)
    with pytest.raises(SaturnError):
        profile(wl, store_dir=tmp_path, budget_min=0)
    gpu = load_workload("cluster: {nodes: [{name: n, gpus: 4, gpu_type: H200}]}\n"
                        "jobs: [{name: a, model: gpt2-tiny, batch_size: 2, steps: 10}]\n")
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        with pytest.raises(SaturnError, match="no CUDA GPU"):
            profile(gpu, store_dir=tmp_path)


def test_cli_profile_and_show(tmp_path, trial_log, write_yaml, capsys):
    from saturn.cli.profile import profile_command

    path = write_yaml(
        "name: t\ncluster: {devices: cpu, slots: 2}\n"
        "jobs: [{name: lm, model: gpt2-tiny, batch_size: 2, seq_len: 16, steps: 50, gpus: [1, 2],"
        f" techniques: ['{F}Scales', '{F}Crashes']}}]\n")
    profile_command(path, budget_min=None, force=False, show=False, store=tmp_path)
    ran = len(read_log(trial_log))
    assert ran == 4
    capsys.readouterr()
    profile_command(path, budget_min=None, force=False, show=True, store=tmp_path)
    out = capsys.readouterr().out
    assert "Scales" in out and "failed" in out and "boom" in out
    assert len(read_log(trial_log)) == ran  # --show runs nothing
    profile_command(None, budget_min=None, force=False, show=True, store=tmp_path)
    assert "Crashes" in capsys.readouterr().out
    with pytest.raises(SaturnError):
        profile_command(None, budget_min=None, force=False, show=False, store=tmp_path)


def test_estimate_runtime():
    row = {"status": "ok", "feasible": True, "step_time_s": 0.5, "launch_s": 10.0,
           "checkpoint_s": 2.0, "startup_s": 12.0}
    assert estimate_runtime_s(row, 100) == pytest.approx(62.0)
    assert estimate_runtime_s(row, 100) == pytest.approx(100 * 0.5 + row["startup_s"])  # = planner
    assert estimate_runtime_s(row, 100, checkpoint_cost_s=0) == pytest.approx(60.0)
    assert estimate_runtime_s(row, 100, checkpoints=3) == pytest.approx(66.0)
    # a table without launch_s (e.g. hand-written): startup_s is the whole fixed cost
    assert estimate_runtime_s({"step_time_s": 0.5, "feasible": True, "startup_s": 3}, 10) == 8.0
    assert estimate_runtime_s({"step_time_s": 0.5, "feasible": True}, 10) == pytest.approx(5.0)
    assert math.isinf(estimate_runtime_s({**row, "status": "oom"}, 100))
    assert math.isinf(estimate_runtime_s({**row, "feasible": False}, 100))


def test_fixed_costs_split_a_trial():
    # trial: 4 s to first step done, 2 warm-up + 5 timed steps of 0.5 s after the first, 1 s exit
    wall = 4 + (2 - 1 + 5) * 0.5 + 1
    assert fixed_costs(0.5, wall, 5, 4.0, 2) == pytest.approx(4 - 0.5 + 1)
    assert fixed_costs(0.5, 0.01, 5, 4.0, 2) == pytest.approx(3.5)  # in-process fake
    assert fixed_costs(None, 3.0, 5, None, 2) == 0.0


def test_parse_topology():
    nv = ("\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tNV18\t0-47\nGPU1\tNV18\t X \t0-47\n")
    pcie = ("\tGPU0\tGPU1\nGPU0\t X \tPHB\nGPU1\tPHB\t X \n")
    assert parse_topology(nv) == "nvlink"
    assert parse_topology(pcie) == "pcie"
    assert parse_topology("") == "unknown"


@pytest.mark.slow
def test_real_ddp_on_cpu_slots(tmp_path):
    """Integration: the real DDP technique profiles a gpt2-tiny job on 2 CPU slots."""
    pytest.importorskip("saturn.techniques.ddp")
    wl = load_workload(
        "name: t\ncluster: {devices: cpu, slots: 2}\n"
        "jobs: [{name: lm, model: gpt2-tiny, batch_size: 4, seq_len: 16, steps: 20, "
        "precision: fp32, gpus: [1, 2], techniques: [ddp]}]\n")
    df = profile(wl, store_dir=tmp_path, progress=False, steps=3, timeout_s=180, exhaustive=True)
    ok = df[df["status"] == "ok"]
    assert sorted(set(ok["gpus"])) == [1, 2], df[["gpus", "knobs", "status", "reason"]]
    assert (ok["step_time_s"] > 0).all() and (ok["startup_s"] > 0).all()
    assert (ok["runtime_s"] > 20 * ok["step_time_s"]).all()
    again = profile(wl, store_dir=tmp_path, progress=False, steps=3, timeout_s=180, exhaustive=True)
    assert again.attrs["report"]["trials_run"] == 0


def test_cli_is_a_typer_command(tmp_path, trial_log, write_yaml):
    import typer
    from typer.testing import CliRunner

    from saturn.cli.profile import profile_command

    app = typer.Typer()
    app.command("profile")(profile_command)
    app.command("other")(lambda: None)  # a multi-command app, like `saturn`
    path = write_yaml(
        "name: t\ncluster: {devices: cpu, slots: 2}\n"
        "jobs: [{name: lm, model: gpt2-tiny, batch_size: 2, seq_len: 16, steps: 50, gpus: [1],"
        f" techniques: ['{F}Scales']}}]\n")
    res = CliRunner().invoke(app, ["profile", str(path), "--store", str(tmp_path),
                                   "--budget-min", "5"])
    assert res.exit_code == 0, res.output
    assert len(read_log(trial_log)) == 1
    res = CliRunner().invoke(app, ["profile", str(path), "--store", str(tmp_path), "--force"])
    assert res.exit_code == 0 and len(read_log(trial_log)) == 2
    res = CliRunner().invoke(app, ["profile", "--show", "--store", str(tmp_path)])
    assert res.exit_code == 0 and "Scales" in res.output


def test_checkpoint_cost_model(monkeypatch):
    from saturn.profiler import checkpoint_cost_s

    job = workload(["Scales"], lr_sweep=False).jobs[0]
    assert 0.5 <= checkpoint_cost_s(job, "cpu") < 0.6
    assert 3.0 <= checkpoint_cost_s(job, "H200") < 3.1
    monkeypatch.setenv("SATURN_CHECKPOINT_FIXED_S", "0")
    monkeypatch.setenv("SATURN_CHECKPOINT_GBPS", "1")
    assert checkpoint_cost_s(job, "H200") < 0.01
