"""Seeded random SPASE instances for property tests and the planner benchmark.

Job kinds mimic what the SPASE paper reports: small models that scale badly (one GPU each is best),
mid-size models that need sharding (or slow spilling on one GPU), large models that need several
GPUs, and a few that only fit a whole 8-GPU node. Rows for configurations that do not fit are
kept with feasible=False, like real profiler output.
"""

from __future__ import annotations

import random
from typing import Sequence

import pandas as pd

GPU_COUNTS = (1, 2, 4, 8)


def _row(job, tech, g, step, feasible=True, startup=None, knobs="{}"):
    return {
        "job": job,
        "technique": tech,
        "knobs": knobs,
        "gpus": g,
        "step_time_s": step if feasible else float("nan"),
        "startup_s": startup if startup is not None else 0.0,
        "feasible": feasible,
    }


def random_instance(n_jobs: int, nodes: Sequence[int], seed: int, kinds: str = "mixed"):
    """-> (jobs {name: steps}, cluster {node: gpus}, profiles DataFrame)."""
    rng = random.Random(seed)
    cluster = {f"n{i}": g for i, g in enumerate(nodes)}
    max_g = max(nodes)
    rows, jobs = [], {}
    weights = {"small": 0.4, "mid": 0.3, "large": 0.22, "huge": 0.08} if kinds == "mixed" else {kinds: 1.0}
    for j in range(n_jobs):
        kind = rng.choices(list(weights), list(weights.values()))[0]
        if kind == "huge" and max_g < 8:
            kind = "large"
        name = f"j{j:03d}-{kind}"
        jobs[name] = rng.choice([500, 1000, 2000, 3000, 5000, 8000])
        base = rng.uniform(0.03, 0.3) * {"small": 1, "mid": 2, "large": 4, "huge": 8}[kind]
        startup = rng.uniform(5, 60)
        alpha = {"small": rng.uniform(0.2, 0.6), "mid": rng.uniform(0.55, 0.85),
                 "large": rng.uniform(0.7, 0.95), "huge": rng.uniform(0.8, 0.98)}[kind]
        min_g = {"small": 1, "mid": 2, "large": 4, "huge": 8}[kind]
        for g in GPU_COUNTS:
            if g > max_g:
                continue
            fits = g >= min_g
            ddp = base / g**alpha
            rows.append(_row(name, "ddp", g, ddp, fits and kind == "small", startup))
            rows.append(_row(name, "fsdp", g, ddp * rng.uniform(1.05, 1.6) * (1 if kind != "small" else 1.5),
                             fits and g > 1, startup * 1.2))
            if g in (2, 4, 8):
                for mb in (4, 8):
                    rows.append(_row(name, "pipeline", g, ddp * rng.uniform(1.1, 1.8), fits and g > 1, startup,
                                     knobs=f'{{"microbatches": {mb}}}'))
        spill_ok = kind in ("mid", "large") or (kind == "huge" and rng.random() < 0.3)
        rows.append(_row(name, "spilling", 1, base * rng.uniform(2.5, 8.0), spill_ok, startup))
    return jobs, cluster, pd.DataFrame(rows)
