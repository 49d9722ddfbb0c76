"""Progress a person can trust (#34): ETAs never negative, none for a job that has not started,
a range that holds its estimate; plain progress lines for a run whose output is not a terminal."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import saturn
from saturn.api.run_stages import prepare_run, start_executor
from saturn.executor.progress import EtaTracker, ProgressLines
from saturn.executor.state import ACTIVE
from saturn.fmt import duration, short_names

WL = """
name: eta
cluster: {devices: cpu, slots: 2}
defaults: {model: gpt2-tiny, batch_size: 4, seq_len: 16, precision: fp32, steps: %d, gpus: [1, 2]}
jobs:
  - {name: a}
  - {name: b, steps: %d}
  - {name: c, model: vit-tiny, data: synthetic-images, seq_len: 1}
"""


class Checker(ProgressLines):
    """Progress lines that also check every ETA at every executor step."""

    def __init__(self):
        self.lines: list[str] = []
        super().__init__(self.lines.append, every_s=0.0)
        self.checked = {"job": 0, "run": 0}

    def update(self, ex):
        super().update(ex)
        for js in ex.state.jobs.values():
            e = self.eta.job(ex, js)
            if js.status not in ACTIVE:
                assert e is None, (js.name, js.status, e)  # never for a job not started (or ended)
                continue
            assert e is not None and 0.0 <= e.lo <= e.mid <= e.hi, (js.name, e)
            self.checked["job"] += 1
        r = self.eta.run(ex)
        if r is not None:
            assert 0.0 <= r.lo <= r.mid <= r.hi, r
            assert all(r.mid >= e.mid for js in ex.state.jobs.values() if (e := self.eta.job(ex, js)))
            self.checked["run"] += 1
        if ex.state.done():
            assert r is not None and r.mid == 0.0


@settings(max_examples=4, deadline=None)
@given(noise=st.floats(0.0, 1.5), seed=st.integers(0, 2**16), steps=st.integers(8, 60),
       b_steps=st.integers(8, 120))
def test_eta_never_negative_in_a_noisy_simulated_run(noise, seed, steps, b_steps):
    wl = saturn.load_workload(WL % (steps, b_steps))
    prof = saturn.synthetic_profiles(wl.jobs, step_time_s=0.5, startup_s=2.0, gpus=(1, 2))
    prep = prepare_run(wl, prof, simulate=True, run_dir=Path(tempfile.mkdtemp()) / "run", time_limit_s=2.0,
                       say=lambda s: None)
    chk = Checker()
    ex = start_executor(prep, display=chk, simulate=True, noise=noise, seed=seed, checkpoint_every=3,
                        time_limit_s=2.0)
    try:
        ex.run_until_done()
    finally:
        ex.backend.shutdown()
        ex.close()
    assert chk.checked["job"] > 0 and chk.checked["run"] > 0
    text = "\n".join(chk.lines)
    assert text.count("started ") >= 3 and text.count("completed ") == 3, text
    assert "jobs 3/3 done, 0 running, 0 waiting" in text and "slot" in text and "GPU" not in text


def test_eta_range_comes_from_the_spread_of_step_times():
    from types import SimpleNamespace as NS

    tr = EtaTracker()
    seg = NS(attempt=1, last_progress=None)
    js = NS(name="a", current=seg)
    state = NS(jobs={"a": js})
    t = 0.0
    for i, dt in enumerate([1.0, 1.0, 2.0, 1.0, 4.0, 1.0, 1.0]):
        t += dt
        seg.last_progress = (t, i + 1)
        tr.observe(state)
    lo, hi = tr.spread("a")
    assert lo <= 1.0 < hi  # slow outliers widen the range upwards only


def test_one_duration_format_and_names_keep_their_differing_tail():
    assert [duration(x) for x in (None, -3.0, 0.04, 56.3, 138, 3725)] == ["-", "0.0s", "0.0s", "56.3s", "2m18s",
                                                                           "1h02m"]
    names = [f"gpt2-medium-wikitext-lr={lr}" for lr in ("0.001", "0.003", "0.0001")]
    short = short_names(names, max_len=20)
    assert {s[-8:] for s in short.values()} == {n[-8:] for n in names} and all(len(s) <= 21 for s in short.values())


def test_log_to_checks_the_tracker_before_any_work(capsys):
    import importlib.util

    from tests.helpers.cli import saturn_cli

    tiny = Path(__file__).resolve().parents[2] / "configs/examples/tiny-cpu.yaml"
    code, out, _ = saturn_cli(["run", tiny, "--simulate", "--log-to", "neptune:x"], capsys)
    assert code == 2 and "unknown tracker 'neptune'" in out
    code, out, _ = saturn_cli(["run", tiny, "--simulate", "--log-to", "tensorboard"], capsys)
    assert code == 2 and "tensorboard:DIR" in out
    for lib in ("mlflow", "wandb"):
        if importlib.util.find_spec(lib) is None:
            code, out, _ = saturn_cli(["run", tiny, "--simulate", "--log-to", lib], capsys)
            assert code == 2 and f"pip install {lib}" in out


def test_gpu_cluster_workload_on_a_machine_without_those_gpus_is_refused(capsys, monkeypatch):
    import torch

    from tests.helpers.cli import saturn_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    sweep = Path(__file__).resolve().parents[2] / "configs/examples/gpt2-sweep.yaml"
    code, out, t = saturn_cli(["run", sweep, "--run-dir", Path(tempfile.mkdtemp()) / "r"], capsys)
    assert code == 2 and "--simulate" in out and "devices: cpu" in out and "0 CUDA GPU" in out, out
    assert t < 30
