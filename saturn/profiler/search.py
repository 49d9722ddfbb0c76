"""Which trials to run next, given the results so far: the profiler's smart search (pure logic).

The profiler measures cells: one (profile signature, technique, GPU count), each with the knob
settings the technique proposes. Trying everything is slow, so the search skips what cannot win:

* **GPU ladder.** The allowed GPU counts of one (signature, technique) are tried in increasing
  order. The two smallest counts start at once; a larger count starts only when the step from the
  previous two counts still sped up by at least `min_speedup` (default 1.15x). When the speed-up
  flattens, the larger counts are skipped: more GPUs for the same speed can never win a plan. An
  infeasible smaller count (e.g. OOM) never stops the ladder: more GPUs may make it fit; but two
  counts in a row that crashed (status 'failed', not OOM) do.
* **Memory tiers.** A cell's knob settings are tiered: plain (tier 0), activation checkpointing
  (tier 1), offload (tier 2). A tier runs only when every setting of the tiers before it was
  infeasible and at least one of them ran out of memory (a slower, leaner setting cannot beat a
  plain one that fits, and does not cure a crash).
* **Short checks.** Spilling (and any technique named in `short_check`) waits until the plain
  techniques of the same signature and GPU count are measured, unless the prior names it the
  likeliest winner. If a plain one fits (at this or a smaller GPU count), spilling gets only a short
  check: its first knob setting, `short_steps` timed steps; otherwise the full treatment.
* **Value (with a prior).** Given the prior's estimate of every trial (`prior=`), the GPU ladder
  gives way to `saturn.profiler.value`: first the likeliest winner of every signature, so every
  job has one measured option before any job gets a second; then only trials that could pay for
  themselves against the best measured option; the rest are skipped with the reason. Cells the
  prior has no estimate for (user techniques) follow the rules above.

No processes, clocks or files: `Search` is fed results and answers `ready()` (tests/profiler/test_search.py)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from saturn.parse import canonical_knobs  # noqa: F401 - re-exported
from saturn.profiler.value import DEFAULT_ERROR_BAND, PriorGuess, correction, leader_score, worth_measuring

SHORT_CHECK_TECHNIQUES = frozenset({"spilling"})
OK = "ok"
OOM = "oom"
HOST_OOM = "host_oom"  # killed by the kernel for host memory: a leaner setting may fit, as for OOM
FAILED = "failed"
SKIPPED = "skipped"  # a knob setting the value rule decided not to measure

_FALSY = (None, False, 0, "", "none", "None", "off", "no", "false", "False")


def knob_tier(knobs: Mapping[str, Any]) -> int:
    """0 plain, 1 activation checkpointing (recompute), 2 offload to host memory."""
    def on(v: Any) -> bool:
        return not any(v is f or (type(v) is type(f) and v == f) for f in _FALSY)

    keys = [(str(k).lower(), v) for k, v in knobs.items()]
    if any("offload" in k and on(v) for k, v in keys):
        return 2
    if any((k in ("ac", "act_ckpt", "activation_checkpointing", "checkpoint_activations")
            or "recompute" in k or "activation_checkpoint" in k) and on(v) for k, v in keys):
        return 1
    return 0


@dataclass(frozen=True)
class TrialSpec:
    """One trial to run: a knob setting of a cell, for `steps` timed steps."""

    signature: str
    technique: str
    gpus: int
    knobs: str  # canonical JSON
    steps: int
    short: bool = False

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.signature, self.technique, self.knobs, self.gpus)

    @property
    def knobs_dict(self) -> dict[str, Any]:
        return json.loads(self.knobs)

    def label(self) -> str:
        knobs = "" if self.knobs == "{}" else " " + self.knobs
        return f"{self.signature} {self.technique}x{self.gpus}{knobs}"


@dataclass
class CellInput:
    """What the search must know about one cell before it starts (from the technique)."""

    signature: str
    technique: str
    gpus: int
    candidates: list[dict[str, Any]] = field(default_factory=list)
    infeasible_reason: Optional[str] = None  # the technique's static `feasible()` said no


class SearchStuck(RuntimeError):
    """A bug: nothing ready or running, cells left; raised rather than waiting for no result."""


@dataclass(frozen=True)
class Skip:
    """Something the search decided not to run, and why."""

    signature: str
    technique: str
    gpus: int
    knobs: Optional[str]
    reason: str


@dataclass
class _Cell:
    inp: CellInput
    short_check: bool
    state: str = "waiting"  # waiting -> open -> resolved, or pruned
    short: bool = False
    plan: list[tuple[int, str]] = field(default_factory=list)  # (tier, knobs) in order
    tier: Optional[int] = None
    results: dict[str, tuple[str, Optional[float]]] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)  # knobs of the current tier awaiting the value rule
    has_prior: bool = False

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.inp.signature, self.inp.technique, self.inp.gpus)

    def best(self) -> Optional[float]:
        times = [t for s, t in self.results.values() if s == OK and t is not None]
        return min(times) if times else None

    def ok(self) -> bool:
        return self.state == "resolved" and self.best() is not None


class Search:
    """The trials worth running, revealed step by step as results come in.

    `ready()` returns trials that may start now (each once); `record()` feeds back an outcome;
    `done()` says whether anything is left. `known` holds outcomes already in the profile store
    (key -> (status, step_time_s)): those trials are never returned by `ready()` and are listed in
    `reused` instead.

    `prior` (trial key -> `PriorGuess`) switches on the value rule for the cells it covers;
    `steps_by_signature` (all steps of the jobs of a signature), `jobs_by_signature` (launches) and
    `devices` (the devices the trials share) weigh a trial's saving against its cost
    (`saturn.profiler.value`).
    """

    def __init__(self, cells: Iterable[CellInput], *, steps: int = 5, short_steps: int = 2,
                 min_speedup: float = 1.15,
                 short_check: Iterable[str] = SHORT_CHECK_TECHNIQUES,
                 known: Optional[Mapping[tuple, tuple[str, Optional[float]]]] = None,
                 prior: Optional[Mapping[tuple, PriorGuess]] = None,
                 steps_by_signature: Optional[Mapping[str, float]] = None, devices: int = 1,
                 error_band: float = DEFAULT_ERROR_BAND, jobs_by_signature: Optional[Mapping[str, int]] = None):
        self._prior = dict(prior or {})
        self._steps_by_sig = dict(steps_by_signature or {})
        self._jobs_by_sig = dict(jobs_by_signature or {})
        self._devices = max(1, int(devices))
        self._band = float(error_band)
        self._leader: dict[str, tuple] = {}  # signature -> the trial key measured as its first option
        self._ratios: dict[tuple[str, str], list[float]] = {}  # (sig, technique) -> measured / prior
        self._walls: dict[str, list[float]] = {}  # technique -> wall seconds of its trials here
        self.steps = int(steps)
        self.short_steps = int(short_steps)
        self.min_speedup = float(min_speedup)
        short_check = set(short_check)
        self._known = dict(known or {})
        self._cells: dict[tuple[str, str, int], _Cell] = {}
        for inp in cells:
            cell = _Cell(inp, short_check=inp.technique in short_check)
            cell.has_prior = any((inp.signature, inp.technique, canonical_knobs(k), inp.gpus) in self._prior
                                 for k in inp.candidates)
            if cell.key in self._cells:
                raise ValueError(f"duplicate cell {cell.key}")
            self._cells[cell.key] = cell
        self._ladders: dict[tuple[str, str], list[int]] = {}
        for sig, tech, g in self._cells:
            self._ladders.setdefault((sig, tech), []).append(g)
        for counts in self._ladders.values():
            counts.sort()
        self._pending: dict[tuple, TrialSpec] = {}  # issued, not started
        self._running: dict[tuple, TrialSpec] = {}
        self._finished: dict[tuple, tuple[str, Optional[float]]] = {}
        self.reused: list[TrialSpec] = []
        self.skipped: list[Skip] = []
        self.static: list[CellInput] = []  # cells the technique declared infeasible
        self._stopped = False
        for cell in self._cells.values():
            if cell.inp.infeasible_reason is not None:
                cell.state = "resolved"
                self.static.append(cell.inp)
            elif not cell.inp.candidates:
                cell.state = "resolved"
                self.skipped.append(Skip(*cell.key, None, "the technique proposed no knob settings"))
        self._advance()

    # -- queries ---------------------------------------------------------------------------------
    def ready(self) -> list[TrialSpec]:
        """Issued trials not yet started, biggest GPU count first (so they are placed first)."""
        self._advance()
        leaders = set(self._leader.values())
        return sorted(self._pending.values(), key=lambda t: (t.key not in leaders, -t.gpus, t.signature, t.technique))

    def running(self) -> list[TrialSpec]:
        return list(self._running.values())

    def done(self) -> bool:
        self._advance()
        if self._stopped:
            return not self._running
        return not self._pending and not self._running and all(
            c.state in ("resolved", "pruned") for c in self._cells.values())

    def stuck(self) -> list[str]:
        """The cells left when nothing is ready or running and the search is not done (else []):
        a bug in these rules (tests/profiler/test_search_ends.py drives random searches to check)."""
        return [] if self.done() or self._pending or self._running else [
            f"{sig} {tech}x{g} ({c.state}" + (f", holding {len(c.held)} setting(s)" if c.held else "") + ")"
            for (sig, tech, g), c in self._cells.items() if c.state not in ("resolved", "pruned")]

    def remaining_estimate(self) -> int:
        """Trials still to run, counting one setting per tier for cells not opened yet."""
        n = len(self._pending) + len(self._running) + sum(len(c.held) for c in self._cells.values())
        for c in self._cells.values():
            if c.state == "waiting":
                n += 1 if c.short_check else max(1, sum(
                    1 for k in c.inp.candidates if knob_tier(k) == min(map(knob_tier, c.inp.candidates))))
        return n

    def best(self, signature: str, technique: str, gpus: int) -> Optional[float]:
        cell = self._cells.get((signature, technique, gpus))
        return cell.best() if cell else None

    def cell_state(self, signature: str, technique: str, gpus: int) -> str:
        return self._cells[(signature, technique, gpus)].state

    # -- updates ---------------------------------------------------------------------------------
    def start(self, trial: TrialSpec) -> None:
        self._running[trial.key] = self._pending.pop(trial.key)

    def record(self, trial: TrialSpec, status: str, step_time_s: Optional[float] = None,
               wall_s: Optional[float] = None) -> None:
        """Feed back the outcome of a started (or pending) trial (`wall_s`: what it cost)."""
        if wall_s is not None and wall_s > 0:
            self._walls.setdefault(trial.technique, []).append(float(wall_s))
        self._pending.pop(trial.key, None)
        self._running.pop(trial.key, None)
        self._finish(trial, status, step_time_s)
        self._advance()

    def skip_remaining(self, reason: str) -> list[Skip]:
        """Stop: give up on everything not started (e.g. the time budget is spent). Running
        trials may still be recorded; nothing new is issued afterwards."""
        out = [Skip(t.signature, t.technique, t.gpus, t.knobs, reason)
               for t in self._pending.values()]
        self._pending.clear()
        for c in self._cells.values():
            out.extend(Skip(*c.key, k, reason) for k in c.held)
            c.held.clear()
            if c.state == "waiting":
                out.append(Skip(*c.key, None, reason))
                c.state = "pruned"
        self._stopped = True
        self.skipped.extend(out)
        return out

    # -- internals -------------------------------------------------------------------------------
    def _finish(self, trial: TrialSpec, status: str, step_time_s: Optional[float]) -> None:
        self._finished[trial.key] = (status, step_time_s)
        guess = self._prior.get(trial.key)
        if status == OK and step_time_s and guess is not None and guess.step_time_s > 0:
            self._ratios.setdefault((trial.signature, trial.technique), []).append(step_time_s / guess.step_time_s)
        cell = self._cells.get((trial.signature, trial.technique, trial.gpus))
        if cell is not None:
            cell.results[trial.knobs] = (status, step_time_s)

    def _issue(self, cell: _Cell, knobs: str) -> None:
        sig, tech, g = cell.key
        trial = TrialSpec(sig, tech, g, knobs, self.short_steps if cell.short else self.steps,
                          cell.short)
        if trial.key in self._finished or trial.key in self._pending or trial.key in self._running:
            return
        if trial.key in self._known:
            status, step = self._known[trial.key]
            self.reused.append(trial)
            self._finish(trial, status, step)
        else:
            self._pending[trial.key] = trial

    def _advance(self) -> None:
        if self._stopped:
            return
        changed = True
        while changed:
            changed = False
            for cell in self._cells.values():
                if cell.state == "waiting":
                    verdict = self._may_open(cell)
                    if verdict is True:
                        self._open(cell)
                        changed = True
                    elif isinstance(verdict, str):
                        cell.state = "pruned"
                        self.skipped.append(Skip(*cell.key, None, verdict))
                        changed = True
                if cell.state == "open" and cell.held and self._release(cell):
                    changed = True
                if cell.state == "open" and self._step_tiers(cell):
                    changed = True

    def _may_open(self, cell: _Cell):
        """True: open now; False: wait; a string: prune, with that reason."""
        sig, tech, g = cell.key
        counts = self._ladders[(sig, tech)]
        i = counts.index(g)
        if cell.has_prior:  # the value rule decides which counts are worth it
            lead = self._current_leader(sig)  # a trial key: (signature, technique, knobs, gpus)
            if cell.short_check and not (lead is not None and (lead[1], lead[3]) == (tech, g)):
                return not self._plain_unresolved(cell)
            return True
        if i >= 2:
            a, b = self._cells[(sig, tech, counts[i - 2])], self._cells[(sig, tech, counts[i - 1])]
            if "pruned" in (a.state, b.state):
                return f"a smaller GPU count of {tech} was skipped"
            a_failed = bool(a.plan) and all(a.results.get(k, ("",))[0] == FAILED for _, k in a.plan)
            if a.state == "resolved" and a.best() is None and not a_failed:
                pass  # no speed-up to measure from an infeasible count: keep climbing
            elif a.state != "resolved" or b.state != "resolved":
                return False
            else:
                verdict = self._flattened(tech, a, b)
                if verdict:
                    return verdict
        return not (cell.short_check and self._plain_unresolved(cell))

    def _plain_unresolved(self, cell: _Cell) -> bool:
        """A plain technique of the cell's signature and GPU count is not resolved yet."""
        sig, _, g = cell.key
        return any(c.state in ("waiting", "open") for (s, _t, n), c in self._cells.items()
                   if s == sig and n == g and not c.short_check)

    def _flattened(self, tech: str, a: _Cell, b: _Cell) -> Optional[str]:
        """Why counts above b's are not worth trying, or None."""
        if all(a.results.get(k, ("",))[0] == FAILED for _, k in a.plan) and all(
                b.results.get(k, ("",))[0] == FAILED for _, k in b.plan) and a.plan and b.plan:
            return (f"{tech} failed (not out of memory) on {a.inp.gpus} and {b.inp.gpus} GPUs; "
                    "more GPUs will not fix that")
        ta, tb = a.best(), b.best()
        if ta is not None and tb is not None and ta / tb < self.min_speedup:
            return (f"speed-up flattened: {tech} went from {ta:.4g}s on {a.inp.gpus} GPUs to "
                    f"{tb:.4g}s on {b.inp.gpus} GPUs ({ta / tb:.2f}x < {self.min_speedup}x)")
        return None

    def _open(self, cell: _Cell) -> None:
        sig, tech, g = cell.key
        cell.state = "open"
        if cell.short_check:
            plain_fits = any(c.ok() for (s, t, n), c in self._cells.items()
                             if s == sig and n <= g and not c.short_check)
            if plain_fits:
                cell.short = True
                first = cell.inp.candidates[0]
                cell.plan = [(0, canonical_knobs(first))]
                for k in cell.inp.candidates[1:]:
                    self.skipped.append(Skip(sig, tech, g, canonical_knobs(k),
                                             "a plain technique fits: short check only"))
                return
        seen = set()
        for k in cell.inp.candidates:
            text = canonical_knobs(k)
            if text not in seen:
                seen.add(text)
                cell.plan.append((knob_tier(k), text))

    def _step_tiers(self, cell: _Cell) -> bool:
        """Issue the next tier when the current one is done; resolve the cell when finished."""
        sig, tech, g = cell.key
        tiers = sorted({t for t, _ in cell.plan})
        if cell.tier is None:
            if not tiers:
                cell.state = "resolved"
                return True
            cell.tier = tiers[0]
            self._queue_tier(cell)
            return True
        current = [k for t, k in cell.plan if t == cell.tier]
        if not all(k in cell.results for k in current):
            return False
        tried = [cell.results[k][0] for t, k in cell.plan if t <= cell.tier and k in cell.results]
        later = [t for t in tiers if t > cell.tier]
        if OK in tried or not later or not ({OOM, HOST_OOM} & set(tried)):
            if later:
                why = ("a leaner setting is not needed: a plainer one fits" if OK in tried else
                       "leaner settings do not help: the plainer ones failed without running out "
                       "of memory")
                for t, k in cell.plan:
                    if t > cell.tier:
                        self.skipped.append(Skip(sig, tech, g, k, why))
            cell.state = "resolved"
            return True
        cell.tier = later[0]
        self._queue_tier(cell)
        return True

    # -- the value rule (cells with a prior) -----------------------------------------------------
    def _queue_tier(self, cell: _Cell) -> None:
        knobs = [k for t, k in cell.plan if t == cell.tier]
        if not cell.has_prior:
            for k in knobs:
                self._issue(cell, k)
            return
        cell.held = knobs
        self._release(cell)

    def _release(self, cell: _Cell) -> bool:
        """Issue or skip held knobs the value rule can decide now; True when any moved."""
        sig, tech, g = cell.key
        moved = False
        for k in list(cell.held):
            key = (sig, tech, k, g)
            guess = self._prior.get(key)
            if guess is None or key in self._known:
                verdict: Optional[str] = None
            elif not self._first_round_done():
                if self._current_leader(sig) != key:
                    continue
                self._leader[sig] = key
                verdict = None
            else:
                best = self._best_measured(sig)
                if best is None:  # nothing of this job measured ok: it is the next leader or waits
                    if self._current_leader(sig) != key:
                        continue
                    self._leader[sig] = key
                    verdict = None
                else:
                    walls = self._walls.get(tech) or [w for ws in self._walls.values() for w in ws]
                    best_guess = self._prior.get(best[2])
                    extra = guess.launch_s - (best_guess.launch_s if best_guess is not None else guess.launch_s)
                    verdict = worth_measuring(g, guess, best[0], best[1], self._steps_by_sig.get(sig, 1.0),
                                              self._devices, self._band, correction(self._ratios, sig, tech),
                                              statistics.median(walls) if walls else None,
                                              extra * self._jobs_by_sig.get(sig, 1))
            cell.held.remove(k)
            moved = True
            if verdict is None:
                self._issue(cell, k)
            else:
                cell.results[k] = (SKIPPED, None)
                self.skipped.append(Skip(sig, tech, g, k, verdict))
        return moved

    def _candidates(self, sig: str) -> list[tuple]:
        """Trial keys of `sig` with a prior that may still be measured."""
        out = []
        for (s, tech, g), c in self._cells.items():
            if s != sig or not c.has_prior or c.state in ("resolved", "pruned"):
                continue
            if c.tier is not None:  # an open cell: only its current memory tier can start
                tier_knobs = [k for t, k in c.plan if t == c.tier]
            else:
                low = min((knob_tier(x) for x in c.inp.candidates), default=0)
                tier_knobs = [canonical_knobs(x) for x in c.inp.candidates if knob_tier(x) == low]
            for knobs in tier_knobs:
                key = (sig, tech, knobs, g)
                if key in self._prior and knobs not in c.results:
                    out.append(key)
        return out

    def _current_leader(self, sig: str) -> Optional[tuple]:
        """The signature's first option to measure: its leader while that is unresolved, else the
        likeliest winner among what is left."""
        lead = self._leader.get(sig)
        if lead is not None and lead not in self._finished:
            return lead
        left = self._candidates(sig)
        steps = self._steps_by_sig.get(sig, 1.0)
        return min(left, key=lambda k: leader_score(k[3], self._prior[k], steps,
                                                    correction(self._ratios, sig, k[1]))) if left else None

    def _best_measured(self, sig: str) -> Optional[tuple[float, float, tuple]]:
        """(fastest step, least GPU-seconds per step, the fastest's key) over the signature's ok
        results."""
        ok = [(t, key) for key, (st, t) in self._finished.items()
              if key[0] == sig and st == OK and t is not None]
        if not ok:
            return None
        fastest = min(ok, key=lambda tk: tk[0])
        return fastest[0], min(t * k[3] for t, k in ok), fastest[1]

    def _first_round_done(self) -> bool:
        """Every signature with a prior has an ok measurement, or nothing left to try."""
        sigs = {c.inp.signature for c in self._cells.values() if c.has_prior}
        for sig in sigs:
            if self._best_measured(sig) is None and self._current_leader(sig) is not None:
                return False
        return True
