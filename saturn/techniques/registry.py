"""Techniques registered by name; built-ins are discovered, user techniques come by import path.

Every module in this package other than the plumbing below is a technique module: importing it
runs its `@register`. So adding a built-in technique touches exactly one new file. Technique modules
keep heavy imports (deepspeed, fairscale) inside functions so listing names stays cheap.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Type

from saturn.errors import SpecError
from saturn.techniques.base import Technique

_PLUMBING = {"base", "registry", "common", "worker", "launch", "checkpoint", "training"}
_REGISTRY: dict[str, Type[Technique]] = {}
_discovered = False


def register(cls: Type[Technique]) -> Type[Technique]:
    """Class decorator: make `cls` available under `cls.name`."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__qualname__} needs a `name` class attribute")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import saturn.techniques as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in _PLUMBING and not mod.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
    _discovered = True


def technique_names() -> list[str]:
    """Built-in technique names (registered), in a stable order."""
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
