"""The `fused_groups` stage of `saturn run --fuse`: measure fused groups before the plan (no torch here).

Why a separate process: the measurement builds models on the device; done in the CLI's process it
would keep a CUDA context (and its memory) on the GPU the run's workers then use. So the stage
writes the jobs to a spec file, runs `python -m saturn.fused.profile SPEC OUT` (which measures
each fusable shape at a few widths, `saturn.fused.profile.profile_rows`) under a time limit, and
reads the group rows back. A failed or timed-out measurement is a note, not an error: the run
goes on with its members' solo options (the cause is named: exit code, or the signal that ended it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from saturn.fused.grouping import shapes

TIMEOUT_S = 600.0


def fusable_shapes(jobs: list[Any]) -> list[list[Any]]:
    """Shapes with at least two jobs that allow any technique (a fused group is its own technique)."""
    return [s for s in shapes([j for j in jobs if not j.techniques]) if len(s) >= 2]


def measure_groups(wl: Any, work_dir: Path, *, timeout_s: float = TIMEOUT_S) -> tuple[list[dict[str, Any]], str]:
    """(group rows, a note for the user) for the workload's fusable shapes."""
    groups = fusable_shapes(list(wl.jobs))
    if not groups:
        return [], "fused groups: no two jobs of one shape that allow any technique; nothing to fuse"
    work_dir.mkdir(parents=True, exist_ok=True)
    spec, out = work_dir / "fused-profile.json", work_dir / "fused-rows.json"
    cpu = bool(getattr(wl.cluster, "is_cpu", False)) or getattr(wl.cluster, "devices", "auto") == "cpu"
    device = "cpu" if cpu else "auto"  # CPU slots measure on the CPU, as they train there
    tmp = spec.with_suffix(".tmp")
    tmp.write_text(json.dumps({"jobs": [j.model_dump(mode="json") for s in groups for j in s], "device": device}))
    os.replace(tmp, spec)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with open(work_dir / "fused-profile.log", "ab") as log:
        try:
            p = subprocess.run([sys.executable, "-m", "saturn.fused.profile", str(spec), str(out)], env=env,
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return [], f"WARNING: fused groups not measured: the measurement ran past {timeout_s:.0f} s"
    if p.returncode != 0:
        cause = (f"killed by {signal.Signals(-p.returncode).name}" if p.returncode < 0
                 else f"exit code {p.returncode}")
        return [], f"WARNING: fused groups not measured ({cause}; see {work_dir / 'fused-profile.log'})"
    rows = json.loads(out.read_text())
    names = ", ".join(r["job"] for r in rows)
    return rows, f"fused groups measured/estimated as planner options: {names or 'none'}"
