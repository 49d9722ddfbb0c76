"""Environment variables are checked like flags, once, before any work (issue 31, item 9).

A bad SATURN_STAGING_BUDGET_GB crashed the first checkpoint save after the run's journal was
written (so the same --run-dir was then refused); garbage in SATURN_WARM or SATURN_SEED_PROFILES
was silently ignored. Now each is exit 2 naming the variable and the fix, and nothing is written.
"""

from __future__ import annotations

import pytest

from saturn import env
from saturn.errors import SaturnError
from tests.helpers.cli import saturn_cli
from tests.helpers.paths import ROOT

TINY = str(ROOT / "configs/examples/tiny-cpu.yaml")


@pytest.mark.parametrize("var, value", [("SATURN_STAGING_BUDGET_GB", "lots"), ("SATURN_STAGING_BUDGET_GB", "-1"),
                                        ("SATURN_STAGING_BUDGET_GB", "nan"), ("SATURN_WARM", "maybe"),
                                        ("SATURN_SEED_PROFILES", "/no/such/seed/dir"),
                                        ("SATURN_CHECKPOINT_GBPS", "0"), ("SATURN_TORCH_THREADS", "1.5"),
                                        ("SATURN_GPU_MEMORY_FRACTION", "2")])
def test_bad_variable_is_exit_2_naming_it_and_writes_nothing(tmp_path, monkeypatch, capsys, var, value):
    monkeypatch.setenv(var, value)
    monkeypatch.setenv("SATURN_PROFILES", str(tmp_path / "store"))
    run = tmp_path / "run"
    code, out, _ = saturn_cli(["run", TINY, "--simulate", "--run-dir", run, "--no-live"], capsys)
    assert code == 2, out[-2000:]
    assert f"${var}={value!r}" in " ".join(out.split()), out[-2000:]
    assert "Traceback" not in out
    assert not run.exists()  # no journal: the same --run-dir works once the variable is fixed


@pytest.mark.parametrize("value, want", [(None, None), ("", None), ("0", False), ("off", False), ("COLD", False),
                                         ("1", True), ("yes", True)])
def test_warm_values(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv("SATURN_WARM", raising=False)
    else:
        monkeypatch.setenv("SATURN_WARM", value)
    assert env.warm() is want


def test_seed_profiles_none_words_and_directories(monkeypatch, tmp_path):
    monkeypatch.setenv("SATURN_SEED_PROFILES", "none")
    assert env.seed_profiles() == (True, None)
    monkeypatch.setenv("SATURN_SEED_PROFILES", str(tmp_path))
    assert env.seed_profiles() == (True, tmp_path)
    monkeypatch.setenv("SATURN_SEED_PROFILES", str(tmp_path / "missing"))
    with pytest.raises(SaturnError, match=r"SATURN_SEED_PROFILES=.*no such directory"):
        env.seed_profiles()


def test_the_api_checks_the_environment_before_work(monkeypatch, tmp_path):
    import saturn

    monkeypatch.setenv("SATURN_STAGING_BUDGET_GB", "lots")
    with pytest.raises(SaturnError, match=r"\$SATURN_STAGING_BUDGET_GB='lots'"):
        saturn.run(TINY, simulate=True, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("inside", [False, True], ids=["link", "link-parent"])
def test_dangling_symlink_run_dir_is_exit_2_naming_it(tmp_path, monkeypatch, capsys, inside):
    monkeypatch.setenv("SATURN_PROFILES", str(tmp_path / "store"))
    link = tmp_path / "dang"
    link.symlink_to(tmp_path / "nowhere" / "x")
    run = link / "run" if inside else link
    code, out, _ = saturn_cli(["run", TINY, "--simulate", "--run-dir", run, "--no-live"], capsys)
    assert code == 2, out[-2000:]
    flat = " ".join(out.split())
    assert "which does not exist" in flat and "Traceback" not in out, out[-2000:]


@pytest.mark.parametrize("entry", ['{"cpu": {"device": "cpu", "matmul_tflops": {"fp32": {"128": "fast"}}}}',
                                   '{"cpu": "garbage"}', "not json at all"])
def test_damaged_machine_rates_are_exit_2_naming_the_file(tmp_path, monkeypatch, capsys, entry):
    import json

    from saturn.prior.machine import RATES_FILE

    store = tmp_path / "store"
    store.mkdir()
    good = {"device": "cpu", "matmul_tflops": {"fp32": {"128": 0.02}}, "mem_gbps": 5.0, "h2d_gbps": 2.5,
            "interconnect_gbps": 1.2, "host_adam_params_per_s": 2e7, "launch_us": 5.0}
    bad = {**good, "mem_gbps": float("nan")}
    for text in (entry, json.dumps({"cpu-a": good, "cpu-b": bad})):
        (store / RATES_FILE).write_text(text)
        monkeypatch.setenv("SATURN_PROFILES", str(store))
        code, out, _ = saturn_cli(["plan", TINY], capsys)
        flat = " ".join(out.split())
        assert code == 2 and RATES_FILE in flat and "damaged machine rates" in flat, out[-2000:]
        assert "Traceback" not in out
        assert (store / RATES_FILE).read_text() == text  # not rewritten, nothing dropped
