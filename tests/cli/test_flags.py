"""#28 item 4: every flag and every path checked before work starts -- exit 2 naming the flag and
its valid range, never a traceback, never a directory the user did not name."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import typer
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saturn.cli.flags import RANGES
from tests.helpers.cli import saturn_cli
from tests.helpers.paths import ROOT

WL = {"name": "w", "cluster": {"devices": "cpu", "slots": 2},
      "defaults": {"batch_size": 4, "seq_len": 16, "precision": "fp32", "steps": 10},
      "jobs": [{"name": "a", "model": "gpt2-tiny"}, {"name": "b", "model": "gpt2-tiny", "seed": 1}]}
TABLE = ("job,technique,knobs,gpus,step_time_s,startup_s,peak_mem_gb,feasible,gpu_type\n"
         "a,ddp,{},1,0.1,1.0,0.5,True,cpu\nb,ddp,{},1,0.1,1.0,0.5,True,cpu\n")


def _cli(argv, capsys):
    code, out, _ = saturn_cli(argv, capsys)
    return code, out


@pytest.fixture
def wl(tmp_path):
    w = tmp_path / "w.yaml"
    w.write_text(yaml.safe_dump(WL))
    t = tmp_path / "t.csv"
    t.write_text(TABLE)
    return w, t


# -- numeric flags -------------------------------------------------------------------------------
FLAG_ROWS = [  # the row: accepted with exit 0 before
    ("plan", "--time-limit", "-1"), ("plan", "--time-limit", "nan"), ("plan", "--time-limit", "inf"),
    ("run", "--interval", "-1"), ("run", "--interval", "nan"), ("run", "--checkpoint-every", "0"),
    ("run", "--checkpoint-every", "-5"), ("run", "--max-retries", "-1"),
    ("run", "--max-retries", str(10**23)), ("run", "--noise", "-1"), ("run", "--noise", "nan"),
    ("run", "--noise", "1e308"), ("run", "--time-limit", "nan"), ("profile", "--budget-min", "inf"),
]


def _argv(cmd, w, t, tmp_path):
    if cmd == "plan":
        return ["plan", w, "--profiles", t]
    if cmd == "run":
        return ["run", w, "--profiles", t, "--simulate", "--no-live", "--run-dir", tmp_path / "run"]
    return ["profile", w, "--store", tmp_path / "store"]


@pytest.mark.parametrize("cmd,flag,value", FLAG_ROWS)
def test_out_of_range_flag_exits_2_naming_flag_and_range(wl, tmp_path, capsys, cmd, flag, value):
    w, t = wl
    code, text = _cli([*_argv(cmd, w, t, tmp_path), flag, value], capsys)
    assert code == 2, text
    assert flag in text and "<=" in text, text  # the flag and its valid range
    assert "Traceback" not in text
    assert not (tmp_path / "run").exists() and not (tmp_path / "store").exists()  # no work started


def test_devices_flag_is_a_choice_and_cuda_needs_cuda(wl, tmp_path, capsys):
    w, t = wl
    code, text = _cli([*_argv("run", w, t, tmp_path), "--devices", "gpu"], capsys)
    assert code == 2 and "--devices" in text and "auto | cuda | cpu" in text, text
    import torch

    if not torch.cuda.is_available():
        code, text = _cli(["run", w, "--profiles", t, "--no-live", "--devices", "cuda",
                           "--run-dir", tmp_path / "r"], capsys)
        assert code == 2 and "--devices cuda" in text and "no CUDA device" in text, text


def test_boundary_values_run(wl, tmp_path, capsys):
    """The edges of every range are accepted and the simulated run completes with them."""
    w, t = wl
    code, text = _cli([*_argv("run", w, t, tmp_path), "--interval", "1", "--noise", "3", "--max-retries", "0",
                       "--checkpoint-every", "1", "--time-limit", "0.1", "--seed", str(2**32 - 1)], capsys)
    assert code == 0, text
    assert "completed" in text


# hypothesis: every numeric flag of every command, drawn from the values users get wrong
NUMERIC_FLAGS = [("plan", "--time-limit"), ("run", "--interval"), ("run", "--time-limit"),
                 ("run", "--max-retries"), ("run", "--checkpoint-every"), ("run", "--noise"), ("run", "--seed"),
                 ("run", "--progress-every"), ("profile", "--budget-min")]
NASTY = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, -0.0, 1e308, -1e308, 10**23, 1e-300, 2**32, 0.5]),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**25, 10**25))


def test_every_numeric_flag_has_a_range():
    """Each numeric option of each command is declared in RANGES (so none escapes the check)."""
    import inspect
    import typing

    from saturn.cli.main import app

    numeric = set()
    for c in app.registered_commands:
        hints = typing.get_type_hints(c.callback)
        for name, par in inspect.signature(c.callback).parameters.items():
            t = hints[name]
            if t in (int, float) or set(typing.get_args(t)) & {int, float}:
                numeric.add((c.name, par.default.param_decls[0]))
    assert numeric == set(NUMERIC_FLAGS), numeric
    assert {f for _, f in numeric} <= set(RANGES)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(NUMERIC_FLAGS), value=NASTY)
def test_hypothesis_numeric_flags_exit_0_or_2_without_traceback(tmp_path_factory, monkeypatch, capsys, which,
                                                                 value):
    """Flags are parsed and checked for real; the work after them is stubbed (it exits 0 at once),
    so this stays fast: exit 0 iff the value is in the flag's range, else 2 naming the flag."""
    import saturn.api.workload as stages  # where `load` (the first stage after the flags) lives

    def reached(*a, **k):
        raise typer.Exit(0)

    monkeypatch.setattr(stages, "load", reached)
    tmp = tmp_path_factory.mktemp("f")
    w, t = tmp / "w.yaml", tmp / "t.csv"
    w.write_text(yaml.safe_dump(WL))
    t.write_text(TABLE)
    cmd, flag = which
    text_value = repr(value) if isinstance(value, float) else str(value)
    code, text = _cli([*_argv(cmd, w, t, tmp), flag, text_value], capsys)
    assert code in (0, 2), text
    assert "Traceback" not in text, text
    rng = RANGES[flag]
    if rng.integer and isinstance(value, float) and rng.contains(value):
        assert code in (0, 2)  # an integral float ("-0.0") may or may not parse as a whole number
    else:
        assert code == (0 if rng.contains(value) else 2), (flag, value, text)
    if code == 2:
        assert flag in text, text
    if isinstance(value, float) and not math.isfinite(value) or value < 0 or value == 10**23:
        assert code == 2


