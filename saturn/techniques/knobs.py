"""Typed technique knobs: each technique declares its knobs as one small validated dataclass.

    @knob_dataclass
    class DDPKnobs:
        bucket_cap_mb: int = knob(25, "gradient all-reduce bucket size in MB", ge=1)
        activation_checkpointing: bool = knob(False, "recompute each block's activations in backward")

    @register
    class DDP(LaunchedTechnique):
        name = "ddp"
        knob_type = DDPKnobs            # `knobs` (name -> help) is derived from it

Adding a knob is one field line. The dataclass gives the knob's type, default, range/choices and
help; `saturn techniques` lists them, `registry.validate_knobs` checks a YAML `knobs:` entry with the
offending field named, and every candidate a technique proposes must pass it (tests check). The
text form stored in profile tables is `canonical_knobs` (saturn.parse), shared by the profiler,
the planner and the executor. Pydantic does the validation (strict: `"true"` is not a bool).
Pure: no torch, so listing and validating knobs is cheap.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from saturn.parse import canonical_knobs

__all__ = ["KnobInfo", "canonical_knobs", "knob", "knob_dataclass", "knob_help", "knob_infos"]

_CONFIG = ConfigDict(extra="forbid", strict=True)


def knob(default: Any, help: str, **constraints: Any) -> Any:
    """A knob field: its default, one line of help, and pydantic constraints (ge, le, gt...)."""
    return Field(default=default, description=help, **constraints)


def knob_dataclass(cls: type) -> type:
    """Make `cls` a frozen, strictly validated pydantic dataclass (unknown knobs are errors)."""
    return _pydantic_dataclass(cls, config=_CONFIG, frozen=True)


@dataclasses.dataclass(frozen=True)
class KnobInfo:
    """One knob as `saturn techniques` shows it."""

    name: str
    type: str
    default: Any
    help: str
    limits: str


def _type_name(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if isinstance(tp, type) else None
    text = text or str(tp).replace("typing.", "")
    return text.replace("NoneType", "None")


def _limits(info: Any) -> str:
    out = []
    for meta in getattr(info, "metadata", []) or []:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(meta, attr, None)
            if v is not None:
                out.append(f"{sym} {v}")
    return ", ".join(out)


def knob_infos(knob_type: Optional[type]) -> list[KnobInfo]:
    """The knobs of a knob dataclass, in declaration order."""
    if knob_type is None:
        return []
    fields = getattr(knob_type, "__pydantic_fields__", {})
    return [KnobInfo(name, _type_name(f.annotation), f.default, f.description or "", _limits(f))
            for name, f in fields.items()]


def knob_help(knob_type: Optional[type]) -> dict[str, str]:
    """{knob: help}: the `Technique.knobs` mapping, derived from the dataclass."""
    return {k.name: k.help for k in knob_infos(knob_type)}


def defaults(knob_type: type) -> dict[str, Any]:
    """Every knob at its default."""
    return {k.name: k.default for k in knob_infos(knob_type)}
