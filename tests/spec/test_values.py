"""#28: spec values that used to validate but were wrong -- refused at `saturn validate` with the
field path (and the file and line), exit 2, no traceback; and the model-replacing merge rule."""

from __future__ import annotations

import pytest
import yaml

from saturn.errors import SpecError
from saturn.spec import load_workload
from tests.helpers.cli import saturn_cli

HEAD = """\
name: w
cluster: {devices: cpu, slots: 2}
defaults: {model: gpt2-tiny, batch_size: 4, seq_len: 16, steps: 10}
"""


def _validate(tmp_path, capsys, text: str):
    p = tmp_path / "w.yaml"
    p.write_text(text)
    code, out, _ = saturn_cli(["validate", p], capsys)
    assert "Traceback" not in out
    return code, out, str(p)


BAD = {
    "steps true": ("jobs:\n  - {name: a, steps: true}\n", ["jobs[0] (job 'a').steps", "boolean true", "line 5"]),
    "batch_size false": ("jobs:\n  - {name: a, batch_size: false}\n", ["batch_size", "boolean false"]),
    "duplicate key": ("jobs:\n  - name: a\n    steps: 100\n    steps: 10\n",
                      ["line 7", "duplicate key 'steps'", "first at line 6"]),
    "override text": ("jobs:\n  - {name: a, model: {name: gpt2-tiny, overrides: {n_layer: '4'}}}\n",
                      ["model", "n_layer = '4'", "whole number"]),
    "weight inf": ("objective: weighted_completion\njobs:\n  - {name: a, weight: .inf}\n",
                   ["jobs[0] (job 'a').weight", "finite"]),
    "empty sweep segment": ("jobs:\n  - {name: a}\nsweep:\n  optimizer..lr: [1.0e-3, 2.0e-3]\n",
                            ["'optimizer..lr'", "empty part", "line 7"]),
    "sweep into scalar": ("jobs:\n  - {name: a}\nsweep:\n  seq_len.x: [1, 2]\n",
                          ["seq_len.x", "not a mapping", "line 7"]),
    "adamw momentum": ("jobs:\n  - {name: a, optimizer: {momentum: 0.9}}\n",
                       ["optimizer.momentum", "AdamW takes no argument 'momentum'"]),
    "betas of length 1": ("jobs:\n  - {name: a, optimizer: {betas: [0.9]}}\n", ["optimizer.betas", "two numbers"]),
    "seq_len over positions": ("jobs:\n  - {name: a, seq_len: 1024}\n",
                               ["seq_len: 1024 is above gpt2-tiny's 256 positions"]),
    "vit on tokens": ("jobs:\n  - {name: a, model: vit-tiny, data: synthetic-tokens}\n",
                      ["data: synthetic-tokens yields tokens", "vit-tiny", "synthetic-images"]),
    "gpt on images": ("jobs:\n  - {name: a, data: synthetic-images}\n", ["takes tokens"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_wrong_values_are_refused_at_validate(tmp_path, capsys, case):
    body, needles = BAD[case]
    code, text, path = _validate(tmp_path, capsys, HEAD + body)
    assert code == 2, text
    assert path in text, text  # the file is named
    for n in needles:
        assert n in text, (n, text)


def test_allowed_values_still_load():
    wl = load_workload(HEAD + "jobs:\n  - {name: a, optimizer: {name: sgd, lr: 0.1, momentum: 0.9}}\n"
                       "  - {name: b, optimizer: {amsgrad: true, betas: [0.9, 0.99]}, seq_len: 256}\n"
                       "  - {name: c, model: vit-tiny, data: synthetic-images, seq_len: 1}\n")
    assert [j.name for j in wl.jobs] == ["a", "b", "c"]
    assert wl.jobs[1].optimizer.kwargs()["amsgrad"] is True


def test_duplicate_keys_anywhere_and_aliases_are_fine():
    with pytest.raises(SpecError, match="duplicate key 'devices'"):
        load_workload("name: w\ncluster: {devices: cpu, devices: cpu}\njobs: []\n")
    wl = load_workload("name: w\nx: &d {batch_size: 4, seq_len: 8, steps: 2}\n".replace("x: ", "defaults: ")
                       + "jobs:\n  - {name: a, model: gpt2-tiny}\n  - {name: b, model: gpt2-tiny, seed: 1}\n")
    assert len(wl.jobs) == 2


def test_job_factory_replaces_default_model_name(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text("import torch\ndef build():\n    return torch.nn.Sequential("
                                          "torch.nn.Linear(4, 4))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = {"name": "w", "defaults": {"model": {"name": "gpt2-tiny", "overrides": {"n_layer": 3}},
                                     "batch_size": 2, "seq_len": 8, "steps": 2},
           "jobs": [{"name": "zoo"}, {"name": "mine", "model": {"factory": "mymodels:build"}},
                    {"name": "other", "model": "gpt2-small"},
                    {"name": "deeper", "model": {"overrides": {"n_embd": 128}}}]}
    wl = load_workload(yaml.safe_dump(doc))
    by = {j.name: j.model for j in wl.jobs}
    assert by["zoo"].name == "gpt2-tiny" and by["zoo"].overrides == {"n_layer": 3}
    assert by["mine"].factory == "mymodels:build" and by["mine"].name is None and not by["mine"].overrides
    assert by["other"].name == "gpt2-small" and by["other"].overrides == {}  # a named model replaces
    assert by["deeper"].name == "gpt2-tiny" and by["deeper"].overrides == {"n_layer": 3, "n_embd": 128}