# -- output paths ----------------------------------------------------------------------------------
def test_json_into_missing_directory_creates_nothing(wl, tmp_path, capsys):
    w, t = wl
    target = tmp_path / "nonexistent" / "dir" / "p.json"
    code, text = _cli(["plan", w, "--profiles", t, "--json", target], capsys)
    assert code == 2 and "--json" in text and "does not exist" in text, text
    assert not (tmp_path / "nonexistent").exists()


@pytest.mark.parametrize("cmd,flag", [("plan", "--json"), ("plan", "--gantt"), ("validate", "--json")])
def test_output_into_a_directory_or_under_a_file_exits_2(wl, tmp_path, capsys, cmd, flag):
    w, t = wl
    argv = ["plan", w, "--profiles", t] if cmd == "plan" else ["validate", w]
    code, text = _cli([*argv, flag, tmp_path], capsys)
    assert code == 2 and flag in text and "is a directory" in text and "Traceback" not in text, text
    code, text = _cli([*argv, flag, w / "x.out"], capsys)  # under a file: cannot be written
    assert code == 2 and flag in text and "not a directory" in text and "Traceback" not in text, text


def test_report_outputs_checked(tmp_path, capsys):
    code, text = _cli(["report", tmp_path, "--json", tmp_path], capsys)
    assert code == 2 and "--json" in text and "is a directory" in text, text


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through mode bits")
def test_json_into_read_only_directory(wl, tmp_path, capsys):
    w, t = wl
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    code, text = _cli(["plan", w, "--profiles", t, "--json", ro / "p.json"], capsys)
    assert code == 2 and "cannot write" in text, text


def test_run_dir_that_is_a_file_or_under_a_file(wl, tmp_path, capsys):
    w, t = wl
    f = tmp_path / "afile"
    f.write_text("x")
    for d, needle in ((f, "not a directory"), (f / "run", "is a file")):
        code, text = _cli(["run", w, "--profiles", t, "--simulate", "--no-live", "--run-dir", d], capsys)
        assert code == 2 and "--run-dir" in text and needle in text and "Traceback" not in text, text


def test_unwritable_empty_store_refused_before_any_trial(tmp_path, capsys, monkeypatch):
    import saturn.profiler.session as session

    monkeypatch.setattr(session, "Runner", lambda *a, **k: pytest.fail("a trial started"))
    w = tmp_path / "w.yaml"
    w.write_text(yaml.safe_dump({**WL, "jobs": WL["jobs"][:1]}))
    f = tmp_path / "afile"
    f.write_text("x")
    code, text = _cli(["profile", w, "--store", f / "store"], capsys)
    assert code == 2 and "profile store" in text and "--store" in text and "Traceback" not in text, text


