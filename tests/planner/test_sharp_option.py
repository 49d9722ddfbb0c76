"""The planner's SHARP group option: a profiled group competes with its members' own options."""

from __future__ import annotations

import pandas as pd
import pytest

from saturn.planner import sharp_option
from saturn.planner.solve import plan

CLUSTER = {"n0": 1}


def _rows(group_step_time=None):
    rows = [{"job": j, "technique": "spilling", "gpus": 1, "knobs": "{}", "step_time_s": 10.0,
             "feasible": True, "status": "ok"} for j in "abc"]
    if group_step_time is not None:
        rows.append(sharp_option.group_row(["a", "b", "c"], group_step_time))
    return pd.DataFrame(rows)


def test_group_option_is_chosen_when_its_profile_is_faster():
    jobs = {"a": 10, "b": 10, "c": 10}
    solo = plan(jobs, CLUSTER, _rows(), time_limit_s=5)
    assert solo.makespan_s == pytest.approx(300.0)
    grouped = plan(jobs, CLUSTER, _rows(group_step_time=8.0), time_limit_s=5)
    assert [a.job for a in grouped.assignments] == ["sharp:a+b+c"]
    assert grouped.assignments[0].technique == "sharp"
    assert grouped.makespan_s == pytest.approx(8.0 * 30)
    members = sharp_option.expand(grouped.assignments)
    assert [m["job"] for m in members] == ["a", "b", "c"]
    assert all(m["knobs"]["group"] == "sharp:a+b+c" and m["end_s"] == pytest.approx(240.0)
               for m in members)


def test_slower_group_or_unusable_group_is_not_chosen():
    jobs = {"a": 10, "b": 10, "c": 10}
    assert plan(jobs, CLUSTER, _rows(group_step_time=12.0), time_limit_s=5).makespan_s == \
        pytest.approx(300.0)
    # a group whose member is not in the workload is ignored
    got = plan({"a": 10, "b": 10}, CLUSTER, _rows(group_step_time=1.0), time_limit_s=5)
    assert {a.job for a in got.assignments} == {"a", "b"}
    with pytest.raises(ValueError):
        sharp_option.group_name(["a"])
    assert sharp_option.members_of("sharp:x+y") == ["x", "y"] and not sharp_option.is_group("x")
