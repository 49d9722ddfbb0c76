"""The profiler's smart search, driven with synthetic outcomes (no processes, no clocks)."""

from __future__ import annotations

import pytest

from saturn.profiler.search import CellInput, Search, canonical_knobs, knob_tier


def cells(sig="s", tech="t", counts=(1, 2, 4, 8), cands=({},), **kw):
    return [CellInput(sig, tech, g, candidates=[dict(c) for c in cands], **kw) for g in counts]


def drain(search, outcome):
    """Run everything `ready()` offers, feeding `outcome(trial) -> (status, step)`; return trials."""
    ran = []
    for _ in range(100):
        ready = search.ready()
        if not ready:
            break
        for t in ready:
            search.start(t)
            ran.append(t)
            search.record(t, *outcome(t))
    assert search.done()
    return ran


def test_knob_tiers():
    assert knob_tier({}) == 0
    assert knob_tier({"microbatches": 4, "offload": False}) == 0
    assert knob_tier({"activation_checkpointing": True}) == 1
    assert knob_tier({"offload": "cpu", "stage": 3}) == 2
    assert knob_tier({"cpu_offload": True, "activation_checkpointing": True}) == 2
    assert knob_tier({"offload": "none"}) == 0
    assert canonical_knobs({"b": 1, "a": 2}) == canonical_knobs('{"a":2,"b":1}') == '{"a":2,"b":1}'


def test_first_two_counts_start_together_then_ladder_waits():
    s = Search(cells())
    first = s.ready()
    assert sorted(t.gpus for t in first) == [1, 2]
    for t in first:
        s.start(t)
    assert s.ready() == []  # 4 waits for both results
    s.record(first[0], "ok", 1.0 / first[0].gpus)
    assert s.ready() == []
    s.record(first[1], "ok", 1.0 / first[1].gpus)
    assert [t.gpus for t in s.ready()] == [4]


def test_ladder_stops_when_speedup_flattens():
    s = Search(cells(), min_speedup=1.15)
    ran = drain(s, lambda t: ("ok", 1.0 / t.gpus ** 0.1))  # 1.07x per doubling
    assert sorted(t.gpus for t in ran) == [1, 2]
    reasons = {(k.gpus, k.reason.split(":")[0]) for k in s.skipped}
    assert (4, "speed-up flattened") in reasons
    assert any(k.gpus == 8 for k in s.skipped)


def test_ladder_goes_on_while_scaling_and_through_oom():
    s = Search(cells())
    ran = drain(s, lambda t: ("ok", 1.0 / t.gpus))
    assert sorted(t.gpus for t in ran) == [1, 2, 4, 8]
    # OOM on small counts never stops the ladder (more GPUs may fit)
    s = Search(cells())
    ran = drain(s, lambda t: ("oom", None) if t.gpus < 4 else ("ok", 1.0 / t.gpus))
    assert sorted(t.gpus for t in ran) == [1, 2, 4, 8]


def test_ladder_stops_after_two_crashes():
    s = Search(cells())
    ran = drain(s, lambda t: ("failed", None))
    assert sorted(t.gpus for t in ran) == [1, 2]
    assert any("more GPUs will not fix" in k.reason for k in s.skipped)


def test_offload_only_when_plain_ooms():
    cands = ({"offload": False}, {"activation_checkpointing": True}, {"offload": True})
    # plain fits: neither AC nor offload runs
    s = Search(cells(counts=(1,), cands=cands))
    ran = drain(s, lambda t: ("ok", 1.0))
    assert [t.knobs_dict for t in ran] == [{"offload": False}]
    assert len(s.skipped) == 2
    # plain OOM, AC fits: offload skipped
    s = Search(cells(counts=(1,), cands=cands))
    ran = drain(s, lambda t: ("oom", None) if knob_tier(t.knobs_dict) == 0 else ("ok", 2.0))
    assert [knob_tier(t.knobs_dict) for t in ran] == [0, 1]
    # everything OOMs until offload
    s = Search(cells(counts=(1,), cands=cands))
    ran = drain(s, lambda t: ("oom", None) if knob_tier(t.knobs_dict) < 2 else ("ok", 3.0))
    assert [knob_tier(t.knobs_dict) for t in ran] == [0, 1, 2]
    assert s.best("s", "t", 1) == 3.0
    # a crash (not OOM) is not cured by offloading
    s = Search(cells(counts=(1,), cands=cands))
    ran = drain(s, lambda t: ("failed", None))
    assert len(ran) == 1


