"""Optimizer arguments are type-checked at validation (issue 31, item 9): `amsgrad: "maybe"` was
accepted (torch treats the string as true), so a typo trained with a different optimizer."""

from __future__ import annotations

import pytest

import saturn
from saturn.errors import SpecError

YAML = """
name: t
cluster: {devices: cpu, slots: 1}
jobs:
  - {name: a, model: gpt2-tiny, data: synthetic-tokens, steps: 2, batch_size: 2, seq_len: 8,
     optimizer: {name: %s, %s: %s}}
"""


@pytest.mark.parametrize("opt, key, value", [("adamw", "amsgrad", '"maybe"'), ("adam", "maximize", "1"),
                                             ("sgd", "nesterov", '"yes"'), ("adamw", "fused", '"no"'),
                                             ("adamw", "eps", '"small"'), ("adamw", "weight_decay", "-0.1"),
                                             ("sgd", "momentum", "true")])
def test_optimizer_arguments_of_the_wrong_type_are_refused(opt, key, value):
    with pytest.raises(SpecError, match=rf"optimizer\.{key}: .* must be"):
        saturn.load_workload(YAML % (opt, key, value))


@pytest.mark.parametrize("opt, key, value", [("adamw", "amsgrad", "true"), ("adamw", "fused", "null"),
                                             ("adamw", "eps", "1.0e-8"), ("sgd", "momentum", "0.9"),
                                             ("sgd", "nesterov", "false")])
def test_good_optimizer_arguments_pass(opt, key, value):
    wl = saturn.load_workload(YAML % (opt, key, value))
    assert wl.jobs[0].optimizer.name == opt
