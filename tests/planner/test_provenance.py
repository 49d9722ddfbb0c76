"""#15: every planned number says where it came from; `saturn run` does not run silently on guesses;
errors name the real cause (GPU count over the cluster)."""

from __future__ import annotations

import json
import socket
import sys

import pandas as pd
import pytest
import yaml

from saturn.errors import SaturnError
from saturn.planner import Plan, plan
from saturn.planner.provenance import (
    EXTRAPOLATED,
    GUESSED,
    MEASURED_ELSEWHERE,
    MEASURED_HERE,
    SIMULATED,
    UNLABELLED,
    annotate,
    classify,
)
from tests.helpers.paths import ROOT

SAMPLE = "sample: extrapolated from the SPASE paper's published 4xH200 step times, not measured"


@pytest.mark.parametrize("row,label", [
    ({"source": "profiler", "host": socket.gethostname()}, MEASURED_HERE),
    ({"source": "profiler", "host": "other-box"}, MEASURED_ELSEWHERE),
    ({"source": "profiler"}, MEASURED_ELSEWHERE),
    ({"source": SAMPLE}, EXTRAPOLATED),
    ({"source": "simulated: roofline model"}, SIMULATED),
    ({"source": "sample"}, GUESSED),
    ({"source": "guess by hand"}, GUESSED),
    ({"source": "estimated: prior cost model, uncalibrated"}, "estimated"),
    ({"source": "estimate: batch-scaled from batch size 8"}, "estimated"),
    ({"source": None}, UNLABELLED),
    ({}, UNLABELLED),
])
def test_classify(row, label):
    assert classify(row) == label


def _table():
    rows = [("a", "ddp", 1, 1.0, "profiler"), ("a", "ddp", 2, 0.6, "profiler"),
            ("b", "ddp", 1, 2.0, SAMPLE), ("b", "fsdp", 2, 1.2, SAMPLE)]
    return pd.DataFrame([{"job": j, "technique": t, "knobs": "{}", "gpus": g, "step_time_s": s, "startup_s": 1.0,
                          "feasible": True, "gpu_type": "H200", "source": src, "host": socket.gethostname()}
                         for j, t, g, s, src in rows])


def _wl(tmp_path, cluster=None, gpus=None):
    doc = {"name": "p", "cluster": cluster or {"nodes": [{"name": "n0", "gpus": 2, "gpu_type": "H200"}]},
           "defaults": {"batch_size": 2, "seq_len": 8},
           "jobs": [{"name": "a", "model": "gpt2-tiny", "steps": 100, **({"gpus": gpus} if gpus else {})},
                    {"name": "b", "model": "gpt2-tiny", "steps": 100}]}
    p = tmp_path / "w.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_plan_records_provenance_per_assignment_and_round_trips(tmp_path):
    from saturn.spec import load_workload

    wl = load_workload(_wl(tmp_path))
    p = annotate(plan(wl.jobs, wl.cluster.resolved(), _table(), time_limit_s=2), _table())
    by = p.by_job()
    assert by["a"].provenance == MEASURED_HERE and by["b"].provenance == EXTRAPOLATED
    d = p.to_dict()
    assert d["provenance"]["guessed_jobs"] == ["b"]
    assert {a["job"]: a["provenance"] for a in d["assignments"]} == {"a": MEASURED_HERE, "b": EXTRAPOLATED}
    assert Plan.from_dict(json.loads(json.dumps(d))).by_job()["b"].source == SAMPLE


def _cli(argv, capsys):
    from saturn.cli.main import run

    old = sys.argv
    sys.argv = ["saturn", *argv]
    code = 0
    try:
        run()
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def test_saturn_plan_warns_and_marks_guessed_rows(tmp_path, capsys):
    w = _wl(tmp_path)
    t = tmp_path / "t.csv"
    _table().to_csv(t, index=False)
    code, out, err = _cli(["plan", str(w), "--profiles", str(t), "--time-limit", "2",
                           "--json", str(tmp_path / "p.json")], capsys)
    assert code == 0, err
    assert "WARNING" in err and "1 of 2 assignments" in err and "extrapolated" in err
    line_b = next(x for x in out.splitlines() if x.startswith("│ b "))
    line_a = next(x for x in out.splitlines() if x.startswith("│ a "))
    assert "GUESS: extrapolated" in line_b and "GUESS" not in line_a and "measured here" in line_a
    assert json.loads((tmp_path / "p.json").read_text())["provenance"]["guessed_jobs"] == ["b"]


def test_saturn_plan_on_the_repository_samples_is_labelled(capsys):
    code, out, err = _cli(["plan", str(ROOT / "configs/examples/large-models.yaml"), "--time-limit", "2"], capsys)
    # every unmeasured option is labelled: extrapolated samples, or the prior's estimates (#24)
    assert code == 0 and "WARNING" in err and out.count("GUESS: extrapolated") + out.count("GUESS: estimated") >= 6


