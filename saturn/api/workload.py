"""Stage 1 of every front door: the workload, as a typed `Workload`.

`load` takes what a user hands in (a Workload, a YAML path or YAML text) and returns the Workload
with its cluster resolved (local devices probed, Ray discovered); `check_paths` is the
`local_paths` stage (the files the jobs need exist here). Every later stage takes the Workload
this returns, so a YAML file is parsed once per call.
"""

from __future__ import annotations

import os
from typing import Any


def as_workload(workload: Any) -> Any:
    """The Workload for a Workload, a YAML path or YAML text (a file's path kept for messages),
    its techniques and knobs checked against the registry (saturn.techniques.checks)."""
    from saturn.spec import Workload
    from saturn.techniques.checks import check_workload, load_workload

    if isinstance(workload, Workload):
        return check_workload(workload)
    return with_path(load_workload(workload), workload)


def with_path(wl: Any, path: Any) -> Any:
    """Let error messages (the missing-profiles hint) quote the workload file."""
    if isinstance(path, (str, os.PathLike)) and "\n" not in str(path):
        try:
            object.__setattr__(wl, "path", str(path))
        except Exception:  # noqa: BLE001 - cosmetic (error messages quote the path)
            pass
    return wl


def load(workload: Any) -> Any:
    """The Workload for a Workload, a YAML path or YAML text, with its cluster's nodes resolved
    (Ray clusters are discovered here, through saturn.executor.build)."""
    from saturn.executor.build import with_resolved_cluster

    return with_resolved_cluster(as_workload(workload))


def check_paths(workload: Any) -> None:
    """The `local_paths` stage (run, profile, Orchestrator.submit): the files the jobs need
    (weights, data) exist on this machine; a SpecError (exit 2) naming each missing one."""
    from saturn.spec import check_local_paths

    check_local_paths(workload)
