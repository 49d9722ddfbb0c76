"""scripts/bench_spilling.py's summary and section (from the recorded JSON only, so a run cut off
half-way still renders, and `--from-json` re-renders) and its bad-input handling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.paths import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

from bench_spilling_report import markdown, summarize  # noqa: E402
from bench_spilling_workers import host_bytes_per_param  # noqa: E402


def _variant(t: float, state: str, host_params: int, device_shards=()) -> dict:
    return {"status": "ok", "step_time_s": t, "knobs": {"optimizer_state": state},
            "shards": 8, "device_shards": list(device_shards), "peak_gpu_gb": 6.1,
            "host_bytes_per_step": host_params * host_bytes_per_param(state, True),
            "gb_in_per_step": 10.0, "gb_out_per_step": 5.0,
            "host_optimizer_alone": {"s_per_step": t * 0.9}}


def _report() -> dict:
    n = 2_780_000_000
    return {"config": {"model": "gpt-2.7b", "batch_size": 8, "seq_len": 512, "cap_gb": 7.0},
            "results": {
                "host_bandwidth": {"status": "ok", "triad_gb_s": 200.0, "copy_gb_s": 80.0,
                                   "threads": 16},
                "spilling": {"params": n, "variants": {
                    "fp32-state": _variant(1.4, "fp32", n),
                    "bf16-state": _variant(0.7, "bf16", n),
                    "split+bf16-state": {"status": "oom", "reason": "CUDA out of memory"}},
                    "compute": {"status": "ok", "step_time_s": 0.17},
                    "transfer": {"status": "ok", "step_time_s": 0.29, "gb_in": 9.7, "gb_out": 5.2,
                                 "h2d_gb_s": 50.0, "d2h_gb_s": 50.0}},
                "deepspeed": {"status": "ok", "result": {"status": "ok", "step_time_s": 2.1}},
                "fsdp2": {"status": "timeout", "reason": "killed after its 80 s timeout (see x.log)"},
                "sharp": {"solo": {"m0": {}, "m1": {}, "m2": {}}, "sequential": {"wall_s": 6.0},
                          "sharp": {"status": "ok", "wall_s": 4.0, "speedup_vs_sequential": 1.5,
                                    "idle_fraction": 0.02, "max_abs_loss_diff_vs_solo": 0.0}}}}


def test_host_bytes_per_param():
    # lean engine (issue 33): the bf16 wire copy is cast at each of a step's two sends (2 x 6)
    assert host_bytes_per_param("fp32", True) == 46  # fused AdamW 28 + grad upcast 6 + sends 12
    assert host_bytes_per_param("fp32", False) == 28
    assert host_bytes_per_param("bf16", True) == 30  # one pass (18) + sends 12


def test_summary_floors_targets_and_partial_results():
    s = summarize(_report())
    fp32, bf16 = s["variants"]["fp32-state"], s["variants"]["bf16-state"]
    # host-optimizer bound = bytes / measured bandwidth; the floor is the largest of the three
    assert fp32["host_optimizer_bound_s"] == pytest.approx(2.78e9 * 46 / 200e9)
    assert bf16["host_optimizer_bound_s"] == pytest.approx(2.78e9 * 30 / 200e9)
    assert bf16["floor_is"] == "host optimizer" and bf16["floor_complete"]
    assert bf16["over_floor"] == pytest.approx(0.7 / (2.78e9 * 30 / 200e9))
    assert bf16["link_s"] == pytest.approx((10 + 5) * 2**30 / 50e9)
    assert s["best_variant"] == "bf16-state"
    t = s["targets"]
    assert t["vs_deepspeed"]["value"] == pytest.approx(3.0) and t["vs_deepspeed"]["ok"]
    assert t["vs_fsdp2"]["value"] is None and t["vs_fsdp2"]["status"] == "timeout"
    assert t["over_floor"]["variant"] == "bf16-state" and t["over_floor"]["ok"] is False
    assert t["sharp"]["ok"] and t["sharp"]["models"] == 3
    md = markdown(_report())
    assert "oom: CUDA out of memory" in md and "timeout: killed after its 80 s" in md
    assert "**missed**" in md and "**met**" in md and "200.0 GB/s" in md
    # a run cut off after the bandwidth probe still renders
    cut = {"config": _report()["config"], "results": {"host_bandwidth":
                                                          _report()["results"]["host_bandwidth"]}}
    assert "spilling variant" in markdown(cut) and summarize(cut)["best_variant"] is None


def test_bad_input_exits_2_naming_the_flag(tmp_path):
    script = str(ROOT / "scripts" / "bench_spilling.py")
    r = subprocess.run([sys.executable, script, "--only", "spilling,magic"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "--only" in r.stderr and "magic" in r.stderr
    r = subprocess.run([sys.executable, script, "--sharp-knobs", "{bad"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "--sharp-knobs" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, script, "--from-json", str(tmp_path / "none.json")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "none.json" in r.stderr


def test_from_json_renders_with_the_runs_own_stamp(tmp_path, monkeypatch):
    import benchlib

    rep = {**_report(), "command": "python scripts/bench_spilling.py --out-dir /x",
           "machine": "16 CPU cores, 1x NVIDIA H200", "date": "2026-12-04 18:40 UTC"}
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n")
    benchlib.write_section("spilling", "t", markdown(rep), root=tmp_path, recorded=rep)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "1x NVIDIA H200" in text and "2026-12-04 18:40 UTC" in text and "--out-dir /x" in text
    json.dumps(summarize(rep))  # the summary is JSON (it is written into spilling.json)
