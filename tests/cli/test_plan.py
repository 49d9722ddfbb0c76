"""`saturn plan` on the shipped example with the shipped sample profiles (CPU-only machine)."""

from __future__ import annotations

import json

import pytest

typer = pytest.importorskip("typer")
from typer.testing import CliRunner  # noqa: E402

from tests.helpers.paths import ROOT  # noqa: E402

EXAMPLE = ROOT / "configs" / "examples" / "gpt2-sweep.yaml"


def _app():
    from saturn.cli.plan import plan_command

    app = typer.Typer()
    app.command()(plan_command)
    return app


@pytest.mark.skipif(not EXAMPLE.exists(), reason="example workload not present")
def test_plan_cli_example(tmp_path):
    out, png = tmp_path / "plan.json", tmp_path / "gantt.png"
    r = CliRunner().invoke(_app(), [str(EXAMPLE), "--time-limit", "3", "--json", str(out), "--gantt", str(png)])
    assert r.exit_code == 0, r.output
    assert "makespan" in r.output and "whole node" in r.output
    d = json.loads(out.read_text())
    assert d["makespan_s"] >= d["lower_bound_s"] > 0 and d["assignments"]
    assert png.stat().st_size > 1000


@pytest.mark.skipif(not EXAMPLE.exists(), reason="example workload not present")
def test_plan_cli_missing_profiles(tmp_path):
    from saturn.errors import MissingProfilesError

    empty = tmp_path / "empty.csv"
    empty.write_text("signature,technique,knobs,gpus,step_time_s,feasible,gpu_type\n")
    r = CliRunner().invoke(_app(), [str(EXAMPLE), "--profiles", str(empty), "--no-prior"])
    assert isinstance(r.exception, MissingProfilesError)
    assert "saturn profile" in str(r.exception)
    # without --no-prior every job is planned from the prior, labelled estimated (#24)
    r = CliRunner().invoke(_app(), [str(EXAMPLE), "--profiles", str(empty), "--time-limit", "2"])
    assert r.exit_code == 0, r.output
    assert "GUESS: estimated" in r.output
