"""Workload spec: examples validate, bad inputs give precise errors, sweeps, signatures."""

import json
import subprocess
import sys

import pytest

from saturn.errors import SpecError
from saturn.spec import Cluster, Job, Node, Workload, dump_workload
from saturn.techniques.checks import load_workload
from tests.helpers.paths import EXAMPLES, ROOT

BASE = """\
name: t
cluster: {devices: cpu, slots: 2}
defaults: {seq_len: 16, batch_size: 4, steps: 5}
jobs:
  - {name: a, model: gpt2-tiny}
"""


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_validate(path):
    wl = load_workload(path)
    assert wl.jobs and all(j.total_steps > 0 for j in wl.jobs)


def test_example_sweep_expands_to_unique_jobs():
    wl = load_workload(ROOT / "configs/examples/gpt2-sweep.yaml")
    names = [j.name for j in wl.jobs]
    assert len(names) == 12 == len(set(names))
    assert "medium-lr=0.0003" in names
    assert {j.optimizer.lr for j in wl.jobs} == {1e-4, 3e-4, 6e-4, 1e-3}
    assert wl.job("xl-lr=0.001").batch_size == 8  # job value beats defaults
    assert wl.job("small-lr=0.001").optimizer.weight_decay == 0.1  # defaults merged deeply


def test_sweep_without_jobs_multiplies_defaults(write_yaml):
    wl = load_workload(write_yaml("""\
name: s
defaults: {model: gpt2-tiny, seq_len: 8, batch_size: 2, steps: 3}
sweep:
  model: [gpt2-tiny, gpt2-small]
  batch_size: [2, 4]
"""))
    assert sorted(j.name for j in wl.jobs) == sorted(
        ["s-model=gpt2-tiny-batch_size=2", "s-model=gpt2-tiny-batch_size=4",
         "s-model=gpt2-small-batch_size=2", "s-model=gpt2-small-batch_size=4"])
    assert {j.model.name for j in wl.jobs} == {"gpt2-tiny", "gpt2-small"}


def test_signature_shared_by_lr_variants_not_by_batch_size():
    def job(**kw):
        base = dict(name="j", model="gpt2-small", batch_size=8, steps=10)
        return Job(**{**base, **kw})

    a = job(optimizer={"name": "adamw", "lr": 1e-4})
    b = job(optimizer={"name": "adamw", "lr": 1e-3}, seed=3, steps=99, name="k")
    assert a.signature == b.signature
    assert len(a.signature) == 12
    assert job(batch_size=16).signature != a.signature
    assert job(seq_len=1024).signature != a.signature
    assert job(precision="fp32").signature != a.signature
    assert job(optimizer={"name": "sgd"}).signature != a.signature
    assert job(model={"name": "gpt2-small", "overrides": {"n_layer": 6}}).signature != a.signature