def test_spilling_gets_a_short_check_when_plain_fits():
    cs = cells(tech="ddp", counts=(1, 2)) + cells(tech="spilling", counts=(1, 2),
                                                  cands=({"prefetch": 1}, {"prefetch": 2}))
    s = Search(cs, steps=5, short_steps=2)
    first = s.ready()
    assert {t.technique for t in first} == {"ddp"}  # spilling waits for the plain techniques
    ran = drain(s, lambda t: ("ok", 1.0))
    spill = [t for t in ran if t.technique == "spilling"]
    assert len(spill) == 2 and all(t.short and t.steps == 2 for t in spill)
    assert all(t.knobs_dict == {"prefetch": 1} for t in spill)


def test_spilling_gets_full_trials_when_nothing_plain_fits():
    cs = cells(tech="ddp", counts=(1,)) + cells(tech="spilling", counts=(1,),
                                               cands=({"prefetch": 1}, {"prefetch": 2}))
    s = Search(cs, steps=5, short_steps=2)
    ran = drain(s, lambda t: ("oom", None) if t.technique == "ddp" else ("ok", 3.0))
    spill = [t for t in ran if t.technique == "spilling"]
    assert len(spill) == 2 and not any(t.short for t in spill) and spill[0].steps == 5


def test_known_results_are_reused_not_rerun():
    known = {("s", "t", "{}", 1): ("ok", 1.0), ("s", "t", "{}", 2): ("ok", 0.5)}
    s = Search(cells(counts=(1, 2, 4)), known=known)
    ran = drain(s, lambda t: ("ok", 1.0 / t.gpus))
    assert [t.gpus for t in ran] == [4]
    assert sorted(t.gpus for t in s.reused) == [1, 2]
    # everything known: nothing to run at all
    s = Search(cells(counts=(1, 2)), known=known)
    assert s.ready() == [] and s.done()


def test_static_infeasible_and_budget_stop():
    cs = [CellInput("s", "t", 1, infeasible_reason="needs 2 GPUs")] + cells(counts=(2, 4, 8))
    s = Search(cs)
    assert [c.gpus for c in s.static] == [1]
    ready = s.ready()
    assert sorted(t.gpus for t in ready) == [2, 4]  # 1 is resolved (infeasible) -> 2, 4 open
    s.start(ready[0])
    skipped = s.skip_remaining("time budget spent")
    assert {k.gpus for k in skipped} == {ready[1].gpus, 8}
    assert not s.done()  # one still running
    s.record(ready[0], "ok", 1.0)
    assert s.done() and s.ready() == []


def test_duplicate_cells_rejected():
    with pytest.raises(ValueError):
        Search(cells(counts=(1, 1)))


def test_pick_devices_packs_tightly():
    from saturn.profiler.runner import pick_devices

    assert pick_devices([3, 0, 1, 2], 2) == [0, 1]
    assert pick_devices([0, 2, 3, 5], 2) == [2, 3]
    assert pick_devices([1, 4, 6, 7], 3) == [4, 6, 7]
    assert pick_devices([5], 1) == [5]


# ------------------------------------------------------------------ the value rule (issue 24)
from saturn.profiler.value import PriorGuess  # noqa: E402


def prior_for(cells_, step, trial_s=10.0, feasible=lambda key: True):
    """A prior over every (cell, knob): `step(sig, tech, gpus)` seconds per step."""
    out = {}
    for c in cells_:
        for k in c.candidates:
            key = (c.signature, c.technique, canonical_knobs(k), c.gpus)
            out[key] = PriorGuess(step(c.signature, c.technique, c.gpus), feasible(key), trial_s)
    return out


def test_value_order_measures_one_option_of_every_job_before_a_second_of_any():
    cs = [c for sig in ("a", "b", "c") for tech in ("ddp", "fsdp") for c in cells(sig, tech, counts=(1, 2))]
    speed = {"ddp": 1.0, "fsdp": 0.9}
    prior = prior_for(cs, lambda s, t, g: speed[t] / g ** 0.9)  # everything worth measuring
    s = Search(cs, prior=prior, steps_by_signature={"a": 1e5, "b": 1e5, "c": 1e5}, devices=2)
    ran = drain(s, lambda t: ("ok", speed[t.technique] / t.gpus ** 0.9))
    first = ran[:3]
    assert sorted(t.signature for t in first) == ["a", "b", "c"]  # one per job, before any second
    assert all((t.technique, t.gpus) == ("fsdp", 1) for t in first)  # the likeliest winner: least GPU-s/step
    assert len(ran) > 3  # then the options that can pay for themselves (many steps)


