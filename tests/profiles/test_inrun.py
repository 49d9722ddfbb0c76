"""#24 "trials that count": a job's own first steps measure the option nobody measured, written to
the profile store as measured; `saturn run` and `saturn.run()` take the same stages."""

from __future__ import annotations

import socket
import sys

import pandas as pd
import pytest
import yaml

from saturn.planner.provenance import MEASURED_HERE, classify
from saturn.profiles.inrun import RunMeasurer
from saturn.profiles.store import load_store

HW = {"gpu_type": "cpu", "gpu_memory_gb": 4.0, "interconnect": "none", "torch_version": "x"}


def _table(source: str) -> pd.DataFrame:
    return pd.DataFrame([{"job": j, "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.5,
                          "startup_s": 3.0, "checkpoint_s": 1.0, "feasible": True, "gpu_type": "cpu",
                          "source": source, "host": socket.gethostname()} for j in ("a", "b")])


def test_first_attempt_on_an_unmeasured_option_writes_its_step_time_to_the_store(tmp_path):
    m = RunMeasurer(signatures={"a": "s1", "b": "s1"}, table=_table("estimate: guessed from 1e6 parameters"),
                    hardware=HW, run_id="r7", store_dir=tmp_path, min_steps=3, skip_steps=1)
    assert m.on_launch("a", "ddp", {}, 1, start_step=0)
    assert m.on_steps("a", [(1, 9.0), (2, 0.2)]) is None  # step 1 (warm-up) is skipped: 1 timed step
    got = m.on_steps("a", [(3, 0.3), (4, 0.1), (4, 0.1)], launch_s=2.0)  # a repeated line counts once
    assert got is not None and got.first and got.feasible and got.step_time_s == pytest.approx(0.2)
    assert sorted(got.rows["job"]) == ["a", "b"]  # every job of the signature uses it
    row = load_store(tmp_path).iloc[0]
    assert row["signature"] == "s1" and row["step_time_s"] == pytest.approx(0.2) and bool(row["feasible"])
    assert row["source"] == "run:r7" and classify(row) == MEASURED_HERE
    assert row["startup_s"] == pytest.approx(3.0)  # measured launch 2.0 + the (estimated) final save 1.0
    assert m.on_steps("a", [(5, 0.2)]) is None  # once per attempt; the end refines it
    end = m.on_end("a", "completed")
    assert end is not None and not end.first and end.steps == 4
    assert not m.on_launch("b", "ddp", {}, 1, start_step=0)  # measured now: b does not measure again
    assert m.pending() == []


def test_measured_options_are_not_measured_again_and_oom_is_recorded_infeasible(tmp_path):
    m = RunMeasurer(signatures={"a": "s1", "b": "s1"}, table=_table("profiler"), hardware=HW, run_id="r",
                    store_dir=tmp_path)
    assert not m.on_launch("a", "ddp", {}, 1, 0) and m.pending() == []
    m = RunMeasurer(signatures={"a": "s1", "b": "s1"}, table=_table("sample: extrapolated"), hardware=HW,
                    run_id="r", store_dir=tmp_path)
    assert m.on_launch("a", "ddp", {}, 1, 0)
    got = m.on_end("a", "oom", "CUDA out of memory")
    assert got is not None and not got.feasible and got.jobs == ["a", "b"]
    row = load_store(tmp_path).iloc[0]
    assert not bool(row["feasible"]) and "out of memory" in row["reason"]


def _workload(tmp_path, steps=12):
    doc = {"name": "m", "cluster": {"devices": "cpu", "slots": 1},
           "defaults": {"batch_size": 2, "seq_len": 8, "precision": "fp32", "gpus": [1], "techniques": ["ddp"]},
           "jobs": [{"name": "lm", "model": "gpt2-tiny", "data": "synthetic-tokens", "steps": steps},
                    {"name": "vit", "model": "vit-tiny", "data": "synthetic-images", "seq_len": 1, "steps": steps}]}
    p = tmp_path / "w.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.slow
