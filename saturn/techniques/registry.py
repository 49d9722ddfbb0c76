"""Techniques registered by name; built-ins are discovered, user techniques come by import path.

Every module in this package other than the plumbing below is a technique module: importing it
runs its `@register`. So adding a built-in technique touches exactly one new file. Technique modules
keep heavy imports (deepspeed, fairscale) inside functions so listing names stays cheap.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path
from typing import Any, Mapping, Optional, Type

from pydantic import ValidationError

from saturn.errors import SpecError
from saturn.techniques.base import Technique
from saturn.techniques.knobs import knob_help

_PLUMBING = {"base", "registry", "common", "knobs"}
# What a warm worker imports before its first job (handed to `saturn.runtime.warm.WarmPool`, which
# knows no technique): the job schema, the training loop, and every built-in technique module.
WARM_PRELOAD = ("saturn.spec.schema", "saturn.training.loop", "saturn.techniques.registry:technique_names")
_REGISTRY: dict[str, Type[Technique]] = {}
_discovered = False
_PACKAGE_DIR = Path(__file__).parent  # saturn/techniques: its modules are the built-ins


def register(cls: Type[Technique]) -> Type[Technique]:
    """Class decorator: make `cls` available under `cls.name`.

    A second, different technique under a taken name is refused (TypeError): the profile store
    and plans key everything by technique name, so two meanings of one name would mix their rows.
    Registering the same class again (an import path given twice, a module reload) is fine.
    `cls.knobs` (knob -> help) is derived from `cls.knob_type` unless the class sets it."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__qualname__} needs a `name` class attribute")
    old = _REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"technique name {name!r} is taken by {old.__module__}.{old.__qualname__}; "
                        f"give {cls.__module__}.{cls.__qualname__} another `name`")
    knob_type = getattr(cls, "knob_type", None)
    if knob_type is not None and "knobs" not in vars(cls):
        cls.knobs = knob_help(knob_type)
    _REGISTRY[name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for mod in pkgutil.iter_modules([str(_PACKAGE_DIR)]):
        if mod.name not in _PLUMBING and not mod.name.startswith("_"):
            importlib.import_module(f"{__package__}.{mod.name}")
    _discovered = True


def technique_names() -> list[str]:
    """Built-in technique names (and any registered since), in a stable order.

    Read from the technique modules' source (`@register` classes' `name = "..."`), not by
    importing them: they import torch, and validating or planning a workload must not (about
    1.5 s of start-up). tests/planner/test_speed.py checks the two agree."""
    return sorted(set(_declared_names()) | set(_REGISTRY))


@functools.lru_cache(maxsize=None)
def _declared_names() -> tuple[str, ...]:
    import ast

    names = []
    root = _PACKAGE_DIR
    for path in sorted(root.rglob("*.py")):
        if path.parent == root and (path.stem in _PLUMBING or path.stem.startswith("_")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(d, ast.Name) and d.id == "register" for d in node.decorator_list):
                for stmt in node.body:
                    if (isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "name"
                                                             for t in stmt.targets)
                            and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)):
                        names.append(stmt.value.value)
    return tuple(names)


def registered_names() -> list[str]:
    """The names of the technique classes actually registered (imports every technique module)."""
    _discover()
    return sorted(_REGISTRY)


def get_technique(name: str) -> Technique:
    """An instance of the technique `name`, or of a user class given as 'pkg.module:Class'."""
    _discover()
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise SpecError(f"technique {name!r} cannot be imported: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Technique)):
            raise SpecError(f"technique {name!r} is not a saturn.techniques.Technique subclass")
        register(cls)
        return cls()
    raise SpecError(f"unknown technique {name!r}; registered: {technique_names()}")


def validate_knobs(technique: str, knobs: Mapping[str, Any], knob_type: Optional[type] = None,
                   where: str = "knobs") -> dict[str, Any]:
    """Check `knobs` (some or all of the technique's knobs) and return them as given.

    Raises ValueError naming the offending field (`where.technique.knob`), the problem and the
    allowed knobs, so the spec loader turns it into an exit-2 message. `knob_type` defaults to the
    registered technique's."""
    if knob_type is None:
        knob_type = getattr(get_technique(technique), "knob_type", None)
    if not isinstance(knobs, Mapping):
        raise ValueError(f"{where}.{technique}: must be a mapping of knob: value, not {knobs!r}")
    if knob_type is None:
        if knobs:
            raise ValueError(f"{where}.{technique}: technique {technique!r} declares no knobs")
        return {}
    allowed = ", ".join(knob_help(knob_type))
    try:
        knob_type(**{str(k): v for k, v in knobs.items()})
    except ValidationError as exc:
        problems: dict[str, list[str]] = {}  # knob -> messages (a union reports one per branch)
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
                msg = f"unknown knob (allowed: {allowed})"
            else:
                msg = f"{err['msg']} (got {knobs.get(field, err.get('input'))!r})"
            if msg not in problems.setdefault(field, []):
                problems[field].append(msg)
        raise ValueError("; ".join(f"{where}.{technique}.{f}: {' or '.join(m)}" for f, m in problems.items())) from None
    return dict(knobs)