# -- --plan ------------------------------------------------------------------------------------------
def test_plan_file_truncated_or_of_another_workload(wl, tmp_path, capsys):
    w, t = wl
    p = tmp_path / "p.json"
    code, text = _cli(["plan", w, "--profiles", t, "--json", p], capsys)
    assert code == 0, text
    full = p.read_text()
    (tmp_path / "trunc.json").write_text(full[: len(full) // 2])
    other = json.loads(full)
    for a in other["assignments"]:
        a["job"] = "x-" + a["job"]
    (tmp_path / "other.json").write_text(json.dumps(other))
    base = ["run", w, "--profiles", t, "--simulate", "--no-live"]
    code, text = _cli([*base, "--plan", tmp_path / "trunc.json", "--run-dir", tmp_path / "r1"], capsys)
    assert code == 2 and "--plan" in text and "not valid JSON" in text, text
    code, text = _cli([*base, "--plan", tmp_path / "other.json", "--run-dir", tmp_path / "r2"], capsys)
    assert code == 2 and "does not match this workload" in text and "x-a" in text and "lacks" in text, text
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
    warp = json.loads(full)
    warp["assignments"][0]["technique"] = "warp-drive"
    (tmp_path / "warp.json").write_text(json.dumps(warp))
    code, text = _cli([*base, "--plan", tmp_path / "warp.json", "--run-dir", tmp_path / "r4"], capsys)
    assert code == 2 and "unregistered technique(s) warp-drive" in text, text
    code, text = _cli([*base, "--plan", p, "--run-dir", tmp_path / "r3"], capsys)
    assert code == 0, text


# -- clusters -----------------------------------------------------------------------------------------
def test_cluster_with_1e5_cpu_slots_refused_at_validate(tmp_path, capsys):
    w = tmp_path / "w.yaml"
    w.write_text(yaml.safe_dump({**WL, "cluster": {"devices": "cpu", "slots": 10**5}}))
    code, text = _cli(["validate", w], capsys)
    assert code == 2 and "cluster.slots" in text and "1024" in text, text


def test_cuda_cluster_without_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    w = tmp_path / "w.yaml"
    w.write_text(yaml.safe_dump({**WL, "cluster": {"devices": "cuda"}}))
    code, text = _cli(["plan", w], capsys)
    assert code == 2 and "cluster.devices" in text and "no CUDA device" in text and "Traceback" not in text, text


def test_factory_module_that_exits_on_import_is_an_error(tmp_path, capsys, monkeypatch):
    for i, exit_code in enumerate((0, 3)):
        (tmp_path / f"exiting{i}.py").write_text(f"import sys\nsys.exit({exit_code})\ndef build(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for i, where in enumerate(("model", "data")):
        w = tmp_path / "w.yaml"
        w.write_text(yaml.safe_dump({**WL, "jobs": [{"name": "a", "model": "gpt2-tiny",
                                                     where: {"factory": f"exiting{i}:build"}}]}))
        code, text = _cli(["validate", w], capsys)
        assert code == 2 and "sys.exit" in text and f"exiting{i}" in text, text


# -- Ray addresses (subprocesses: ray.init is per process) ------------------------------------------
def _ray_workload(tmp_path, port):
    w = tmp_path / "ray.yaml"
    w.write_text(yaml.safe_dump({**WL, "cluster": {"ray": {"address": f"127.0.0.1:{port}", "devices": "cpu",
                                                           "slots": 1}}}))
    return w


def _saturn(*argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "saturn", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_unreachable_ray_address_fails_fast(tmp_path):
    pytest.importorskip("ray")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # a closed local port: nothing listens there
    t0 = time.monotonic()
    p = _saturn("plan", _ray_workload(tmp_path, port))
    try:
        out, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 2 and time.monotonic() - t0 < 30, out
    assert f"no Ray cluster at '127.0.0.1:{port}'" in out and "Traceback" not in out, out


@pytest.mark.slow
def test_silent_listener_fails_in_bounded_time_and_sigterm_stops_saturn(tmp_path):
    """A port that accepts but never answers: refused within the probe's time; SIGTERM during the
    wait ends the process at once."""
    pytest.importorskip("ray")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    try:
        t0 = time.monotonic()
        p = _saturn("plan", _ray_workload(tmp_path, port))
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 2 and time.monotonic() - t0 < 30, out
        assert "does not answer as a Ray" in out, out
        conn, _ = srv.accept()
        conn.close()
        p = _saturn("plan", _ray_workload(tmp_path, port))
        srv.settimeout(30)
        conn, _ = srv.accept()  # saturn is now waiting for the answer
        t1 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        try:
            p.communicate(timeout=10)
        finally:
            p.kill()
        conn.close()
        assert p.returncode == -signal.SIGTERM and time.monotonic() - t1 < 3
    finally:
        srv.close()


def test_auto_address_probes_ray_address_env(monkeypatch):
    from saturn.executor.ray_cluster import RayUnavailableError, probe_address

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(RayUnavailableError, match="cannot connect"):
        probe_address("auto")
    monkeypatch.delenv("RAY_ADDRESS")
    probe_address("auto")  # Ray finds (or refuses) a local cluster itself
