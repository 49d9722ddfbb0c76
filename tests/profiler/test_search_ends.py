"""The profiler's search always ends (issue 31, item 1).

`saturn profile configs/examples/tiny-cpu.yaml` once showed `profiling 0/38 trials` forever: a
short-check cell waited for its siblings while they waited for it to be measured first, so nothing
was ready, nothing ran and the search was not done. Here the search is driven with random
workloads, priors, stored results, outcomes and budgets, with fake outcomes (no processes), and
must end within a bound on calls, with a trial ready or running in every state before that. The
runner refuses to wait on a search with nothing ready or running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saturn.profiler.runner import Runner
from saturn.profiler.search import CellInput, Search, SearchStuck, canonical_knobs
from saturn.profiler.value import PriorGuess
from tests.helpers.paths import ROOT

KNOBS = [{}, {"bucket_mb": 25}, {"ac": True}, {"ac": True, "bucket_mb": 25}, {"offload": True},
         {"cpu_offload": True, "ac": True}]
TECHS = ["ddp", "fsdp", "spilling", "zero", "mine"]  # spilling: a short check; "mine": no prior
STATUSES = ["ok", "ok", "ok", "oom", "failed", "timeout"]


@st.composite
def searches(draw):
    """A random Search and everything needed to drive it."""
    sigs = [f"s{i}" for i in range(draw(st.integers(1, 3)))]
    cells = []
    for sig in sigs:
        techs = draw(st.lists(st.sampled_from(TECHS), min_size=1, max_size=4, unique=True))
        for tech in techs:
            for g in draw(st.lists(st.sampled_from([1, 2, 3, 4, 8]), min_size=1, max_size=4, unique=True)):
                kind = draw(st.sampled_from(["knobs", "knobs", "knobs", "infeasible", "none"]))
                cands = draw(st.lists(st.sampled_from(KNOBS), min_size=1, max_size=5)) if kind == "knobs" else []
                cells.append(CellInput(sig, tech, g, cands,
                                       "static no" if kind == "infeasible" else None))
    keys = sorted({(c.signature, c.technique, canonical_knobs(k), c.gpus) for c in cells for k in c.candidates})
    use_prior = draw(st.booleans())
    prior, known = {}, {}
    times = st.floats(1e-4, 10.0, allow_nan=False)
    for key in keys:
        if use_prior and key[1] != "mine" and draw(st.integers(0, 9)) > 0:
            prior[key] = PriorGuess(draw(times), feasible=draw(st.integers(0, 4)) > 0,
                                    trial_s=draw(st.floats(0.0, 100.0)), launch_s=draw(st.floats(0.0, 50.0)))
        if draw(st.integers(0, 5)) == 0:
            status = draw(st.sampled_from(STATUSES))
            known[key] = (status, draw(times) if status == "ok" else None)
    search = Search(cells, prior=prior or None, known=known,
                    min_speedup=draw(st.sampled_from([1.0, 1.15, 2.0])),
                    steps_by_signature={s: draw(st.floats(1.0, 1e6)) for s in sigs},
                    jobs_by_signature={s: draw(st.integers(1, 8)) for s in sigs},
                    devices=draw(st.integers(1, 8)), error_band=draw(st.sampled_from([0.0, 0.25, 0.9])))
    budget = draw(st.one_of(st.none(), st.integers(0, 30)))  # calls before the time budget is spent
    return search, len(keys), budget


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=searches(), data=st.data())
def test_every_search_ends_with_a_trial_ready_or_running_until_done(drawn, data):
    search, n_keys, budget = drawn
    recorded: set[tuple] = set()
    calls = 0
    # each round records one trial (or spends the budget): one round per trial at most, plus one
    while not search.done():
        calls += 1
        assert calls <= n_keys + 2, "the search did not end within one round per trial"
        ready, running = search.ready(), search.running()
        assert ready or running, f"nothing ready or running, not done: {search.stuck()}"
        assert not search.stuck()
        if budget is not None and calls > budget:
            search.skip_remaining("budget spent")
            running = search.running()
            if not running:
                continue
        elif ready:  # start some of what is ready (a machine with few devices starts one at a time)
            for trial in ready[:data.draw(st.integers(1, len(ready)))]:
                search.start(trial)
            running = search.running()
        trial = data.draw(st.sampled_from(sorted(running, key=lambda t: t.key)))
        assert trial.key not in recorded, f"{trial.label()} issued twice"
        recorded.add(trial.key)
        status = data.draw(st.sampled_from(STATUSES))
        step = data.draw(st.floats(1e-4, 10.0)) if status == "ok" else None
        search.record(trial, status, step, wall_s=data.draw(st.floats(0.0, 100.0)))
    assert not search.ready() and not search.running() and not search.stuck()


def test_a_short_check_leader_is_measured_not_waited_for():
    """The tiny-cpu case: the prior names spilling the likeliest winner; spilling used to wait for
    ddp (a short check) while ddp waited for the leader, so nothing ever started."""
    cells = [CellInput("s", "ddp", 1, [{}]), CellInput("s", "spilling", 1, [{}])]
    prior = {("s", "ddp", "{}", 1): PriorGuess(2.0), ("s", "spilling", "{}", 1): PriorGuess(1.0)}
    search = Search(cells, prior=prior, steps_by_signature={"s": 100.0})
    ready = search.ready()
    assert [(t.technique, t.gpus) for t in ready] == [("spilling", 1)]


def test_the_runner_refuses_to_wait_on_a_stuck_search(monkeypatch):
    """Nothing ready, nothing running, not done: an internal error naming the cells, at once."""
    monkeypatch.setattr(Search, "_may_open", lambda self, cell: False)  # a rule bug: cells never open
    search = Search([CellInput("s", "ddp", 1, [{}]), CellInput("s", "fsdp", 2, [{}])])
    runner = Runner([0], lambda *a: {"status": "ok", "step_time_s": 1.0}, poll_s=0.01)
    raised: list[BaseException] = []

    def drive() -> None:
        try:
            runner.run(search)
        except BaseException as exc:  # noqa: BLE001 - checked below
            raised.append(exc)

    thread = threading.Thread(target=drive, daemon=True)  # a runner that polls forever fails, not hangs
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the runner kept polling a search that can never move"
    assert raised and isinstance(raised[0], SearchStuck), raised
    assert "stuck cells: s ddpx1 (waiting); s fsdpx2 (waiting)" in str(raised[0])




@pytest.mark.slow
@pytest.mark.parametrize("budget", [[], ["--budget-min", "30"]], ids=["no-budget", "budget-30min"])
def test_saturn_profile_tiny_cpu_finishes(tmp_path, budget):
    """The README's first command, end to end on a fresh store, piped: it ends, exit 0, with rows.
    (30 minutes of budget cannot rescue a search that never ends: the subprocess times out first.)"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), SATURN_PROFILES=str(tmp_path / "env-store"))
    store = tmp_path / "store"
    try:
        res = subprocess.run([sys.executable, "-m", "saturn", "profile", "configs/examples/tiny-cpu.yaml",
                              "--store", str(store), *budget], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"saturn profile did not end within {exc.timeout}s: {(exc.stderr or b'')[-2000:]!r}")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "trial(s) run" in out, out[-3000:]
    rows = pd.read_csv(store / "profiles.csv")
    assert (rows["status"] == "ok").any(), rows
    assert not (tmp_path / "env-store").exists()  # --store wins over $SATURN_PROFILES
