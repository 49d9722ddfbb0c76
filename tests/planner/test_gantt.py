"""Phases in the picture (issue 25): the plan and run Gantt charts draw each job's phases inside
its bar (launch, steps, blocking save, teardown) and a checkpoint draining after the GPU is free."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from saturn.executor.report import segment_spans  # noqa: E402
from saturn.executor.state import Segment  # noqa: E402
from saturn.planner.gantt import (  # noqa: E402
    draw_bars,
    draw_phases,
    plan_phase_parts,
    plan_spans,
    save_gantt,
    sequential_spans,
)


def test_sequential_spans_lay_phases_end_to_end_and_name_the_rest():
    spans = sequential_spans(10.0, 30.0, [("launch", 2.0), ("steps", 15.0), ("save", 1.0)])
    assert spans == [("launch", 10.0, 12.0), ("steps", 12.0, 27.0), ("save", 27.0, 28.0),
                     ("teardown", 28.0, 30.0)]
    assert sequential_spans(0.0, 5.0, [("launch", 2.0), ("steps", 9.0)]) == [
        ("launch", 0.0, 2.0), ("steps", 2.0, 5.0)]  # clipped at the bar's end


def test_plan_phases_in_time_order():
    ph = {"launch": {"s": 1.0, "source": "measured"}, "steps": {"s": 10.0, "source": "measured"},
          "checkpoints": {"s": 0.4, "source": "measured"}, "final_save": {"s": 0.5, "source": "estimated"}}
    assert plan_phase_parts(ph) == [("launch", 1.0), ("steps", 10.4), ("save", 0.5)]
    a = {"node": "n", "gpus": [0], "start_s": 2.0, "end_s": 13.9,
         "phases": {**ph, "drain": {"s": 4.0, "source": "measured"}}}
    assert [(p, s, e) for _, _, p, s, e in plan_spans(a, t0=1.0)] == [
        ("launch", 3.0, 4.0), ("steps", 4.0, pytest.approx(14.4)), ("save", pytest.approx(14.4), 14.9),
        ("draining", 14.9, 18.9)]


def test_run_segment_shows_measured_phases_and_draining():
    seg = Segment(attempt=1, technique="ddp", knobs={}, node="n", gpus=[0], start_step=0, launched_at=5.0,
                  end_step=20, ended_at=20.0, status="completed",
                  phases={"launch_s": 1.0, "steps_s": 11.0, "checkpoint_block_s": 1.0, "save_block_s": 0.5})
    seg.durable_at = 26.0
    spans = segment_spans(seg, 30.0)
    assert [(p, a, b) for _, _, p, a, b in spans] == [
        ("launch", 5.0, 6.0), ("steps", 6.0, 18.0), ("save", 18.0, 18.5), ("teardown", 18.5, 20.0),
        ("draining", 20.0, 26.0)]


def test_overlays_are_drawn_inside_the_bars(tmp_path):
    fig, ax = plt.subplots()
    rows = [("n", 0)]
    draw_bars(ax, [("a", "n", [0], 0.0, 10.0, "ddp")], rows, {"a": "red"})
    before = len(ax.patches)
    draw_phases(ax, [("n", [0], "launch", 0.0, 1.0), ("n", [0], "steps", 1.0, 9.0),
                     ("n", [0], "save", 9.0, 10.0), ("n", [0], "draining", 10.0, 14.0)], rows)
    hatches = [p.get_hatch() for p in ax.patches[before:]]
    assert hatches.count("//") == 1 and hatches.count("xx") == 1 and len(hatches) == 3
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["launch", "save (blocking)", "checkpoint draining"]
    plt.close(fig)
    plan = {"makespan_s": 10.0, "lower_bound_s": 9.0, "assignments": [
        {"job": "a", "technique": "ddp", "knobs": {}, "node": "n", "gpus": [0], "start_s": 0.0, "end_s": 10.0,
         "phases": {"launch": {"s": 1.0, "source": "measured"}, "steps": {"s": 8.5, "source": "measured"},
                    "final_save": {"s": 0.5, "source": "measured"}}}]}
    out = save_gantt(plan, {"n": 1}, tmp_path / "g.png")
    assert out.exists() and out.stat().st_size > 1000