def test_run_completes_a_job_the_budget_skipped_measuring_it_on_its_first_attempt(tmp_path, monkeypatch):
    """The store holds measured rows for `lm` only (as after `saturn profile --budget-min` skipped
    every option of `vit`: skips are not stored): `saturn.run()` plans vit on an estimate, runs
    it, and its first attempt writes its step time to the store; lm is not measured again."""
    import saturn
    from saturn.executor.journal import Journal

    w = _workload(tmp_path)
    wl = saturn.load_workload(str(w))
    store = tmp_path / "store"
    store.mkdir()
    lm = next(j for j in wl.jobs if j.name == "lm")
    pd.DataFrame([{"signature": str(lm.signature), "technique": "ddp", "knobs": "{}", "gpus": 1,
                   "step_time_s": 0.05, "startup_s": 1.0, "feasible": True, "gpu_type": "cpu",
                   "gpu_memory_gb": 4.0, "source": "profiler"}]).to_csv(store / "profiles.csv", index=False)
    monkeypatch.setenv("SATURN_PROFILES", str(store))
    monkeypatch.setenv("SATURN_SEED_PROFILES", "none")  # an empty store: no shipped rows
    monkeypatch.setenv("SATURN_WARM", "0")  # cold attempts: no process-wide warm pool left to later tests
    res = saturn.run(str(w), run_dir=tmp_path / "run", checkpoint_every=10**6, interval_s=3600)
    assert {k: r.status for k, r in res.items()} == {"lm": "completed", "vit": "completed"}
    rows = load_store(store)
    vit = next(j for j in wl.jobs if j.name == "vit")
    got = rows[rows["signature"] == str(vit.signature)]
    assert len(got) == 1 and got.iloc[0]["source"] == "run:run" and float(got.iloc[0]["step_time_s"]) > 0
    assert rows[rows["signature"] == str(lm.signature)].iloc[0]["source"] == "profiler"
    events = list(Journal(tmp_path / "run" / "journal.sqlite").events())
    measured = [d for _, k, d in events if k == "measured"]
    assert measured and all(d["jobs"] == ["vit"] for d in measured)
    launches = [d for _, k, d in events if k == "launch" and d["job"] == "vit"]
    assert len(launches) == 1  # measured on its first (and only) attempt: no trial process before


def test_both_doors_take_the_same_stages(tmp_path, monkeypatch, capsys):
    """`saturn run` and `saturn.run()` go through saturn.api.run_stages.prepare_run and hand its
    result to the same executor builder (stopped here, before anything runs)."""
    import saturn
    import saturn.api.run_stages as stages

    taken = []

    class Stop(Exception):
        pass

    def spy(prep, **kw):
        taken.append(list(prep.stages))
        raise Stop

    monkeypatch.setattr(stages, "start_executor", spy)
    monkeypatch.setenv("SATURN_PROFILES", str(tmp_path / "empty-store"))
    monkeypatch.setenv("SATURN_SEED_PROFILES", "none")  # an empty store: no shipped rows
    w = _workload(tmp_path)
    with pytest.raises(Stop):
        saturn.run(str(w), run_dir=tmp_path / "a")
    from saturn.cli.main import run as cli

    old, sys.argv = sys.argv, ["saturn", "run", str(w), "--run-dir", str(tmp_path / "b"), "--no-live"]
    try:
        with pytest.raises(Stop):
            cli()
    finally:
        sys.argv = old
    assert len(taken) == 2 and taken[0] == taken[1]
    assert taken[0] == ["load", "local_paths", "run_dir", "profiles", "measure_in_run"]


def test_a_crash_before_the_first_measurement_drops_the_option_for_this_run_only(tmp_path):
    m = RunMeasurer(signatures={"a": "s1", "b": "s1"}, table=_table("estimated: prior cost model"),
                    hardware=HW, run_id="r", store_dir=tmp_path)
    assert m.on_launch("a", "ddp", {}, 1, 0)
    got = m.on_end("a", "failed", "worker exited with code -9")
    assert got is not None and not got.feasible and not got.stored and got.jobs == ["a", "b"]
    assert "crashed on its first attempt" in got.reason and "code -9" in got.reason
    assert not (tmp_path / "profiles.csv").exists()  # no verdict in the store


