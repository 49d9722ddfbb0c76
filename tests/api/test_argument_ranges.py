"""The Python API's numeric and path arguments are checked like the CLI's flags (issue 31, item 10).

`saturn.run(..., simulate=True, interval_s=nan)` and `Orchestrator(sim_speed=nan)` never finished;
`checkpoint_every=0` and negative limits were accepted; wrong types gave raw TypeErrors. Now each is
a SaturnError naming the argument, with the range of its CLI flag (`saturn.ranges`), before any
work starts.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import saturn
from saturn.errors import SaturnError, SpecError
from saturn.ranges import API_ARGS, RANGES
from tests.helpers.paths import ROOT

NAN = float("nan")
RUN_ARGS = ["interval_s", "time_limit_s", "max_retries", "checkpoint_every", "noise", "seed"]


class Started(Exception):
    """Raised where the work would start: the arguments passed their checks."""


@pytest.fixture()
def no_work(monkeypatch):
    def refuse(*a, **k):
        raise Started()

    monkeypatch.setattr("saturn.api.run_stages.prepare_run", refuse)


def _wl():
    return saturn.load_workload(ROOT / "configs/examples/tiny-cpu.yaml")


@pytest.mark.parametrize("kw", [{"interval_s": NAN}, {"checkpoint_every": 0}, {"checkpoint_every": -5},
                                {"time_limit_s": -1.0}, {"max_retries": -1}, {"time_limit_s": math.inf},
                                {"max_retries": 1.5}, {"seed": -1}, {"noise": NAN}])
def test_run_refuses_out_of_range_numbers_naming_the_argument(no_work, kw):
    (name, value), = kw.items()
    with pytest.raises(SaturnError, match=rf"saturn.run: {name} \(like {API_ARGS[name]}\) must be "):
        saturn.run(_wl(), simulate=True, **kw)


@pytest.mark.parametrize("kw, name", [({"run_dir": 12345}, "run_dir"), ({"profiles": 12}, "profiles"),
                                      ({"store_dir": 3.5}, "store_dir")])
def test_run_refuses_wrong_types_naming_the_argument(no_work, kw, name):
    with pytest.raises(SaturnError, match=rf"saturn.run: {name} must be a path"):
        saturn.run(_wl(), simulate=True, **kw)


@pytest.mark.parametrize("kw", [{"sim_speed": NAN}, {"sim_speed": 0}, {"sim_speed": -2.0}, {"interval_s": NAN},
                                {"time_limit_s": -1}, {"max_retries": -1}, {"checkpoint_every": -3},
                                {"run_dir": 12345}, {"profiles": 12}])
def test_orchestrator_refuses_bad_arguments_naming_them(kw):
    (name, _), = kw.items()
    with pytest.raises(SaturnError, match=rf"Orchestrator: {name}\b"):
        saturn.Orchestrator(saturn.Cluster(devices="cpu", slots=1), backend="simulate", **kw)


def test_load_workload_of_none_is_a_spec_error():
    with pytest.raises(SpecError, match=r"load_workload\(source\): give a YAML file path or YAML text, not NoneType"):
        saturn.load_workload(None)
    with pytest.raises(SpecError, match="not int"):
        saturn.load_workload(12)


def test_import_saturn_makes_saturn_api_available():
    code = "import saturn; print(saturn.api.synthetic_profiles.__name__)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and res.stdout.strip() == "synthetic_profiles", res.stderr[-2000:]


NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**10, 10**10),
                    st.sampled_from([0, 1, -1, 0.5, 1e9, 2**32, NAN, math.inf, -math.inf]))


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(RUN_ARGS), value=NUMBERS)
def test_run_numbers_are_refused_exactly_when_the_flag_would_be(name, value):
    """The API and the CLI share one range per setting, and one description of it."""
    import pytest as _pytest

    rng = RANGES[API_ARGS[name]]
    with _pytest.MonkeyPatch.context() as mp:
        mp.setattr("saturn.api.run_stages.prepare_run", lambda *a, **k: (_ for _ in ()).throw(Started()))
        if rng.contains(value):
            with _pytest.raises(Started):
                saturn.run(WL, simulate=True, **{name: value})
        else:
            with _pytest.raises(SaturnError) as exc:
                saturn.run(WL, simulate=True, **{name: value})
            assert f"{name} (like {API_ARGS[name]}) must be {rng.describe()}" in str(exc.value)


WL = _wl()
