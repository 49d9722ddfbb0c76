"""Parallelism techniques as plug-ins (see `base.Technique`)."""

from saturn.runtime.attempt import RunResult
from saturn.techniques.base import Feasibility, Technique, TrialResult
from saturn.techniques.registry import get_technique, register, technique_names

__all__ = ["Feasibility", "RunResult", "Technique", "TrialResult", "get_technique", "register",
           "technique_names"]
