"""An InTune-style reinforcement-learning tuner: a Q-learning agent that learns, from throughput
alone, where a job's cores do most good -- the second policy behind `PipelineTuner`'s interface.

InTune (seed 000) distributes a trainer's CPU cores over a data pipeline with an RL agent whose
state is per-stage throughput / latency / resources, whose actions move parallelism between stages
(and change prefetch), and whose reward is ingestion throughput. This is that agent made small and
dependency-light (numpy only, nothing to pre-train or ship):

- state, per window: every stage's capacity (workers x measured items per busy-second), the
  bottleneck, the consumer's wait fraction and the observed throughput (the same observations the
  hill climber reads);
- actions: move one worker from stage d to stage s (every ordered pair), prefetch +1 / -1, or do
  nothing; invalid ones (a stage's last worker, prefetch out of [1, max_prefetch], a move in tabu
  after a revert) are masked;
- Q(s, a) = w . phi(s, a), linear in a few action features (is the receiver the bottleneck, the
  donor's slack, the capacity model's predicted gain, the wait fraction, one bias per action kind):
  a DQN with a linear "network", so it learns in tens of windows instead of thousands of episodes;
- reward: the relative throughput change over the window after the action (clipped to [-1, 1]),
  minus an optional `move_cost` per reconfiguration (default 0: measured, 0.02 cut churn ~3x on the
  capacity model but left more runs stuck short of the optimum),
  learned by one-step Q-learning (normalised LMS update, discount `gamma`), epsilon-greedy
  exploration decaying from `eps0` to `eps_min`.

Guard rails are PipelineTuner's, unchanged: every move or prefetch change is a trial that is
reverted when the next window is slower by more than `tolerance` (the agent still learns the
negative reward), reverted moves are tabu for a few windows, and the core budget is enforced
outside the agent (extra cores spread evenly, withdrawn cores taken from the stage with the most
workers -- model-free, as the agent's own moves are). Decisions go to the same log, tagged `rl`.

Measured against the hill climber in scripts/bench_data_tuners.py; see tuner.py for which is the
default and why.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from saturn.data.pipeline import Tunable
from saturn.data.tuner import PipelineTuner

# feature layout: one block per action kind (a one-hot over kinds times that kind's features)
_MOVE = slice(0, 6)  # bias, receiver is bottleneck, donor is bottleneck, donor slack, predicted gain, wait
_PF_UP = slice(6, 9)  # bias, wait, spare capacity over throughput
_PF_DOWN = slice(9, 11)  # bias, 1 - wait
_NOOP = slice(11, 12)  # bias
N_FEATURES = 12


class RLTuner(PipelineTuner):
    name = "rl"

    def __init__(self, pipe: Tunable, *, alpha: float = 0.5, gamma: float = 0.5, eps0: float = 0.5,
                 eps_min: float = 0.03, eps_decay: float = 0.85, move_cost: float = 0.0, seed: int = 0,
                 **kwargs: Any):
        super().__init__(pipe, **kwargs)
        self.alpha, self.gamma = float(alpha), float(gamma)
        self.eps0, self.eps_min, self.eps_decay = float(eps0), float(eps_min), float(eps_decay)
        self.move_cost = float(move_cost)  # reward charged per reconfiguration: no churn for nothing
        self.rng = np.random.default_rng(seed)
        self.w = np.zeros(N_FEATURES)
        self.decisions = 0
        self._last: tuple[np.ndarray, float] | None = None  # (phi of the last action, throughput before)

    # ------------------------------------------------------------------------------ features
    def _actions(self, thr: float, wait_frac: float) -> list[tuple[tuple, np.ndarray]]:
        """Every valid action with its feature vector phi(state, action)."""
        cap, w = self.capacities(), self.pipe.workers
        lo = min(cap.values())
        slow = min(cap, key=lambda n: cap[n])
        out: list[tuple[tuple, np.ndarray]] = []
        for d in cap:
            for s in cap:
                if d == s or w[d] <= 1 or (d, s) in self.tabu:
                    continue
                new = dict(cap)
                new[d] = cap[d] * (w[d] - 1) / w[d]
                new[s] = cap[s] * (w[s] + 1) / w[s]
                phi = np.zeros(N_FEATURES)
                phi[_MOVE] = [1.0, float(s == slow), float(d == slow), 1.0 - lo / max(cap[d], 1e-9),
                              float(np.clip(min(new.values()) / max(lo, 1e-9) - 1.0, -1.0, 1.0)), wait_frac]
                out.append((("move", d, s), phi))
        depth = self.pipe.prefetch
        if depth < self.max_prefetch:
            phi = np.zeros(N_FEATURES)
            phi[_PF_UP] = [1.0, wait_frac, float(np.clip(lo / max(thr, 1e-9) - 1.0, 0.0, 1.0))]
            out.append((("prefetch", +1), phi))
        if depth > 1:
            phi = np.zeros(N_FEATURES)
            phi[_PF_DOWN] = [1.0, 1.0 - wait_frac]
            out.append((("prefetch", -1), phi))
        phi = np.zeros(N_FEATURES)
        phi[_NOOP] = [1.0]
        out.append((("noop",), phi))
        return out

    @property
    def epsilon(self) -> float:
        return max(self.eps_min, self.eps0 * self.eps_decay ** self.decisions)

    # ------------------------------------------------------------------------------ learning
    def _on_window(self, thr: float, wait_frac: float) -> None:
        """Reward for the previous action = relative throughput change; one Q-learning update."""
        if self._last is None:
            return
        phi, before = self._last
        self._last = None
        reward = float(np.clip((thr - before) / max(before, 1e-9), -1.0, 1.0)) - (phi[_NOOP][0] == 0) * self.move_cost
        target = reward
        reverted = self.pending is not None and thr < self.pending["throughput_before"] * (1 - self.tolerance)
        if not reverted and len(self.rates) == len(self.pipe.stage_names):
            target += self.gamma * max(float(self.w @ f) for _, f in self._actions(thr, wait_frac))
        err = target - float(self.w @ phi)
        self.w += self.alpha * err * phi / (float(phi @ phi) + 1e-9)

    # ------------------------------------------------------------------------------- acting
    def _decide(self, thr: float, wait_frac: float) -> None:
        if wait_frac < self.min_wait_frac:
            return  # the consumer never waits: ingestion is not what limits this job
        acts = self._actions(thr, wait_frac)
        if self.rng.random() < self.epsilon:
            act, phi = acts[int(self.rng.integers(len(acts)))]
            how = f"explore (epsilon {self.epsilon:.2f})"
        else:
            q = np.array([self.w @ f for _, f in acts])
            best = np.flatnonzero(q >= q.max() - 1e-12)
            act, phi = acts[int(self.rng.choice(best))]
            how = f"greedy (Q {q.max():+.3f})"
        self.decisions += 1
        self._last = (phi, thr)
        w, depth = dict(self.pipe.workers), self.pipe.prefetch
        if act[0] == "noop":
            return
        if act[0] == "move":
            _, d, s = act
            self.pipe.set_workers({d: w[d] - 1, s: w[s] + 1})
            self.pending = {"action": f"move 1 worker {d} -> {s}", "from": d, "to": s, "workers_before": w,
                            "prefetch_before": depth, "throughput_before": thr}
            self._log("move", thr, wait_frac, before=w, reason=f"{how}: {d} -> {s}")
        else:
            self.pipe.set_prefetch(depth + act[1])
            self.pending = {"action": f"prefetch {depth} -> {depth + act[1]}", "workers_before": w,
                            "prefetch_before": depth, "throughput_before": thr}
            self._log("prefetch", thr, wait_frac, reason=f"{how}: prefetch {depth} -> {depth + act[1]}")

    # ---------------------------------------------------------------------- budget guard rail
    def _fit_budget(self, budget: int, thr: float, wait_frac: float, first: bool) -> None:
        """Keep the total at the budget without a capacity model: add cores to the stages with the
        fewest workers, withdraw them from the stages with the most."""
        before = dict(self.pipe.workers)
        alloc = dict(before)
        names = self.pipe.stage_names
        while sum(alloc.values()) < budget:
            alloc[min(names, key=lambda n: (alloc[n], names.index(n)))] += 1
        while sum(alloc.values()) > budget:
            alloc[max(names, key=lambda n: (alloc[n], -names.index(n)))] -= 1
        self._last = None  # the budget change, not the agent, moved throughput this window
        if alloc == before:
            return
        self.pipe.set_workers(alloc)
        self._log("apportion" if first else "budget", thr, wait_frac, before=before,
                  reason=f"{'initial fill' if first else 'core budget changed'}: {budget} cores, even split")
