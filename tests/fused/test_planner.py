"""The planner chooses fused groups, and their width, when the profile says they pay (issue 36)."""

from __future__ import annotations

import pandas as pd
import pytest

from saturn.fused.grouping import shapes
from saturn.planner import fused_option
from saturn.planner.solve import plan
from tests.fused.test_engine import job

CLUSTER = {"n0": 1}
JOBS = {n: 100 for n in "abcdefgh"}


def _rows(measured=None, widths=(2, 4)):
    rows = [{"job": j, "technique": "ddp", "gpus": 1, "knobs": "{}", "step_time_s": 1.0,
             "feasible": True, "status": "ok"} for j in JOBS]
    if measured:
        for shape in ("abcd", "efgh"):  # two architectures: groups never mix them
            rows += fused_option.width_rows(list(shape), measured, widths)
    return pd.DataFrame(rows)


def test_fused_groups_are_chosen_when_the_profile_says_they_pay():
    solo = plan(JOBS, CLUSTER, _rows(), time_limit_s=5)
    assert solo.makespan_s == pytest.approx(800.0)
    # width 4 measured at 2.0 s a group step (2x per member); width 2 estimated (1.5 s)
    got = plan(JOBS, CLUSTER, _rows({1: 1.0, 4: 2.0}), time_limit_s=10)
    assert sorted(a.job for a in got.assignments) == ["fused:a+b+c+d", "fused:e+f+g+h"]
    assert all(a.technique == "fused" for a in got.assignments)
    assert got.makespan_s == pytest.approx(400.0)


def test_fused_groups_are_not_chosen_when_they_do_not_pay():
    got = plan(JOBS, CLUSTER, _rows({1: 1.0, 4: 4.4}), time_limit_s=10)
    assert sorted(a.job for a in got.assignments) == sorted(JOBS)
    assert got.makespan_s == pytest.approx(800.0)


def test_width_estimates_between_and_beyond_measurements():
    m = {1: 1.0, 4: 2.2}
    assert fused_option.estimate_step_time(m, 2) == pytest.approx(1.4)
    assert fused_option.estimate_step_time(m, 8) == pytest.approx(2.2 + 4 * 0.4)
    assert fused_option.estimate_step_time({2: 1.0, 4: 0.9}, 8) == pytest.approx(0.9)  # never faster
    rows = fused_option.width_rows(list("abcde"), m, (2, 4))
    assert [r["job"] for r in rows] == ["fused:a+b", "fused:c+d", "fused:a+b+c+d"]
    assert rows[0]["source"].startswith("estimated") and rows[-1]["source"] == "measured"


def test_jobs_of_different_shapes_never_share_a_group():
    jobs = [job("a"), job("b", seed=1, optimizer={"lr": 3e-3}), job("v", model="vit-tiny"),
            job("p", precision="bf16"), job("d", model={"name": "gpt2-tiny", "overrides": {"dropout": 0.1}})]
    assert [[j.name for j in s] for s in shapes(jobs)] == [["a", "b"], ["v"], ["p"]]


def test_profile_rows_measure_per_shape_and_estimate_other_widths():
    from saturn.fused.profile import profile_rows

    jobs = [job("a"), job("b", seed=1, optimizer={"lr": 3e-3}), job("c", seed=2), job("v", model="vit-tiny")]
    rows = profile_rows(jobs, measure_widths=(1, 2), offer_widths=(2, 3), steps=1, warmup=0)
    assert [r["job"] for r in rows] == ["fused:a+b", "fused:a+b+c"]  # the lone ViT gets no group
    assert rows[0]["source"] == "measured" and rows[1]["source"] == "estimated from widths [1, 2]"
    assert all(r["technique"] == "fused" and r["step_time_s"] > 0 for r in rows)