def test_run_require_measured_refuses_guesses(tmp_path, capsys):
    w = _wl(tmp_path)
    t = tmp_path / "t.csv"
    _table().to_csv(t, index=False)
    code, out, err = _cli(["run", str(w), "--profiles", str(t), "--require-measured", "--no-live",  # (an H200
                           "--run-dir", str(tmp_path / "r"), "--time-limit", "2", "--devices", "cpu"], capsys)  # node)
    assert code == 2 and "--require-measured" in err and "b (" in err, out + err
    assert not (tmp_path / "r").exists()


def test_run_measures_guessed_options_in_the_run_not_in_trial_processes(tmp_path, monkeypatch):
    """#24: options nobody measured are measured by the jobs' own first steps (a RunMeasurer),
    never by a separate `saturn profile` before the run; where they cannot be measured here (a
    given table) the run warns and goes on; --require-measured refuses only a plan resting on them
    (test_run_require_measured_refuses_guesses)."""
    import saturn.profiler as profiler
    from saturn.api.run_stages import prepare_run

    calls = []
    monkeypatch.setattr(profiler, "profile", lambda w, **k: calls.append(w))
    store = tmp_path / "store"
    store.mkdir()
    rows = _table().assign(gpu_type="cpu", gpu_memory_gb=4.0)
    w = _wl(tmp_path, cluster={"devices": "cpu", "slots": 2})
    from saturn.spec import load_workload

    sig = str(load_workload(w).jobs[0].signature)  # a and b share it (same model, batch, seq)
    rows.drop(columns=["job"]).assign(signature=sig).to_csv(store / "profiles.csv", index=False)
    said: list = []
    prep = prepare_run(w, store_dir=store, run_dir=tmp_path / "r1", say=said.append)
    assert calls == [] and prep.measurer is not None and "measure_in_run" in prep.stages
    # one signature: its measured ddp x1 row shadows the sample; fsdp x2 is only extrapolated (the
    # other options are the prior's estimates)
    pending = {k[1:] for k in prep.measurer.pending()}
    assert ("fsdp", "{}", 2) in pending and ("ddp", "{}", 1) not in pending
    assert any("measuring as it runs" in s for s in said)
    said.clear()
    rows.to_csv(tmp_path / "t.csv", index=False)  # a given table: not this machine's store
    prep = prepare_run(w, profiles=tmp_path / "t.csv", run_dir=tmp_path / "r2", say=said.append)
    assert prep.measurer is None and "WARNING" in said[0] and "b (ddp on 1 GPU(s))" in said[0]
    assert calls == []


def test_gpu_count_over_an_unknown_cluster_names_the_real_cause(tmp_path):
    from saturn.spec import load_workload

    wl = load_workload(_wl(tmp_path, cluster="local", gpus=[8]))  # size unknown until detected
    nodes = [{"name": "n0", "gpus": 2, "gpu_type": "H200"}]
    table = pd.DataFrame([{"job": "a", "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.1,
                           "startup_s": 1, "feasible": True, "gpu_type": "H200"},
                          {"job": "b", "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.1,
                           "startup_s": 1, "feasible": True, "gpu_type": "H200"}])
    from saturn.spec.schema import Cluster

    with pytest.raises(SaturnError) as e:
        plan(wl.jobs, Cluster(nodes=nodes), table, time_limit_s=2)
    assert "allows only GPU counts [8]" in str(e.value) and "largest" in str(e.value)
    assert "out of memory" not in str(e.value)


def test_readme_first_command_plan_mixes_sizes_and_labels_guesses(capsys):
    readme = (ROOT / "README.md").read_text()
    assert "saturn plan configs/examples/mixed-h200.yaml" in readme.split("## How it works")[0]
    code, out, err = _cli(["plan", str(ROOT / "configs/examples/mixed-h200.yaml"), "--time-limit", "5", "--json", "-"],
                          capsys)
    assert code == 0, err
    d = json.loads(out)
    sizes = {len(a["gpus"]) for a in d["assignments"]}
    assert 1 in sizes and max(sizes) >= 2  # some jobs on one GPU, some sharded over several
    assert d["makespan_s"] < max(d["baselines"].values()) and d["makespan_s"] <= min(d["baselines"].values()) + 1e-6
    guessed = [a for a in d["assignments"] if a["provenance"] in ("extrapolated", "simulated", "guessed")]
    assert guessed and sorted(a["job"] for a in guessed) == d["provenance"]["guessed_jobs"]
    assert "WARNING" in err
