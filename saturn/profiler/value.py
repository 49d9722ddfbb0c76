"""What a trial is worth: measure only what can change the plan (issue 24, pure logic).

Why: a newcomer's first `saturn profile` spent 474 s measuring options for a run whose training
took about 100 s, many of them options the arithmetic says cannot win (spilling and ZeRO-3 for a
model that trains with DDP on one GPU at a third of their step time). With the prior's estimate
of every option (`saturn.prior.cost_model`), the search measures, breadth first:

1. the likeliest winner of every job (signature): the option with the least estimated GPU-time
   per step among those expected to fit, so every job has one measured option early;
2. then an option only if its optimistic estimate (estimate x (1 - error band)) could beat the
   job's best measured option by more than the trial costs: the saving, in seconds of the
   machine, is max(steps x (best step - optimistic step), steps x (best GPU-s per step -
   optimistic GPU-s per step) / devices), less the start-up it adds per job launch; the cost is
   the trial's estimated wall time x its GPUs / devices. `steps` are all the steps of the
   signature's jobs (a sweep runs the option N times);
3. nothing else: an option that cannot pay for itself is skipped, and the search stops when none
   can. Every measurement of the session corrects the estimates of the rest (`correction`), and
   the trials seen so far tell what a trial costs. `saturn profile --exhaustive` measures
   everything (the search then runs without a prior).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

DEFAULT_ERROR_BAND = 0.25  # the prior's step-time error we allow for when deciding to measure
# (its leave-one-out median error on measured H200 rows is about half that: BENCHMARKS.md, prior)


@dataclass(frozen=True)
class PriorGuess:
    """The prior's view of one trial key (signature, technique, knobs, GPU count)."""

    step_time_s: float
    feasible: bool = True
    trial_s: float = 0.0  # estimated wall time of the trial (launch + warm-up + timed steps)
    reason: str = ""  # why it is expected not to fit
    launch_s: float = 0.0  # estimated fixed cost of one launch of a job with it (compile, ...)


def leader_score(gpus: int, guess: PriorGuess, steps: float, factor: float = 1.0) -> tuple:
    """Sort key of the likeliest winner: expected to fit, least GPU-seconds for the job's steps
    (launch included, so a slow-to-start setting must earn its start), fastest."""
    run = steps * guess.step_time_s * factor + guess.launch_s
    return (not guess.feasible, gpus * run, run)


def correction(ratios: dict[tuple[str, str], list[float]], signature: str, technique: str) -> float:
    """The live correction of the prior from this session's measurements (measured / estimated):
    this signature with this technique, else this technique on any signature, else this
    signature with any technique, else all of them, else 1."""
    import statistics

    def pick(pred) -> list[float]:
        return [r for (s, t), rs in ratios.items() if pred(s, t) for r in rs]

    for pool in (ratios.get((signature, technique), []), pick(lambda s, t: t == technique),
                 pick(lambda s, t: s == signature), pick(lambda s, t: True)):
        if pool:
            return float(statistics.median(pool))
    return 1.0


def worth_measuring(gpus: int, guess: PriorGuess, best_step_s: float, best_area_s: float, steps: float,
                    devices: int, band: float = DEFAULT_ERROR_BAND, factor: float = 1.0,
                    trial_s: Optional[float] = None, extra_launches_s: float = 0.0) -> Optional[str]:
    """None when measuring this option could pay for itself against the best measured option
    (`best_step_s` fastest step, `best_area_s` least GPU-seconds per step); else the reason not to.
    `factor`: the live correction of the estimate; `trial_s`: the trial's cost when this session
    has seen similar trials (else the prior's guess); `extra_launches_s`: the start-up it adds over
    the best option, summed over the jobs that would launch with it (compilation)."""
    if not guess.feasible:
        return f"the prior expects it not to fit ({guess.reason or 'out of memory'})"
    devices = max(1, int(devices))
    optimistic = guess.step_time_s * factor * (1.0 - band)
    value = max(steps * (best_step_s - optimistic), steps * (best_area_s - gpus * optimistic) / devices)
    value -= max(0.0, extra_launches_s)
    cost = (guess.trial_s if trial_s is None else trial_s) * gpus / devices
    if value > cost:
        return None
    return (f"cannot pay for itself: at best {optimistic:.3g} s/step on {gpus} GPU(s) (prior x{1 - band:.2f}) "
            f"vs measured {best_step_s:.3g} s/step; saves <= {max(value, 0.0):.0f} s over {steps:.0f} steps, "
            f"the trial costs ~{cost:.0f} s")
