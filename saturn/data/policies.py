"""The tuner policies by name (the `data.kwargs.tuner` knob): `hill` (saturn.data.tuner, the
default) and `rl` (saturn.data.tuner_rl). Here, not in tuner.py, because the RL policy subclasses
the hill climber: the registry sits above both, so neither module imports the other's importer."""

from __future__ import annotations

from typing import Any

from saturn.data.pipeline import Tunable
from saturn.data.tuner import PipelineTuner
from saturn.data.tuner_rl import RLTuner

TUNERS: dict[str, type[PipelineTuner]] = {"hill": PipelineTuner, "rl": RLTuner}


def make_tuner(kind: str, pipe: Tunable, **kwargs: Any) -> PipelineTuner:
    """The tuner policy named by the `tuner` knob (`hill` or `rl`), same constructor arguments."""
    if kind not in TUNERS:
        raise ValueError(f"data.kwargs.tuner: unknown tuner {kind!r}; allowed: {list(TUNERS)} (hill is the default)")
    return TUNERS[kind](pipe, **kwargs)