def test_executor_drops_a_crashed_unmeasured_option_for_every_job_of_the_signature(tmp_path):
    """Simulated clock: a's first attempt on the estimated-fastest option (ddp) crashes before any
    measurement; neither a nor b (same signature) is planned on ddp again, both complete on fsdp."""
    from saturn.executor import Executor, ExecutorConfig, SimulatedBackend

    rows = [{"job": j, "technique": t, "knobs": "{}", "gpus": 1, "step_time_s": s, "startup_s": 1.0,
             "feasible": True, "gpu_type": "cpu", "source": "estimated: prior cost model"}
            for j in ("a", "b") for t, s in (("ddp", 0.1), ("fsdp", 0.3))]
    table = pd.DataFrame(rows)
    backend = SimulatedBackend(lambda j, t, g, k: 0.1 if t == "ddp" else 0.3, crash_at={"a": 1})
    ex = Executor({"a": 50, "b": 50}, {"n": 1}, table, backend,
                  config=ExecutorConfig(interval_s=1e9, time_limit_s=0.5, poll_s=float("inf")))
    ex.measurer = RunMeasurer(signatures={"a": "s1", "b": "s1"}, table=table, hardware=HW, run_id="r",
                              store_dir=tmp_path)
    res = ex.run_until_done()
    assert {k: r.status for k, r in res.items()} == {"a": "completed", "b": "completed"}
    a, b = ex.state.jobs["a"], ex.state.jobs["b"]
    assert [s.technique for s in a.segments] == ["ddp", "fsdp"] and a.segments[0].status == "failed"
    assert [s.technique for s in b.segments] == ["fsdp"]


def test_every_door_checks_the_jobs_local_files_first(tmp_path, monkeypatch):
    """run, profile and Orchestrator.submit take the same `local_paths` stage: a missing data
    file is named before any trial, launch or queueing."""
    import saturn
    from saturn.errors import SaturnError

    monkeypatch.setenv("SATURN_PROFILES", str(tmp_path / "store"))

    monkeypatch.setenv("SATURN_SEED_PROFILES", "none")  # an empty store: no shipped rows
    missing = tmp_path / "nowhere.txt"
    job = {"name": "t", "model": "gpt2-tiny", "data": {"name": "text-file", "path": str(missing)},
           "batch_size": 2, "seq_len": 8, "steps": 5}
    w = tmp_path / "w.yaml"
    w.write_text(yaml.safe_dump({"name": "p", "cluster": {"devices": "cpu", "slots": 1}, "jobs": [job]}))
    for door in (lambda: saturn.run(str(w), run_dir=tmp_path / "r"), lambda: saturn.profile(str(w))):
        with pytest.raises(SaturnError, match="nowhere.txt"):
            door()
    assert not (tmp_path / "r").exists() and not (tmp_path / "store").exists()
    with saturn.Orchestrator(saturn.Cluster(devices="cpu", slots=1), run_dir=tmp_path / "o") as orch:
        with pytest.raises(SaturnError, match="nowhere.txt"):
            orch.submit(saturn.Job.model_validate(job))


def test_saturn_profile_calls_the_api_profile_stage(tmp_path, monkeypatch):
    import saturn.api.stages as stages
    from saturn.cli.main import run as cli

    seen = []
    monkeypatch.setattr(stages, "profile", lambda w, **kw: seen.append((str(w), kw)) or pd.DataFrame())
    w = _workload(tmp_path)
    old, sys.argv = sys.argv, ["saturn", "profile", str(w), "--budget-min", "1"]
    try:
        cli()
    except SystemExit as e:
        assert not e.code
    finally:
        sys.argv = old
    assert seen and seen[0][0] == str(w) and seen[0][1]["budget_min"] == 1.0


