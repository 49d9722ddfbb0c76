"""The README's first command, its Quickstart and its Python API blocks run as written, twice in a
row (#34): on CPU, in a fresh directory with a fresh profile store ($SATURN_PROFILES), each block
checked for its exit code and its output.

The blocks are cut from README.md and run verbatim: shell blocks by bash (`set -e`) in a directory
holding `configs/` (a link to the checkout's) and a `.venv/bin/activate` that puts a `saturn`
running this checkout on PATH; Python blocks by this interpreter. Twice: a second run must not trip
over what the first left behind (run directories, the store). The Optuna and Ray Tune blocks are
run by tests/test_hpo_readme.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def section(heading: str) -> str:
    text = README.read_text()
    at = text.index(f"\n## {heading}")
    nxt = text.find("\n## ", at + 1)
    return text[at:nxt if nxt > 0 else len(text)]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    (d / "configs").symlink_to(ROOT / "configs")
    bin_dir = d / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "saturn").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m saturn "$@"\n')
    (bin_dir / "saturn").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    env = {**os.environ, "SATURN_PROFILES": str(d / "store"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.pop("SATURN_SEED_PROFILES", None)
    return d, env


def _bash(code: str, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_first_command_plans_the_quickstart_from_measured_rows_and_beats_every_baseline(user_dir):
    d, env = user_dir
    first = blocks(README.read_text().split("\n## ", 1)[0], "bash")[0]
    assert "saturn plan configs/examples/quickstart.yaml" in first
    cmd = first.split("&&", 1)[1].strip()  # (the install half is scripts/install.sh: not run in tests)
    r = _bash(cmd, d, env)
    assert r.returncode == 0, r.stdout + r.stderr
    vs = [x for x in r.stdout.splitlines() if x.strip().startswith("vs ")]
    assert len(vs) == 4 and all("Saturn" in x and "shorter" in x and " 0.0% shorter" not in x for x in vs), r.stdout
    rows = [x for x in r.stdout.splitlines() if x.startswith("│")]
    assert len(rows) == 15 and all("measured elsewhere" in x for x in rows), r.stdout
    assert "GUESS" not in r.stdout + r.stderr


@pytest.mark.slow
def test_quickstart_runs_twice_as_written(user_dir):
    d, env = user_dir
    (code,) = blocks(section("Quickstart"), "bash")
    for attempt in (1, 2):
        r = _bash(code, d, env)
        out = r.stdout + r.stderr
        assert r.returncode == 0, f"attempt {attempt}: {out[-4000:]}"
        # (a crash of saturn itself exits non-zero under `set -e`; a job log's traceback of a retried
        # attempt is the job's own output, which `saturn logs` shows)
        assert not re.search(r"^error:", out, re.M), out[-4000:]
        assert out.count("completed lm-lr=0.001") >= 1 and "* " in out and "best:" in out
        assert "loss curves: curves.png" in out and (d / "curves.png").stat().st_size > 10_000
        assert "step 20/20  loss" in out  # saturn logs: the job's own losses
        assert "jobs 15/15 done" in out  # the simulated quickstart's last status line
    runs = sorted(p.name for p in (d / "runs").iterdir())
    assert sum(n.startswith("tiny-") for n in runs) == 2 and sum(n.startswith("quickstart-") for n in runs) == 2


@pytest.mark.slow
def test_python_api_blocks_run_twice_as_written(user_dir):
    d, env = user_dir
    api = section("Python API and hyperparameter search")
    api_block = blocks(api, "python")[0]
    online = blocks(api[api.index("### Online"):], "python")[0]
    for attempt in (1, 2):
        for name, code in (("api", api_block), ("online", online)):
            r = subprocess.run([sys.executable, "-c", code], cwd=d, env=env, capture_output=True, text=True,
                               timeout=600)
            assert r.returncode == 0, f"{name}, attempt {attempt}: {(r.stdout + r.stderr)[-4000:]}"
            if name == "api":
                assert "optimizer.lr" in r.stdout and "True" in r.stdout, r.stdout
