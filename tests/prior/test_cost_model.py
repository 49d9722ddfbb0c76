"""The prior cost model (issue 24): estimates, calibration, the machine probe's cache, and that
no job is left unplanned when nothing of it was measured."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from saturn.prior.calibration import calibration_ratios
from saturn.prior.cost_model import Calibration, MachineRates, datasheet_rates, estimate
from saturn.prior.machine import RATES_FILE, cached_rates, load_or_probe
from saturn.prior.rows import with_prior
from saturn.prior.shapes import shape_of
from saturn.profiler.hardware import Hardware
from saturn.spec import load_workload

H200 = datasheet_rates("H200")
CPU_RATES = MachineRates("cpu", {"fp32": {128: 0.02, 256: 0.04, 512: 0.05}}, 5.0, 2.5, 1.2, 2e7, 5.0)


def wl_text(techniques="[ddp]", gpus="[1, 2]"):
    return ("name: t\ncluster: {devices: cpu, slots: 2}\n"
            f"defaults: {{seq_len: 16, batch_size: 4, precision: fp32, steps: 50, gpus: {gpus}, "
            f"techniques: {techniques}}}\n"
            "jobs:\n  - {name: lm, model: gpt2-tiny}\n"
            "  - {name: vision, model: vit-tiny, data: synthetic-images, seq_len: 1}\n")


def test_estimates_follow_flops_and_bytes():
    small = shape_of("gpt2-small", None, 16, 512, "bf16")
    xl = shape_of("gpt2-xl", None, 8, 512, "bf16")
    e_small = estimate(small, "ddp", {}, 1, H200, 141)
    e_xl = estimate(xl, "ddp", {}, 1, H200, 141)
    assert 0 < e_small.step_time_s < e_xl.step_time_s and e_small.peak_mem_gb < e_xl.peak_mem_gb
    # activation checkpointing: more compute, less memory
    ac = estimate(xl, "ddp", {"activation_checkpointing": True}, 1, H200, 141)
    assert ac.step_time_s > e_xl.step_time_s and ac.peak_mem_gb < e_xl.peak_mem_gb
    # FSDP shards the model state: less memory per GPU on more GPUs
    assert estimate(xl, "fsdp", {}, 4, H200, 141).peak_mem_gb < estimate(xl, "fsdp", {}, 1, H200, 141).peak_mem_gb
    # a 6.7B model with DDP (16 B/param) cannot fit 80 GB: estimated infeasible, with the reason
    big = estimate(shape_of("gpt-6.7b", None, 8, 512, "bf16"), "ddp", {}, 1, H200, 80)
    assert not big.feasible and "estimated peak memory" in big.reason


def test_calibration_moves_estimates_toward_measured_rows():
    """Measured rows 2x slower than the prior: calibrated on two of them, the third's estimate
    is closer to its measurement than the uncalibrated one."""
    rows = []
    for name, b in (("gpt2-small", 16), ("gpt2-medium", 16), ("gpt2-xl", 8)):
        shape = shape_of(name, None, b, 512, "bf16")
        raw = estimate(shape, "fsdp", {}, 1, H200, 141).step_time_s
        rows.append({"signature": name, "technique": "fsdp", "knobs": "{}", "gpus": 1, "gpu_type": "H200",
                     "gpu_memory_gb": 141, "status": "ok", "feasible": True, "step_time_s": 2.1 * raw,
                     "source": "profiler", "model": name, "batch_size": b, "seq_len": 512, "precision": "bf16"})
    ratios = calibration_ratios(rows[:2], {}, lambda _t: H200)
    calib = Calibration.fit((t, k, r) for t, k, r, _ in ratios)
    f, why = calib.factor("fsdp", "H200")
    assert f == pytest.approx(2.1) and "2 measured fsdp" in why
    xl = shape_of("gpt2-xl", None, 8, 512, "bf16")
    before = estimate(xl, "fsdp", {}, 1, H200, 141).step_time_s
    after = estimate(xl, "fsdp", {}, 1, H200, 141, factor=f).step_time_s
    truth = rows[2]["step_time_s"]
    assert abs(after - truth) < abs(before - truth) and after == pytest.approx(truth, rel=1e-4)
    # another technique on the same device borrows the device's median; another device gets none
    assert calib.factor("ddp", "h200")[0] == pytest.approx(2.1)
    assert calib.factor("ddp", "A100") == (1.0, "uncalibrated (no measured row on this device)")


def test_probe_is_cached_in_the_store(tmp_path):
    calls = []

    def prober(hw, cpu_threads=None):
        calls.append(hw)
        return CPU_RATES

    hw = Hardware("cpu", 4.0, "none", "2.x", 2)
    assert load_or_probe(hw, tmp_path, prober=prober) == CPU_RATES
    assert load_or_probe(hw, tmp_path, prober=prober) == CPU_RATES
    assert len(calls) == 1 and (tmp_path / RATES_FILE).exists()
    assert list(cached_rates(tmp_path).values()) == [CPU_RATES]
    load_or_probe(Hardware("cpu", 4.0, "none", "2.x", 4), tmp_path, prober=prober)  # another key
    assert len(calls) == 2 and len(json.loads((tmp_path / RATES_FILE).read_text())) == 2


def test_real_cpu_probe_in_a_child_process():
    """The probe's child-process protocol (how GPUs are probed, so the caller holds no CUDA
    context), run here on CPU slots."""
    import subprocess
    import sys
    from dataclasses import asdict

    hw = Hardware("cpu", 4.0, "none", "2.x", 1)
    out = subprocess.run([sys.executable, "-m", "saturn.prior.machine", json.dumps(asdict(hw))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = MachineRates.from_dict(json.loads(out.stdout.strip().splitlines()[-1]))
    assert r.matmul("fp32", 256) > 0 and r.mem_gbps > 0 and r.host_adam_params_per_s > 0
    assert "estimated" in r.interconnect_source and r.source.startswith("probed on")


def test_prior_fills_only_what_no_row_covers():
    wl = load_workload(wl_text())
    lm = wl.jobs[0]
    measured = pd.DataFrame([{"signature": lm.signature, "technique": "ddp", "knobs": "{}", "gpus": 1,
                              "gpu_type": "cpu", "gpu_memory_gb": 4.0, "status": "ok", "feasible": True,
                              "step_time_s": 0.5, "startup_s": 1.0, "source": "profiler"}])
    out = with_prior(wl, measured, rates={"cpu": CPU_RATES})
    est = out[out["source"].astype(str).str.startswith("estimated")]
    cells = set(zip(est["signature"], est["gpus"]))
    assert (lm.signature, 1) not in cells and (lm.signature, 2) in cells
    assert {(wl.jobs[-1].signature, 1), (wl.jobs[-1].signature, 2)} <= cells
    # the measured ddp row anchors its own model's estimates and calibrates the others' (the
    # source says how)
    lm_rows = est[est["signature"] == lm.signature]
    assert lm_rows["source"].str.contains("anchored to 1 row").all()
    assert est[est["signature"] != lm.signature]["source"].str.contains("from 1 measured ddp row").all()


def test_plan_plans_a_job_whose_every_option_the_budget_skipped(tmp_path, monkeypatch):
    """`saturn profile --budget-min` (tiny) measures nothing; `saturn plan` still plans every
    job, labelled estimated (the plan JSON records it), and the probe is cached in the store."""
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from saturn.cli.plan import plan_command
    from saturn.profiler import profile

    path = tmp_path / "w.yaml"
    path.write_text(wl_text())
    store = tmp_path / "store"
    monkeypatch.setenv("SATURN_PROFILES", str(store))
    monkeypatch.setenv("SATURN_SEED_PROFILES", "none")  # an empty store: no shipped rows
    df = profile(load_workload(path), store_dir=store, progress=False, budget_min=1e-9)
    rep = df.attrs["report"]
    assert rep["trials_run"] == 0 and rep["budget_hit"]
    app = typer.Typer()
    app.command()(plan_command)
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(app, [str(path), "--time-limit", "2", "--json", str(out)])
    assert r.exit_code == 0, r.output
    plan = json.loads(out.read_text())
    assert {a["job"] for a in plan["assignments"]} == {j.name for j in load_workload(path).jobs}
    assert {a["provenance"] for a in plan["assignments"]} == {"estimated"}
    assert "GUESS: estimated" in r.output and (store / RATES_FILE).exists()
    # --no-prior: plan from rows only, which refuses (nothing was measured)
    r = CliRunner().invoke(app, [str(path), "--no-prior"])
    assert r.exit_code != 0 and "saturn profile" in str(r.exception)


def test_infeasible_message_names_the_true_cause():
    from saturn.errors import InfeasibleError
    from saturn.planner import plan

    rows = pd.DataFrame([
        {"job": "a", "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": None, "feasible": False,
         "status": "oom", "reason": "CUDA out of memory", "source": "profiler"},
        {"job": "a", "technique": "fsdp", "knobs": "{}", "gpus": 1, "step_time_s": None, "feasible": False,
         "status": "failed", "reason": "worker crashed; log: /tmp/x.log", "source": "profiler"},
        {"job": "a", "technique": "zero", "knobs": "{}", "gpus": 1, "step_time_s": None, "feasible": False,
         "status": "infeasible", "reason": "estimated peak memory 90 GB > 76 GB usable",
         "source": "estimated: prior cost model"},
    ])
    with pytest.raises(InfeasibleError) as e:
        plan({"a": 10}, {"n": 1}, rows, time_limit_s=1)
    msg = str(e.value)
    assert "ddpx1 out of memory (measured)" in msg and "crashed (measured): worker crashed; log: /tmp/x.log" in msg
    assert "zerox1 estimated infeasible (not measured)" in msg and "every profiled" not in msg


def test_profile_orders_trials_by_value(tmp_path, monkeypatch):
    """`saturn profile` (built-in techniques, trials faked at the prior's own speed): one option of
    every job first, then nothing that cannot pay for itself; --exhaustive measures more."""
    import saturn.profiler.session as session
    from saturn.profiler import profile

    calls = []

    def fake_trial(technique, job, devices, trial, timeout_s):
        calls.append(trial)
        time.sleep(0.2)  # a trial costs time: what the value rule weighs a saving against
        return {"status": "ok", "step_time_s": 0.01 * trial.gpus, "peak_mem_gb": 0.1, "startup_s": 0.1}

    monkeypatch.setattr(session, "call_trial", fake_trial)
    monkeypatch.setattr("saturn.prior.machine.load_or_probe", lambda *a, **k: CPU_RATES)
    wl = load_workload(wl_text(techniques="[ddp, fsdp]"))
    df = profile(wl, store_dir=tmp_path / "a", progress=False)
    sigs = {j.signature for j in wl.jobs}
    assert {t.signature for t in calls[:2]} == sigs  # breadth first
    reasons = [s["reason"] for s in df.attrs["report"]["skipped"]]
    assert any(r.startswith("cannot pay for itself") for r in reasons)
    n_value = len(calls)
    calls.clear()
    profile(wl, store_dir=tmp_path / "b", progress=False, exhaustive=True)
    assert len(calls) > n_value


def test_bench_prior_is_leave_one_out():
    """scripts/bench_prior.py never calibrates a row on itself."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import bench_prior

    rows = []
    for name, mult in (("gpt2-small", 2.0), ("gpt2-medium", 3.0)):
        raw = estimate(shape_of(name, None, 16, 512, "bf16"), "zero", {}, 1, H200, 141).step_time_s
        rows.append({"signature": name, "technique": "zero", "knobs": "{}", "gpus": 1, "gpu_type": "H200",
                     "gpu_memory_gb": 141, "status": "ok", "feasible": True, "step_time_s": mult * raw,
                     "source": "profiler" if name == "gpt2-small" else "run:abc", "model": name,
                     "batch_size": 16, "seq_len": 512, "precision": "bf16"})
    del rows[1]["model"]  # a row a run measured in its own steps: shaped from its workload's job
    assert bench_prior.evaluate(rows, {"H200": H200})["summary"]["skipped_unshaped"] == 1
    out = bench_prior.evaluate(rows, {"H200": H200}, {"gpt2-medium": shape_of("gpt2-medium", None, 16, 512, "bf16")})
    small, medium = out["rows"]
    assert small["loo_s"] == pytest.approx(3.0 * small["uncalibrated_s"], rel=1e-3)  # the other row's factor
    assert medium["loo_s"] == pytest.approx(2.0 * medium["uncalibrated_s"], rel=1e-3)
    assert out["summary"]["ranking_pairs"] == 0  # two jobs, one option each


def test_a_factor_learned_on_other_settings_never_beats_the_device():
    """Spilling calibrated on host-optimizer rows (x0.5) must not make its GPU-optimizer setting
    faster than plain DDP: the device-side work is a floor."""
    med = shape_of("gpt2-medium", None, 32, 512, "bf16")
    ddp = estimate(med, "ddp", {}, 1, H200, 141, factor=1.0, compute_factor=1.0)
    spill = estimate(med, "spilling", {"optimizer_on": "gpu"}, 1, H200, 141, factor=0.5, compute_factor=1.0)
    assert spill.floored and spill.step_time_s > ddp.step_time_s
    xl = shape_of("gpt2-xl", None, 8, 512, "bf16")
    host = estimate(xl, "spilling", {"optimizer_on": "cpu"}, 1, H200, 141, factor=0.5, compute_factor=1.0)
    assert not host.floored  # host-bound: the calibration holds
