"""Fake techniques for the profiler tests (no torch, no processes): passed by import path.

Each trial sleeps briefly and returns a synthetic step time. Every call is appended to the file
named by $SATURN_FAKE_TRIAL_LOG (works across processes), so tests can count what really ran.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from saturn.runtime.attempt import RunResult
from saturn.techniques.base import Feasibility, Technique, TrialResult, device_ids

SLEEP_S = float(os.environ.get("SATURN_FAKE_SLEEP", "0.05"))


def _log(name: str, gpus: Any, knobs: dict, steps: int) -> None:
    path = os.environ.get("SATURN_FAKE_TRIAL_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"technique": name, "devices": device_ids(gpus), "knobs": knobs,
                                "steps": steps, "start": time.time()}) + "\n")


def read_log(path) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


class _Fake(Technique):
    base_s = 0.1
    exponent = 1.0  # step time = base / gpus**exponent

    def feasible(self, job: Any, gpus: int) -> Feasibility:
        return Feasibility(True)

    def candidates(self, job: Any, gpus: int) -> list[dict[str, Any]]:
        return [{}]

    def step_time(self, gpus: int, knobs: dict) -> float:
        return self.base_s / gpus ** self.exponent

    def outcome(self, gpus: int, knobs: dict) -> TrialResult:
        return TrialResult("ok", step_time_s=self.step_time(gpus, knobs), peak_mem_gb=0.5 / gpus,
                           startup_s=1.5)

    def trial(self, job: Any, gpus: Any, knobs: dict, steps: int, timeout_s: float = 600.0) -> TrialResult:
        _log(self.name, gpus, knobs, steps)
        time.sleep(SLEEP_S)
        return self.outcome(len(device_ids(gpus)), knobs)

    def run(self, job, gpus, knobs, start_step, num_steps, checkpoint_dir, **kw) -> RunResult:
        return RunResult("completed", start_step + num_steps)


class Scales(_Fake):
    """Scales perfectly: every GPU count is worth measuring."""

    name = "fake-scales"


class Flat(_Fake):
    """Barely faster with more GPUs: the ladder stops after two counts."""

    name = "fake-flat"
    exponent = 0.05


class NeedsOffload(_Fake):
    """Plain runs out of memory on 1 GPU; offload fits (slower); 2+ GPUs fit plainly."""

    name = "fake-offload"

    def candidates(self, job, gpus):
        return [{"offload": False}, {"offload": True}]

    def outcome(self, gpus, knobs):
        if gpus == 1 and not knobs.get("offload"):
            return TrialResult("oom", reason="CUDA out of memory (fake)")
        return TrialResult("ok", step_time_s=0.3 if knobs.get("offload") else 0.1 / gpus,
                           peak_mem_gb=1.0, startup_s=2.0)


class AlwaysOOM(_Fake):
    name = "fake-oom"

    def outcome(self, gpus, knobs):
        return TrialResult("oom", reason="CUDA out of memory. Tried to allocate 1 GiB (fake)")


class Crashes(_Fake):
    """trial() raises: must become an infeasible row, never a crash."""

    name = "fake-crash"

    def trial(self, job, gpus, knobs, steps, timeout_s=600.0):
        _log(self.name, gpus, knobs, steps)
        raise RuntimeError("boom: the fake technique crashed")


class Hangs(_Fake):
    """Ignores its timeout and sleeps on: the profiler must time it out."""

    name = "fake-hang"

    def trial(self, job, gpus, knobs, steps, timeout_s=600.0):
        _log(self.name, gpus, knobs, steps)
        time.sleep(float(os.environ.get("SATURN_FAKE_HANG_S", "3")))
        return self.outcome(len(device_ids(gpus)), knobs)


class OnlyTwo(_Fake):
    """Statically infeasible on 1 GPU."""

    name = "fake-only-two"

    def feasible(self, job, gpus):
        return Feasibility(gpus >= 2, "needs at least 2 GPUs (fake)")


class Spills(_Fake):
    """A spilling-like technique: gets only a short check when a plain technique fits."""

    name = "fake-spill"
    profile_short_check = True
    base_s = 0.4

    def candidates(self, job, gpus):
        return [{"prefetch": 1}, {"prefetch": 2}]


class Slow(_Fake):
    """Sleeps longer, for the concurrency test."""

    name = "fake-slow"

    def trial(self, job, gpus, knobs, steps, timeout_s=600.0):
        _log(self.name, gpus, knobs, steps)
        time.sleep(float(os.environ.get("SATURN_FAKE_SLOW_S", "0.4")))
        return self.outcome(len(device_ids(gpus)), knobs)
