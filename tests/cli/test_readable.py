"""Readable output (#34 item 5): spec errors that say what is expected and where, tables that keep
what tells jobs apart at 100 columns, CPU slots called slots, simulated runs not said to need NVML."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import saturn
from saturn.errors import SaturnError

WL = """name: t
cluster: {devices: cpu, slots: 2}
defaults: {model: gpt2-tiny, batch_size: 4, seq_len: 16, steps: 5}
jobs:
  - name: a
    gpus: [1]
  - name: b
    gpus: %s
"""


def test_gpus_as_a_number_says_what_is_expected():
    with pytest.raises(SaturnError) as e:
        saturn.load_workload(WL % "3")
    msg = str(e.value)
    assert "(job 'b').gpus" in msg and "`gpus: [3]`" in msg and "[line 8]" in msg, msg


def test_too_many_gpus_points_at_the_jobs_line():
    with pytest.raises(SaturnError) as e:
        saturn.load_workload(WL % "[4]")
    msg = str(e.value)
    assert "(job 'b').gpus" in msg and "largest node has (2)" in msg and "[line 8]" in msg, msg


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    text = """name: t
cluster: {devices: cpu, slots: 2}
defaults: {model: gpt2-tiny, batch_size: 4, seq_len: 16, steps: 10, precision: fp32}
jobs:
  - {name: gpt2-tiny-wikitext-finetune-with-a-long-name}
sweep:
  optimizer.lr: [1.0e-4, 3.0e-4, 1.0e-3]
"""
    d = tmp_path_factory.mktemp("readable") / "run"
    wl = saturn.load_workload(text)
    saturn.run(wl, simulate=True, run_dir=d, profiles=saturn.synthetic_profiles(wl.jobs), time_limit_s=2)
    return d, [j.name for j in wl.jobs]


def test_tables_at_100_columns_keep_the_differing_part_of_job_names(long_run):
    from saturn.cli.results import render
    from saturn.cli.run import _print_summary
    from saturn.executor.report import print_phases, summarize

    d, names = long_run
    out = io.StringIO()
    con = Console(file=out, width=100)
    _print_summary(con, d)
    con.print(render(saturn.results(d)))
    print_phases(con, summarize(d))
    text = out.getvalue()
    for n in names:
        assert n in text or n.split("-")[-1] in text  # (results may drop the shared prefix: "…lr=0.001")
    assert text.count("lr=0.0001") >= 2 and text.count("lr=0.0003") >= 2
    assert "slots" in text and "GPUs" not in text  # CPU slots are called slots
    assert "NVML" not in text and "simulated run" in text
    assert max(len(x) for x in text.splitlines()) <= 100