def test_a_slower_measurement_scales_up_the_signatures_other_estimates_in_the_run(tmp_path):
    table = pd.DataFrame([{"job": j, "technique": t, "knobs": "{}", "gpus": 1, "step_time_s": s, "startup_s": 1.0,
                           "feasible": True, "gpu_type": "cpu", "source": "estimated: prior cost model"}
                          for j in ("a", "b") for t, s in (("ddp", 0.1), ("spilling", 0.08))])
    m = RunMeasurer(signatures={"a": "s1", "b": "s1"}, table=table, hardware=HW, run_id="r", store_dir=tmp_path,
                    min_steps=2, skip_steps=0)
    m.on_launch("a", "ddp", {}, 1, 0)
    got = m.on_steps("a", [(1, 0.15), (2, 0.15)])  # 1.5x the estimate
    spill = got.rows[got.rows["technique"] == "spilling"]
    assert sorted(spill["job"]) == ["a", "b"] and spill["step_time_s"].tolist() == pytest.approx([0.12, 0.12])
    assert spill["source"].str.contains("x1.50").all()
    assert len(load_store(tmp_path)) == 1  # only the measurement is stored, never the rescaled guess
    m2 = RunMeasurer(signatures={"a": "s1"}, table=table[table["job"] == "a"], hardware=HW, run_id="r",
                     store_dir=tmp_path / "2", min_steps=2, skip_steps=0)
    m2.on_launch("a", "ddp", {}, 1, 0)
    faster = m2.on_steps("a", [(1, 0.05), (2, 0.05)])
    assert (faster.rows["technique"] == "ddp").all()  # a faster measurement leaves the guesses as they are


def test_a_run_resumed_before_its_first_measurement_still_measures(tmp_path, monkeypatch):
    """#31 item 8: the resumed executor had no measurer, so a run killed before its first
    measurement never wrote its `run:` row and `plan` kept warning."""
    from saturn.api.run_stages import prepare_run, start_executor
    from saturn.executor.build import resume_executor

    w = _workload(tmp_path)
    store = tmp_path / "store"
    monkeypatch.setenv("SATURN_PROFILES", str(store))
    rd = tmp_path / "run"
    prep = prepare_run(str(w), None, store_dir=store, run_dir=rd, say=lambda s: None)
    assert prep.measurer is not None and prep.measurer.pending()
    ex = start_executor(prep)
    pending, source = prep.measurer.pending(), prep.measurer.source
    ex.backend.shutdown()
    ex.close()  # the executor dies before any attempt measured anything
    again = resume_executor(rd)
    try:
        assert again.measurer is not None, "the resumed executor measures nothing"
        assert again.measurer.pending() == pending and again.measurer.source == source == "run:run"
        assert again.measurer.store_dir == str(store)
    finally:
        again.backend.shutdown()
        again.close()


def test_run_dir_dot_names_the_run_in_measured_rows(tmp_path, monkeypatch):
    """#31 item 8: `--run-dir .` wrote rows with source "run:" (empty)."""
    from saturn.api.run_stages import prepare_run

    w = _workload(tmp_path)
    here = tmp_path / "run-here"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("SATURN_PROFILES", str(tmp_path / "store"))
    prep = prepare_run(str(w), None, store_dir=tmp_path / "store", run_dir=".", say=lambda s: None)
    assert prep.measurer is not None and prep.measurer.source == "run:run-here"


def test_resumed_measurer_does_not_measure_again_what_the_run_measured(tmp_path):
    m = RunMeasurer(signatures={"a": "s1", "b": "s2"}, table=_table("estimate: guessed"), hardware=HW,
                    run_id="r", store_dir=tmp_path)
    assert len(m.pending()) == 2
    ev = {"signature": "s1", "technique": "ddp", "knobs": "{}", "gpus": 1, "feasible": True,
          "step_time_s": 0.2, "stored": True}
    again = RunMeasurer.from_meta(m.to_meta(), [ev])
    assert again.pending() == [("s2", "ddp", "{}", 1)] and again.source == "run:r"
    assert not again.on_launch("a", "ddp", {}, 1, 0) and again.on_launch("b", "ddp", {}, 1, 0)
