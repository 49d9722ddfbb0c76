"""Environment variables are checked like flags, once, before any work (issue 31, item 9).

A bad SATURN_STAGING_BUDGET_GB crashed the first checkpoint save after the run's journal was
written (so the same --run-dir was then refused); garbage in SATURN_WARM or SATURN_SEED_PROFILES
was silently ignored. Now each is exit 2 naming the variable and the fix, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

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


def test_plan_writes_nothing_into_a_seed_directory(tmp_path, monkeypatch, capsys):
    """#31 item 5: the store and the seed rows in one directory: `saturn plan` probed this machine
    and wrote machine-rates.json and its lock into the seed rows."""
    import shutil

    seeds = tmp_path / "seeds"
    seeds.mkdir()
    shutil.copy(ROOT / "profiles" / "sample-cpu.csv", seeds / "sample-cpu.csv")
    before = sorted(p.name for p in seeds.iterdir())
    monkeypatch.setenv("SATURN_PROFILES", str(seeds))
    monkeypatch.setenv("SATURN_SEED_PROFILES", str(seeds))
    code, out, _ = saturn_cli(["plan", TINY], capsys)
    assert code == 0, out[-2000:]
    assert sorted(p.name for p in seeds.iterdir()) == before


def test_machine_rates_merge_keeps_what_it_does_not_know(tmp_path):
    """#31 item 5: a new probe is merged into the file as stored: another machine's entry keeps
    the fields this version does not know (they were dropped by a round trip through MachineRates)."""
    import json

    from saturn.prior.cost_model import MachineRates
    from saturn.prior.machine import RATES_FILE, load_or_probe
    from saturn.profiler.hardware import Hardware

    other = {"device": "H200", "matmul_tflops": {"bf16": {"4096": 700.0}}, "mem_gbps": 4000.0, "h2d_gbps": 50.0,
             "interconnect_gbps": 400.0, "host_adam_params_per_s": 2e8, "launch_us": 5.0,
             "nvlink_sharp_gbps": 900.0}
    (tmp_path / RATES_FILE).write_text(json.dumps({"H200|141.0|nvlink|2.x|8": other}))
    mine = MachineRates("cpu", {"fp32": {128: 0.02}}, 5.0, 2.5, 1.2, 2e7, 5.0)
    assert load_or_probe(Hardware("cpu", 4.0, "none", "2.x", 1), tmp_path, prober=lambda hw, **k: mine) == mine
    data = json.loads((tmp_path / RATES_FILE).read_text())
    assert data["H200|141.0|nvlink|2.x|8"] == other and len(data) == 2


def _enospc(path) -> OSError:
    import errno
    import os

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize("where", ["run_dir", "journal", "plan_file"])
def test_full_disk_while_creating_the_run_is_exit_2_naming_the_path(tmp_path, monkeypatch, capsys, where):
    """#31 item 9: ENOSPC while the run directory, its journal or its first files are created was
    a traceback (OSError / sqlite3.OperationalError), or blamed the journal as damaged."""
    import sqlite3

    import saturn.executor.journal as journal

    monkeypatch.setenv("SATURN_PROFILES", str(tmp_path / "store"))
    rd = tmp_path / "run"
    if where == "run_dir":
        real_mkdir = Path.mkdir

        def mkdir(self, *a, **k):
            if self == rd:
                raise _enospc(self)
            return real_mkdir(self, *a, **k)
        monkeypatch.setattr(Path, "mkdir", mkdir)
        named = str(rd)
    elif where == "journal":
        real_connect = sqlite3.connect

        def connect(path, *a, **k):
            if str(path).startswith(str(rd)):
                raise sqlite3.OperationalError("database or disk is full")
            return real_connect(path, *a, **k)
        monkeypatch.setattr(journal.sqlite3, "connect", connect)
        named = str(rd / "journal.sqlite")
    else:
        real_write = Path.write_text

        def write_text(self, *a, **k):
            if self.parent == rd / "plans":
                raise _enospc(self)
            return real_write(self, *a, **k)
        monkeypatch.setattr(Path, "write_text", write_text)
        named = str(rd / "plans" / "plan-v1.json")
    code, out, _ = saturn_cli(["run", TINY, "--simulate", "--no-live", "--run-dir", rd], capsys)
    flat = " ".join(out.split())
    assert code == 2, out[-2000:]
    assert named in flat and ("No space left on device" in flat or "disk is full" in flat), out[-2000:]
    assert "Traceback" not in out and "not a readable" not in flat and "corrupt" not in flat, out[-2000:]


def _saturn_env_reads() -> list[str]:
    """`os.environ.get("SATURN_...")`, `os.getenv(...)` and `os.environ["SATURN_..."]` reads (by
    literal or by a module constant) anywhere under saturn/ but saturn/env.py."""
    import ast

    out = []
    for path in sorted((ROOT / "saturn").rglob("*.py")):
        if path == ROOT / "saturn" / "env.py":
            continue
        tree = ast.parse(path.read_text())
        consts = {t.id: n.value.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                  for t in n.targets if isinstance(t, ast.Name)}

        def name_of(node, consts=consts):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                return node.value
            return consts.get(node.id) if isinstance(node, ast.Name) else None

        for n in ast.walk(tree):
            key = None
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.args and (
                    (n.func.attr == "get" and ast.unparse(n.func.value) == "os.environ")
                    or ast.unparse(n.func) == "os.getenv"):
                key = name_of(n.args[0])
            elif isinstance(n, ast.Subscript) and isinstance(n.ctx, ast.Load) and ast.unparse(n.value) == "os.environ":
                key = name_of(n.slice)
            if key and key.startswith("SATURN_"):
                out.append(f"{path.relative_to(ROOT)}:{n.lineno} {key}")
    return out


def test_every_saturn_variable_is_read_through_saturn_env():
    """#31 item 9: SATURN_* variables read directly (and so never checked) outside saturn/env.py."""
    assert _saturn_env_reads() == []


def test_spilling_compile_is_checked_like_a_flag(monkeypatch, capsys):
    monkeypatch.setenv("SATURN_SPILLING_COMPILE", "maybe")
    code, out, _ = saturn_cli(["validate", TINY], capsys)
    assert code == 2 and "SATURN_SPILLING_COMPILE" in out and "Traceback" not in out, out[-2000:]
    monkeypatch.setenv("SATURN_SPILLING_COMPILE", "no")
    assert env.spilling_compile() is False
