"""#31 item 7: a plan from outside (`saturn run --plan`, `saturn.run(plan=...)`) is checked against
every job's constraints before anything runs -- devices, GPU counts, techniques, knobs and their
ranges -- exit 2 naming the job, the field and the fix; no run directory is made."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from saturn.errors import SaturnError
from tests.helpers.cli import saturn_cli

WL = {"name": "pc", "cluster": {"devices": "cpu", "slots": 2},
      "defaults": {"batch_size": 4, "seq_len": 16, "precision": "fp32", "steps": 10},
      "jobs": [{"name": "a", "model": "gpt2-tiny", "gpus": [1], "techniques": ["ddp", "fsdp"],
                "knobs": {"ddp": {"activation_checkpointing": True}}},
               {"name": "b", "model": "gpt2-tiny", "seed": 1, "gpus": [1], "techniques": ["spilling"]}]}
TABLE = ("job,technique,knobs,gpus,step_time_s,startup_s,peak_mem_gb,feasible,gpu_type\n"
         'a,ddp,"{""activation_checkpointing"": true}",1,0.1,1.0,0.5,True,cpu\n'
         "b,spilling,{},1,0.1,1.0,0.5,True,cpu\n")


@pytest.fixture
def setup(tmp_path, capsys):
    w = tmp_path / "w.yaml"
    w.write_text(yaml.safe_dump(WL))
    t = tmp_path / "t.csv"
    t.write_text(TABLE)
    p = tmp_path / "p.json"
    code, out, _ = saturn_cli(["plan", w, "--profiles", t, "--json", p], capsys)
    assert code == 0, out
    return w, t, json.loads(p.read_text())


def _edit(plan: dict, job: str, **fields) -> dict:
    out = copy.deepcopy(plan)
    for a in out["assignments"]:
        if a["job"] == job:
            a.update(fields)
    return out


CASES = {
    "two devices for gpus [1]": ("a", {"gpus": [0, 1]}, ["'a'", "`gpus`", "allows [1]"]),
    "one device twice": ("a", {"gpus": [0, 0]}, ["'a'", "`gpus`", "more than once"]),
    "a device the node lacks": ("a", {"gpus": [5]}, ["a", "GPUs [5]", "which has 2"]),
    "ddp for techniques [spilling]": ("b", {"technique": "ddp", "knobs": {}}, ["'b'", "`technique`", "spilling"]),
    "a knob that does not exist": ("a", {"knobs": {"warp_factor": 9}}, ["'a'", "warp_factor", "unknown knob"]),
    "a knob out of range": ("a", {"knobs": {"bucket_cap_mb": -5}}, ["'a'", "bucket_cap_mb", "greater than 0"]),
    "a pinned knob changed": ("a", {"knobs": {"activation_checkpointing": False}}, ["'a'", "pins"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_run_refuses_a_plan_that_breaks_a_jobs_constraints(setup, tmp_path, capsys, case):
    w, t, plan = setup
    job, fields, words = CASES[case]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_edit(plan, job, **fields)))
    run_dir = tmp_path / "run"
    code, out, _ = saturn_cli(["run", w, "--profiles", t, "--simulate", "--no-live", "--plan", bad,
                               "--run-dir", run_dir], capsys)
    flat = " ".join(out.split())
    assert code == 2, out[-2000:]
    assert all(x in flat for x in words) and "Traceback" not in out, out[-2000:]
    assert not run_dir.exists()


def test_api_refuses_a_plan_dict_that_breaks_a_jobs_constraints(setup, tmp_path):
    import saturn

    w, t, plan = setup
    with pytest.raises(SaturnError, match=r"job 'b': field `technique` is 'ddp'"):
        saturn.run(str(w), profiles=str(t), simulate=True, run_dir=tmp_path / "r1",
                   plan=_edit(plan, "b", technique="ddp", knobs={}))
    assert not (tmp_path / "r1").exists()
    out = saturn.run(str(w), profiles=str(t), simulate=True, run_dir=tmp_path / "r2", plan=plan)
    assert {j: r.status for j, r in out.items()} == {"a": "completed", "b": "completed"}
