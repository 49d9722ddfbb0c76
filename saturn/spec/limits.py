"""Named limits on every input, and the checks that need more than a field type.

Why explicit limits: a spec is user input, and each number flows into something that allocates,
loops or names files (steps into a progress bar and a MILP coefficient, a job name into a path,
a sweep into a job list, YAML aliases into deep copies). Each limit below is far beyond any real
workload and far below what would hang or crash Saturn; a value past it is refused with the limit's
name, before any work starts.
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

MAX_SPEC_BYTES = 2 * 1024 * 1024  # a workload file (YAML text)
MAX_YAML_NODES = 200_000  # YAML nodes after alias expansion (alias bombs)
MAX_JOBS = 10_000  # jobs after sweep expansion
MAX_NAME_LEN = 100  # job / workload names become directory names
MAX_STEPS = 10**9
MAX_EPOCHS = 10**6
MAX_BATCH_SIZE = 10**6
MAX_SEQ_LEN = 2**22
MAX_LR = 1e3
MAX_OVERRIDE = 10**9  # any architecture override (layers, width, heads, vocab...)
MAX_SEED = 2**32 - 1
MAX_WEIGHT = 1e6  # a job's priority weight (weighted_completion)
MAX_NODE_GPUS = 1024  # GPUs (or CPU slots) of one node: the planner's per-node limit
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$"


def check_size(n_bytes: int, where: str) -> None:
    if n_bytes > MAX_SPEC_BYTES:
        raise ValueError(f"{where}: {n_bytes:,} bytes is over MAX_SPEC_BYTES = {MAX_SPEC_BYTES:,}; a workload "
                         "spec lists jobs and a sweep, not data (use `sweep:` for many jobs)")


def check_node_count(root: yaml.Node, where: str) -> None:
    """Count nodes with aliases expanded, stopping at MAX_YAML_NODES (so a billion-laughs file is
    refused in milliseconds instead of being expanded by the deep copies that follow)."""
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise ValueError(f"{where}: the YAML expands to more than MAX_YAML_NODES = {MAX_YAML_NODES:,} "
                             "values (nested anchors/aliases?); write the jobs out or use `sweep:`")
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack.extend((k, v))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def check_job_count(n: int, where: str) -> None:
    if n > MAX_JOBS:
        raise ValueError(f"{where}: the jobs and sweep expand to {n:,} jobs, over MAX_JOBS = {MAX_JOBS:,}; "
                         "split the sweep into several workloads or sample it with an HPO integration")


def check_finite_number(v: Any, what: str, *, positive: bool = False, limit: float = math.inf) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return
    if not math.isfinite(float(v)):
        raise ValueError(f"{what} must be a finite number (got {v!r})")
    if positive and not v > 0:
        raise ValueError(f"{what} must be > 0 (got {v!r})")
    if abs(v) > limit:
        raise ValueError(f"{what} = {v!r} is over its limit {limit:g}")


def check_overrides(overrides: dict[str, Any]) -> None:
    """Architecture overrides are sizes and counts: positive and below MAX_OVERRIDE (ratios such as
    dropout may be 0, so only values that must count something are required > 0)."""
    for k, v in overrides.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        zero_ok = any(s in k.lower() for s in ("dropout", "drop", "eps", "bias", "std", "scale"))
        if not math.isfinite(float(v)) or (v < 0 if zero_ok else v <= 0):
            raise ValueError(f"override {k} = {v!r} must be a finite number {'>= 0' if zero_ok else '> 0'}")
        if "dropout" in k.lower() and not v < 1:
            raise ValueError(f"override {k} = {v!r} must be below 1 (a probability)")
        if v > MAX_OVERRIDE:
            raise ValueError(f"override {k} = {v!r} is over MAX_OVERRIDE = {MAX_OVERRIDE:g}")


def check_callable(path: str, what: str) -> None:
    """Import 'pkg.module:attr' and require a callable, so a typo fails `saturn validate` instead
    of every profiling trial."""
    module, _, attr = path.partition(":")
    try:
        mod = importlib.import_module(module)
    except SystemExit as exc:  # a module that exits on import would end Saturn silently (exit 0)
        raise ValueError(f"{what} {path!r}: importing module {module!r} called sys.exit({exc.code!r}); a factory "
                         "module must not exit on import (guard its script code with "
                         "`if __name__ == '__main__':`)") from None
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's module
        raise ValueError(f"{what} {path!r}: cannot import module {module!r} ({type(exc).__name__}: {exc}); "
                         "check the spelling and that it is on PYTHONPATH") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {path!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{what} {path!r} is a {type(obj).__name__}, not a callable")


def missing_local_paths(jobs: Iterable[Any]) -> list[str]:
    """'job: field path' for every local file a job needs that is not there (weights, text data),
    or is not what it must be (weights that are not a PyTorch checkpoint).
    Checked at `profile` / `run` -- where the jobs run -- before any trial or launch."""
    out = []
    for job in jobs:
        w = getattr(job.model, "weights", None)
        if w and not Path(os.path.expanduser(w)).exists():
            out.append(f"jobs.{job.name}.model.weights: {w} does not exist")
        elif w:
            from saturn.zoo.weights import weights_problem

            problem = weights_problem(w)
            if problem:
                out.append(f"jobs.{job.name}.model.weights: {problem}")
        d = getattr(job, "data", None)
        if d is not None and getattr(d, "path", None):
            p = Path(os.path.expanduser(d.path))
            if not p.is_file():
                out.append(f"jobs.{job.name}.data.path: {d.path} is not a readable file")
    return out