def test_a_dominated_option_is_not_measured_and_the_search_stops():
    cs = cells("a", "ddp", counts=(1,)) + cells("a", "zero", counts=(1,)) + cells("a", "ddp2", counts=(2,))
    step = {"ddp": 0.1, "zero": 0.3, "ddp2": 0.16}  # zero: 3x slower; ddp2: 2 GPUs, no faster even at -35%
    prior = prior_for(cs, lambda s, t, g: step[t])
    s = Search(cs, prior=prior, steps_by_signature={"a": 1000}, devices=2)
    ran = drain(s, lambda t: ("ok", step[t.technique]))
    assert [t.technique for t in ran] == ["ddp"]
    why = {k.technique: k.reason for k in s.skipped}
    assert why["zero"].startswith("cannot pay for itself") and why["ddp2"].startswith("cannot pay for itself")


def test_an_option_that_could_win_is_measured_when_the_job_is_long():
    cs = cells("a", "ddp", counts=(1, 2))
    prior = prior_for(cs, lambda s, t, g: 0.105 / g ** 0.95)  # near-linear scaling
    for steps, expect in ((10, [1]), (1e6, [1, 2])):
        s = Search(cs, prior=prior, steps_by_signature={"a": steps}, devices=2)
        assert sorted(t.gpus for t in drain(s, lambda t: ("ok", 0.1 / t.gpus))) == expect


def test_a_leader_that_runs_out_of_memory_hands_over_to_the_next_likeliest():
    cs = cells("a", "ddp", counts=(1,)) + cells("a", "fsdp", counts=(1,))
    prior = prior_for(cs, lambda s, t, g: {"ddp": 0.1, "fsdp": 0.2}[t])
    s = Search(cs, prior=prior, steps_by_signature={"a": 10}, devices=1)
    ran = drain(s, lambda t: ("oom", None) if t.technique == "ddp" else ("ok", 0.2))
    assert [t.technique for t in ran] == ["ddp", "fsdp"]  # the job ends with a measured option


def test_the_prior_expecting_out_of_memory_is_skipped_after_the_first_round():
    cs = cells("a", "ddp", counts=(1,)) + cells("a", "fsdp", counts=(2,))
    prior = prior_for(cs, lambda s, t, g: 0.01 if t == "fsdp" else 0.1,
                      feasible=lambda key: key[1] != "fsdp")
    s = Search(cs, prior=prior, steps_by_signature={"a": 1e6}, devices=2)
    ran = drain(s, lambda t: ("ok", 0.1))
    assert [t.technique for t in ran] == ["ddp"]
    assert any(k.technique == "fsdp" and "not to fit" in k.reason for k in s.skipped)


def test_measurements_correct_the_prior_during_the_search():
    """The leader measures 10x slower than the prior thought: the rest is judged on corrected
    estimates (uncorrected, the 2-GPU trial would look worth 19 s for a 10 s trial)."""
    cs = cells("a", "ddp", counts=(1, 2))
    prior = prior_for(cs, lambda s, t, g: {1: 0.01, 2: 0.008}[g], trial_s=10.0)
    s = Search(cs, prior=prior, steps_by_signature={"a": 200}, devices=2)
    ran = drain(s, lambda t: ("ok", 0.1 if t.gpus == 1 else 0.08))
    assert [t.gpus for t in ran] == [1]
    assert any(k.gpus == 2 and k.reason.startswith("cannot pay for itself") for k in s.skipped)
    # uncorrected, the same trial would be measured
    from saturn.profiler.value import worth_measuring

    guess = prior[("a", "ddp", "{}", 2)]
    assert worth_measuring(2, guess, 0.1, 0.1, 200, 2) is None
    assert worth_measuring(2, guess, 0.1, 0.1, 200, 2, factor=10.0) is not None
    # a longer job makes it worth measuring even corrected
    s = Search(cs, prior=prior, steps_by_signature={"a": 2000}, devices=2)
    assert sorted(t.gpus for t in drain(s, lambda t: ("ok", 0.1 if t.gpus == 1 else 0.08))) == [1, 2]


def test_a_slow_starting_setting_must_earn_its_start_up():
    """compile=True: faster steps, 12 s more per launch; with two jobs that is 24 s to earn first."""
    from saturn.profiler.value import worth_measuring

    guess = PriorGuess(0.09, True, trial_s=10.0, launch_s=22.0)
    assert worth_measuring(1, guess, 0.1, 0.1, steps=600, devices=1) is None
    assert worth_measuring(1, guess, 0.1, 0.1, steps=600, devices=1, extra_launches_s=24.0) is not None
