"""scripts/bench_giant.py's judgement of its numbers (issue 33): a worker's end is read from its
exit signal and its measured memory, never from its log; the floor and the summary."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_giant  # noqa: E402


def test_sigkill_near_the_node_memory_is_a_host_oom():
    assert bench_giant.killed_cause(-9, 126.0, 128.0) == \
        "host out of memory: killed at 126.0 GB resident, the node has 128.0 GB"
    assert bench_giant.killed_cause(-9, 20.0, 128.0) == "killed by SIGKILL at 20.0 GB resident"
    assert bench_giant.killed_cause(1, 126.0, 128.0) == ""  # an exit status is not a kill
    assert bench_giant.killed_cause(None, 126.0, 128.0) == ""  # a timeout of ours is not the job's cause


def test_floor_and_summary():
    probes = {"host_bandwidth": {"triad_gb_s": 85.0}, "h2d_gb_s": 50.0, "bf16_tflops": 600.0}
    f = bench_giant.floor_s(6.86e9, 2048, probes)
    assert f["floor_s"] == max(f["host_optimizer_s"], f["link_s"], f["compute_s"])
    assert abs(f["host_optimizer_s"] - 28 * 6.86e9 / 85e9) < 1e-9
    res = {"probes": probes,
           "saturn-6.7b": {"s_per_step": 3.0, "params": 6.86e9, "batch_size": 4, "seq_len": 512,
                           "host_peak_bytes_per_param": 13.1, "host_estimate_error": 0.05},
           "saturn-13b": {"host_estimate_error": -0.2},
           "cap7": {"spilling": {"variants": {"fp32-state": {"step_time_s": 1.4}}},
                    "deepspeed": {"result": {"step_time_s": 2.25}}}}
    s = bench_giant.summarize(res)
    assert abs(s["saturn-6.7b"]["x_floor"] - 3.0 / f["floor_s"]) < 1e-9
    assert abs(s["cap7_speedup_vs_deepspeed"] - 2.25 / 1.4) < 1e-9
    assert abs(s["prior_host_median_abs_error"] - 0.125) < 1e-9
    assert "saturn-6.7b" in bench_giant.markdown({"results": res, "summary": s})
