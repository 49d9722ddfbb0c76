"""#28 item 5: profile tables checked against the registry and the cluster -- unknown techniques,
absurd values, memory above the device's, non-boolean `feasible` -- each refused (exit 2) with the
file, line and column, before any plan or run."""

from __future__ import annotations

import pytest
import yaml

from saturn.profiles import checks, store
from tests.helpers.cli import saturn_cli

WL = {"name": "w", "cluster": {"devices": "cpu", "slots": 2},
      "defaults": {"batch_size": 4, "seq_len": 16, "precision": "fp32", "steps": 10},
      "jobs": [{"name": "a", "model": "gpt2-tiny"}]}
HEAD = "job,technique,knobs,gpus,step_time_s,startup_s,peak_mem_gb,feasible,gpu_type\n"
GOOD = "a,ddp,{},1,0.1,1.0,0.5,True,cpu\n"


def _cli(argv, capsys):
    code, out, _ = saturn_cli(argv, capsys)
    return code, out


CASES = {  # bad row (line 3 of the file), column named, words of the message
    "unknown technique": ("a,warp-drive,{},2,0.1,1.0,0.5,True,cpu\n", "technique", "unknown technique 'warp-drive'"),
    "step time 1e299": ("a,ddp,{},2,1e299,1.0,0.5,True,cpu\n", "step_time_s", "over the limit of 86,400 s"),
    "peak 1e6 GB": ("a,ddp,{},2,0.1,1.0,1000000,True,cpu\n", "peak_mem_gb", "over the limit of 100,000 GB"),
    "feasible maybe": ("a,ddp,{},2,0.1,1.0,0.5,maybe,cpu\n", "feasible", "'maybe' is not a boolean"),
    "startup a year": ("a,ddp,{},2,0.1,31536000,0.5,True,cpu\n", "startup_s", "over the limit"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("cmd", ["plan", "run"])
def test_bad_profile_row_refused_with_file_line_column(tmp_path, capsys, case, cmd):
    row, col, words = CASES[case]
    w = tmp_path / "w.yaml"
    w.write_text(yaml.safe_dump(WL))
    t = tmp_path / "t.csv"
    t.write_text(HEAD + GOOD + row)
    argv = [cmd, w, "--profiles", t]
    if cmd == "run":
        argv += ["--simulate", "--no-live", "--run-dir", tmp_path / "r"]
    code, text = _cli(argv, capsys)
    assert code == 2, text
    assert str(t) in text and "line 3" in text and f"column {col!r}" in text and words in text, text
    assert "Traceback" not in text and not (tmp_path / "r").exists()


def test_peak_above_the_clusters_device(tmp_path, capsys):
    w = tmp_path / "w.yaml"
    w.write_text(yaml.safe_dump({**WL, "cluster": {"nodes": [{"name": "n0", "gpus": 2, "gpu_type": "L4",
                                                              "gpu_memory_gb": 24}]}}))
    t = tmp_path / "t.csv"
    t.write_text(HEAD + "a,ddp,{},1,0.1,1.0,20,True,L4\na,ddp,{},2,0.1,1.0,64,True,L4\n")
    code, text = _cli(["plan", w, "--profiles", t], capsys)
    assert code == 2 and "line 3" in text and "'peak_mem_gb'" in text and "above the 24 GB" in text, text
    # CPU slots: peak is the process's RSS and the slot's 4 GB nominal, so not compared
    w.write_text(yaml.safe_dump(WL))
    t.write_text(HEAD + "a,ddp,{},1,0.1,1.0,6.5,True,cpu\na,ddp,{},2,0.1,1.0,6.5,True,cpu\n")
    code, text = _cli(["plan", w, "--profiles", t], capsys)
    assert code == 0, text


def test_store_rows_checked_too_and_other_workloads_rows_ignored(tmp_path, capsys):
    """Store tables (keyed by signature) get the same check, for this workload's rows only: a row
    of another job's signature with a technique this process does not know is not this plan's
    business (it may be a user technique registered elsewhere)."""
    from saturn.spec import load_workload

    w = tmp_path / "w.yaml"
    w.write_text(yaml.safe_dump(WL))
    sig = load_workload(w).jobs[0].signature
    d = tmp_path / "store"
    d.mkdir()
    head = "signature,technique,knobs,gpus,step_time_s,startup_s,peak_mem_gb,feasible,gpu_type,gpu_memory_gb\n"
    (d / "profiles.csv").write_text(head + f"{sig},ddp,{{}},1,0.1,1.0,0.5,True,cpu,4.0\n"
                                    f"{sig},ddp,{{}},2,0.1,1.0,0.5,True,cpu,4.0\n"
                                    "othersig,mytech,{},1,0.1,1.0,0.5,True,cpu,4.0\n")
    from saturn.api import profiles_table

    wl = load_workload(w)
    assert set(profiles_table(wl, store_dir=d, prior=False)["technique"]) == {"ddp"}
    (d / "more.csv").write_text(head + f"{sig},warp-drive,{{}},1,0.1,1.0,0.5,True,cpu,4.0\n")
    with pytest.raises(checks.ProfileTableError, match=r"more\.csv, line 2 .*'technique': unknown technique"):
        profiles_table(wl, store_dir=d, prior=False)


def test_peak_above_own_device_memory_is_refused_anywhere(tmp_path):
    t = tmp_path / "t.csv"
    t.write_text("signature,technique,knobs,gpus,step_time_s,peak_mem_gb,feasible,gpu_type,gpu_memory_gb\n"
                 "s,ddp,{},1,0.1,90,False,H100,80\n"  # infeasible: fine (it is why)
                 "s,ddp,{},2,0.1,90,True,H100,80\n")
    with pytest.raises(checks.ProfileTableError, match=r"line 3 .*'peak_mem_gb': 90 GB on a feasible row is above its"):
        store.read_table(t)


def test_larger_device_rows_of_the_same_type_are_not_refused():
    """A row measured on an 80 GB A100 is not this 40 GB cluster's problem (the planner keys rows by
    memory size too); only rows of this size, or without one, are held to it."""
    import pandas as pd

    check = checks.cluster_check(techniques={"ddp"}, memory_gb={"a100": 40.0}, signatures={"s"}, jobs=set())
    df = pd.DataFrame([{"signature": "s", "technique": "ddp", "gpus": 1, "step_time_s": 0.1, "peak_mem_gb": 60.0,
                        "feasible": True, "gpu_type": "A100", "gpu_memory_gb": 80.0}])
    check(df, "t", 2)
    df.loc[0, "gpu_memory_gb"] = None
    with pytest.raises(checks.ProfileTableError, match="above the 40 GB"):
        check(df, "t", 2)
