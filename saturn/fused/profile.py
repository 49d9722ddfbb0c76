"""Profile fused groups: measure a shape's group step time at a few widths, rows for the planner.

Why: the fused width is a planner decision (`saturn.planner.fused_option`), made from profile rows
like every other option. Measuring every width of every shape would cost a trial each, so a few
widths are measured on the first jobs of each shape (one short `FusedEngine` trial each, warm-up
excluded, the device synchronized around the timed steps) and the others are estimated
(`fused_option.estimate_step_time`, labelled as estimated in the row's `source`).
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import torch

from saturn.fused.engine import FusedEngine
from saturn.fused.grouping import shapes
from saturn.planner import fused_option


def measure(jobs: Sequence[Any], device: Any = "cpu", *, steps: int = 3, warmup: int = 1) -> float:
    """Seconds per group step of `jobs` fused (median-free mean over `steps` timed steps)."""
    engine = FusedEngine(list(jobs), device)
    dev = torch.device(device)
    for s in range(warmup):
        engine.step([s] * engine.width)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for s in range(warmup, warmup + steps):
        engine.step([s] * engine.width)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / steps


def profile_rows(jobs: Sequence[Any], device: Any = "cpu", *, measure_widths: Sequence[int] = (1, 2, 4),
                 offer_widths: Optional[Sequence[int]] = None, steps: int = 3, warmup: int = 1,
                 gpu_type: Optional[str] = None) -> list[dict[str, Any]]:
    """Planner rows for fused groups of `jobs`: per shape (`grouping.shapes`), the widths in
    `measure_widths` are measured on its first jobs, the widths in `offer_widths` (default: 2, 4,
    8 and the whole shape, up to 8) offered as consecutive groups of its jobs (measured or
    estimated step times)."""
    rows: list[dict[str, Any]] = []
    for group in shapes(list(jobs)):
        if len(group) < 2:
            continue
        measured = {k: measure(group[:k], device, steps=steps, warmup=warmup)
                    for k in sorted(set(measure_widths)) if 1 <= k <= len(group)}
        offer = offer_widths if offer_widths is not None else sorted({2, 4, 8, min(len(group), 8)})
        rows += fused_option.width_rows([j.name for j in group], measured, offer, gpu_type=gpu_type)
    return rows


def main(spec_path: str, out_path: str) -> int:
    """`python -m saturn.fused.profile SPEC OUT` (see `saturn.fused.measure`): rows as JSON, atomically."""
    import json
    import os
    import socket

    from saturn.spec.schema import Job

    with open(spec_path) as f:
        spec = json.load(f)
    device = spec.get("device", "auto")
    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    gpu_type = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    rows = profile_rows([Job.model_validate(j) for j in spec["jobs"]], device, gpu_type=gpu_type)
    host = socket.gethostname()
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump([{**r, "host": host} for r in rows], f)
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1], sys.argv[2]))
