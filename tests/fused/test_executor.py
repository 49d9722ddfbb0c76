"""A fused group chosen by the planner runs through the real executor on CPU slots (issue 36):
one runner process trains every member, each member's metrics, checkpoints and status land in its
own job directory like a solo job's, a member that is cancelled mid-run leaves the group (its
checkpoint written) while the others finish, and a member that ends early leaves on its own."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import pytest

from saturn.planner import fused_option

GROUP = "fused:a+b+c"
WORKLOAD = """name: tiny-fused
cluster: {devices: cpu, slots: 1}
defaults: {seq_len: 16, batch_size: 4, precision: fp32, model: gpt2-tiny,
           data: {factory: "tests.helpers.slow_data:slow_tokens", kwargs: {vocab_size: 256, delay_s: 0.01}}}
jobs:
  - {name: a, steps: 40, seed: 0}
  - {name: b, steps: 40, seed: 1, optimizer: {name: adamw, lr: 0.003, weight_decay: 0.1}}
  - {name: c, steps: 12, seed: 2, optimizer: {name: adamw, lr: 0.002}}
"""


def _files(tmp_path):
    w = tmp_path / "w.yaml"
    w.write_text(WORKLOAD)
    rows = [{"job": j, "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 1.0, "startup_s": 1.0,
             "feasible": True} for j in "abc"]
    rows.append(fused_option.group_row(["a", "b", "c"], 1.2, startup_s=1.0))  # pays: 1.2 s for 3 steps
    p = tmp_path / "p.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return w, p


def _lines(path: Path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_fused_group_runs_as_one_attempt_and_a_cancelled_member_leaves_alone(tmp_path):
    from saturn.executor import Executor, ExecutorConfig, ProcessBackend
    from saturn.spec import load_workload
    from saturn.training.catalog import latest_checkpoint, read_meta

    w, p = _files(tmp_path)
    wl = load_workload(w)
    rd = tmp_path / "run"
    ex = Executor(wl.jobs, wl.cluster.resolved(), pd.read_csv(p),
                  ProcessBackend(rd, device_type="cpu", checkpoint_every=0, warm=False), run_dir=rd,
                  config=ExecutorConfig(interval_s=1e9, time_limit_s=1.0, poll_s=0.1))
    assert all(a["knobs"].get("group") == GROUP for a in ex.state.plan["assignments"])
    cancelled, deadline = False, time.monotonic() + 240
    failed_replans: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: failed_replans.append(r.getMessage()) if "re-plan" in r.getMessage() else None
    logging.getLogger("saturn").addHandler(handler)
    try:
        while ex.step():
            assert time.monotonic() < deadline, "run took too long"
            if not cancelled and ex.state.jobs["b"].status == "running" and \
                    ex.state.jobs["b"].committed_step + len(_lines(rd / "jobs" / "b" / "progress.jsonl")) >= 15:
                ex.cancel("b")
                cancelled = True
            ex.backend.wait(0.1)
    finally:
        ex.backend.shutdown()
        logging.getLogger("saturn").removeHandler(handler)
    assert cancelled
    # re-plans while the group runs keep it fixed on its GPU, the leaving member's save included
    assert not failed_replans, failed_replans
    jobs = ex.state.jobs
    assert len({js.segments[0].pid for js in jobs.values()}) == 1  # one runner process for the group
    assert jobs["a"].status == "completed" and jobs["a"].committed_step == 40
    assert jobs["c"].status == "completed" and jobs["c"].committed_step == 12
    assert jobs["b"].status == "cancelled" and 15 <= jobs["b"].committed_step < 40
    assert all(js.segments[0].technique == "fused" for js in jobs.values())
    # b left while a still trained: a's steps after b's exit ran in the same process
    b_end = jobs["b"].segments[-1].ended_at
    assert b_end is not None and jobs["a"].segments[-1].ended_at > b_end
    for name, js in jobs.items():
        d = rd / "jobs" / name
        ck = latest_checkpoint(str(d / "ckpt"))
        assert ck and read_meta(ck)["step"] == js.committed_step
        steps = [r["step"] for r in _lines(d / "progress.jsonl") if "checkpoint" not in r]
        assert steps == list(range(1, js.committed_step + 1))
    from saturn.executor.report import summarize

    rep = summarize(rd)
    assert {j["job"]: j["group"] for j in rep["jobs"]} == {"a": GROUP, "b": GROUP, "c": GROUP}
    assert 0 < rep["gpu_allocation"] <= 1.0  # the group holds its one GPU once, not once per member


def test_a_profiled_group_of_different_shapes_is_not_offered_and_says_why(tmp_path):
    from saturn.executor import Executor, ExecutorConfig, ProcessBackend
    from saturn.spec import load_workload

    w, p = _files(tmp_path)
    w.write_text(WORKLOAD.replace("{name: c, steps: 12, seed: 2,", "{name: c, steps: 12, seed: 2, batch_size: 8,"))
    wl = load_workload(w)
    rd = tmp_path / "run"
    ex = Executor(wl.jobs, wl.cluster.resolved(), pd.read_csv(p),
                  ProcessBackend(rd, device_type="cpu", warm=False), run_dir=rd,
                  config=ExecutorConfig(interval_s=1e9, time_limit_s=1.0, poll_s=0.1))
    try:
        assert not any(a["knobs"].get("group") for a in ex.state.plan["assignments"])
        texts = [d.get("text", "") for _, kind, d in ex.journal.events() if kind == "warning"]
        assert any("fused group fused:a+b+c is not offered" in t and "batch_size (4 vs 8)" in t for t in texts)
    finally:
        ex.backend.shutdown()


@pytest.mark.slow
def test_run_fuse_measures_groups_before_the_plan(tmp_path, monkeypatch):
    """`saturn run --fuse` (prepare_run(fuse=True)): the fusable shape is measured in a separate
    process and its group rows (measured here, or estimated from measured widths) join the table."""
    from saturn.api.run_stages import prepare_run
    from saturn.planner.provenance import MEASURED_HERE, classify

    monkeypatch.setenv("SATURN_PROFILES", str(tmp_path / "store"))
    w = tmp_path / "w.yaml"
    w.write_text("""name: tiny-fuse
cluster: {devices: cpu, slots: 1}
defaults: {seq_len: 16, batch_size: 4, precision: fp32, model: gpt2-tiny, steps: 4}
jobs:
  - {name: a, seed: 0}
  - {name: b, seed: 1, optimizer: {name: adamw, lr: 0.003}}
  - {name: c, seed: 2, optimizer: {name: adamw, lr: 0.002}}
  - {name: v, model: vit-tiny, data: synthetic-images}
""")
    prep = prepare_run(w, run_dir=tmp_path / "run", fuse=True, say=lambda s: None)
    assert "fused_groups" in prep.stages
    rows = prep.table[prep.table["technique"] == "fused"].to_dict("records")
    assert sorted(r["job"] for r in rows) == ["fused:a+b", "fused:a+b+c"]  # never with the ViT job
    by = {r["job"]: r for r in rows}
    assert classify(by["fused:a+b"]) == MEASURED_HERE and by["fused:a+b"]["step_time_s"] > 0
    assert by["fused:a+b+c"]["source"].startswith("estimated from widths")
    assert any("fused groups measured" in n for n in prep.notes)