def test_signature_is_stable_across_processes():
    code = ("from saturn.spec import Job; print(Job(name='j', model='gpt2-medium', batch_size=8, "
            "steps=1).signature)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == Job(name="j", model="gpt2-medium", batch_size=8, steps=1).signature


def test_yaml_round_trip():
    wl = load_workload(ROOT / "configs/examples/gpt2-sweep.yaml")
    again = load_workload(dump_workload(wl))
    assert again == wl


def test_python_constructors():
    wl = Workload(name="py", cluster=Cluster(nodes=[Node(name="n0", gpus=4)]),
                  jobs=[Job(name="a", model="gpt2-tiny", batch_size=4, steps=10)])
    assert wl.jobs[0].model.name == "gpt2-tiny"
    assert wl.cluster.max_gpus == 4
    assert load_workload(dump_workload(wl)) == wl


def test_local_cpu_cluster_resolves_to_slots():
    c = Cluster(devices="cpu", slots=3).resolved()
    assert c.nodes[0].gpus == 3 and c.nodes[0].gpu_type == "cpu"


def test_epochs_become_steps(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("x" * 1001)
    job = Job(name="t", model="gpt2-tiny", data={"name": "text-file", "path": str(text)},
              seq_len=100, batch_size=5, epochs=2)
    assert job.total_steps == 4  # 10 samples / 5 per step * 2 epochs


# Each bad input: (YAML edit, fragments the message must contain).
BAD = [
    ("jobs:\n  - {name: a, model: gpt2-tiny, bach_size: 4}", ["jobs[0]", "bach_size",
                                                             "did you mean 'batch_size'"]),
    ("jobs:\n  - {name: a, model: gpt2-tny}", ["model", "unknown model 'gpt2-tny'", "gpt2-tiny"]),
    ("jobs:\n  - {name: a, model: gpt2-tiny, batch_size: 0}", ["batch_size", "greater than 0",
                                                              "got 0"]),
    ("jobs:\n  - {name: a, model: gpt2-tiny, precision: fp8}", ["precision", "'fp32', 'bf16'",
                                                               "fp8"]),
    ("jobs:\n  - {name: a, model: gpt2-tiny, optimizer: {name: lion}}", ["optimizer.name",
                                                                        "adamw", "lion"]),
    ("jobs:\n  - {name: a, model: gpt2-tiny, optimizer: {lr: -1}}", ["optimizer.lr", "> 0"]),
    ("jobs:\n  - {name: a, model: gpt2-tiny, gpus: [0, 2]}", ["gpus", "positive GPU counts"]),
    ("jobs:\n  - {name: a, model: gpt2-tiny, techniques: [magic]}", ["techniques", "magic",
                                                                    "allowed"]),
    ("jobs:\n  - {name: a, model: gpt2-tiny, steps: 5, epochs: 1}", ["exactly one of `steps`"]),
    ("jobs:\n  - {name: a, model: {name: gpt2-tiny, overrides: {n_layers: 3}}}",
     ["unknown override", "n_layers", "n_layer"]),
    ("jobs:\n  - {name: a, model: {name: gpt2-tiny, overrides: {n_embd: 65}}}",
     ["divisible by n_head"]),
    ("jobs:\n  - {name: a, model: mypkg.models}", ["unknown model 'mypkg.models'"]),
    ("jobs:\n  - {name: a, model: {factory: 'nocolon'}}", ["not an import path",
                                                           "pkg.module:function"]),
    ("jobs:\n  - {name: a, model: gpt2-tiny, data: imagenet}", ["data", "unknown dataset",
                                                               "synthetic-tokens"]),
    ("jobs:\n  - {name: a, model: gpt2-tiny, data: text-file}", ["text-file", "path"]),
    ("jobs:\n  - {name: a, model: gpt2-tiny}\n  - {name: a, model: gpt2-tiny}",
     ["unique", "'a'"]),
    ("jobs:\n  - {name: 'has space', model: gpt2-tiny}", ["name", "pattern"]),
    ("jobs: []", ["`jobs` is empty"]),
    ("jobs: {a: 1}", ["`jobs` must be a list"]),
    ("jobs:\n  - {name: a, model: gpt2-tiny}\nsweeps: {lr: [1]}", ["unknown key 'sweeps'",
                                                                   "did you mean 'sweep'"]),
    ("jobs:\n  - {name: a, model: gpt2-tiny}\nsweep: {optimizer.lr: 3}", ["`sweep` must map"]),
    ("cluster: {nodes: [{name: n, gpus: 0}]}\njobs:\n  - {name: a, model: gpt2-tiny}",
     ["cluster.nodes[0].gpus" if False else "nodes.0.gpus", "greater than 0"]),
    ("cluster: {slots: 4}\njobs:\n  - {name: a, model: gpt2-tiny}", ["`slots` applies to "
                                                                     "`devices: cpu`"]),
    ("cluster: everywhere\njobs:\n  - {name: a, model: gpt2-tiny}", ["not a cluster", "local"]),
    ("cluster: {gpus: 4}\njobs:\n  - {name: a, model: gpt2-tiny}", ["unknown key 'gpus'",
                                                                   "nodes"]),
]


@pytest.mark.parametrize("edit,fragments", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_names_field_and_fix(write_yaml, edit, fragments):
    head = "name: t\ndefaults: {seq_len: 16, batch_size: 4, steps: 5}\n"
    with pytest.raises(SpecError) as info:
        load_workload(write_yaml(head + edit))
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in: {msg}"
    assert "Traceback" not in msg


def test_error_names_the_line(write_yaml):
    with pytest.raises(SpecError) as info:
        load_workload(write_yaml(BASE + "  - name: b\n    model: gpt2-tiny\n    batch_size: -3\n"))
    assert "jobs[1] (job 'b').batch_size" in str(info.value)
    assert "[line 8]" in str(info.value)


def test_yaml_syntax_error_names_the_line(write_yaml):
    with pytest.raises(SpecError) as info:
        load_workload(write_yaml(BASE + "  - {name: b, model: [unclosed\n"))
    assert "YAML syntax error" in str(info.value) and "line " in str(info.value)


def test_sweep_errors_are_reported_once(write_yaml):
    with pytest.raises(SpecError) as info:
        load_workload(write_yaml(BASE.replace("gpt2-tiny}", "gpt2-tiny, bach_size: 3}")
                                 + "sweep: {optimizer.lr: [1, 2, 3]}\n"))
    msg = str(info.value)
    assert msg.count("unknown key") == 1 and "2 more sweep job(s)" in msg


def test_cli_validate_prints_table_and_json(tmp_path):
    out = tmp_path / "jobs.json"
    res = subprocess.run([sys.executable, "-m", "saturn", "validate",
                          str(ROOT / "configs/examples/tiny-cpu.yaml"), "--json", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "lm-lr=0.001" in res.stdout and "signature" in res.stdout
    data = json.loads(out.read_text())
    jobs = next(iter(data.values()))["jobs"]
    assert len(jobs) == 4 and len({j["signature"] for j in jobs}) == 2


def test_cli_bad_spec_exits_2_without_traceback(write_yaml):
    path = write_yaml(BASE.replace("gpt2-tiny", "gpt9"))
    res = subprocess.run([sys.executable, "-m", "saturn", "validate", str(path)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "unknown model 'gpt9'" in res.stderr and "Traceback" not in res.stderr
