"""Numerics are the user's choice: which knob settings change what training computes.

Why: some options save memory or bytes by rounding what plain AdamW keeps in fp32 (Adam's
moments in bf16, gradients all-reduced in bf16). Whether that is acceptable is the user's call,
not the planner's: a job says `numerics: exact` (the default: fp32 master weights and fp32
moments, what a plain AdamW loop computes; gradients reduced in fp32) or `numerics: low-memory`
(Saturn may pick any option below; the planner weighs them against the exact ones). Under
`exact` no option listed here is ever proposed by a technique (its `knob_conflicts`), estimated,
or chosen by the planner (`saturn.planner.options`), and a pinned knob that contradicts it is a
spec error naming both fields.

One table for every consumer (techniques, profiler, planner); pure Python, no torch.
"""

from __future__ import annotations

from typing import Any, Mapping

NUMERICS = ("exact", "low-memory")
DEFAULT = "exact"

# technique -> knob -> values that change numerics, and what they do
CHANGES: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "spilling": {"optimizer_state": (("bf16",), "rounds Adam's moments to bf16")},
    "ddp": {"grad_compression": (("bf16", "fp16"), "all-reduces gradients in half precision")},
}


def numerics_change(technique: str, knobs: Mapping[str, Any]) -> str:
    """What the knob setting changes about the numbers ('' = nothing: exact)."""
    for knob, (values, what) in CHANGES.get(str(technique), {}).items():
        v = dict(knobs or {}).get(knob)
        if v is not None and str(v).lower() in values:
            return f"{knob} {v} {what}"
    return ""


def numerics_conflict(numerics: str, technique: str, knobs: Mapping[str, Any]) -> str:
    """Why `numerics` forbids this knob setting ('' = allowed)."""
    change = numerics_change(technique, knobs)
    if change and str(numerics or DEFAULT) == "exact":
        return f"{change}, which numerics: exact forbids; set the job's numerics: low-memory to allow it"
    return ""
