"""The remaining work, and what holds GPUs now, as `saturn.planner.plan` inputs.

Why a module of its own: the planner knows nothing of a run in progress; this is where a run's
state becomes the planner's plain inputs, and where switching costs enter them, so the planner
weighs switching itself.

* `planner_jobs_and_profiles`: the remaining work. Running jobs get their remaining steps; their
  current option costs no start-up, every other option of theirs costs start-up + checkpoint (the
  switching cost).
* `held_gpus` / `planner_inputs_around_running`: what holds GPUs now as the planner's `fixed`
  assignments (times relative to now): running jobs keep their option and GPUs until their
  estimated end (remaining steps at the observed speed); a checkpointing job (stopping, or moved by
  a candidate) holds its old GPUs for its checkpoint time as a pseudo-job `<job>@checkpoint`. With
  them, `plan(..., fixed=...)` optimizes the rest around the running jobs: the "no job moved"
  candidate.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Iterable, Mapping

import pandas as pd

from saturn.executor.estimates import Estimator
from saturn.executor.state import (
    ACTIVE,
    OFF_GPU,
    RUNNING,
    STOPPING,
    JobState,
    RunState,
)
from saturn.parse import canonical_knobs as knobs_key
from saturn.planner import Assignment

CHECKPOINT_SUFFIX = "@checkpoint"  # pseudo-job holding a checkpointing job's old GPUs
WORKER_START_SUFFIX = "@worker-start"  # pseudo-job holding a GPU whose warm worker is starting


def planner_jobs_and_profiles(state: RunState, est: Estimator, now: float) -> tuple[list[Any], pd.DataFrame]:
    """(jobs, profile table) for `saturn.planner.plan` describing the remaining work (running jobs
    may switch; `planner_inputs_around_running` is the variant in which none moves)."""
    jobs, rows = [], []
    for js in state.jobs.values():
        if js.status in OFF_GPU or (js.status == STOPPING and js.stop_reason != "switch"):
            continue
        steps = js.live_remaining_steps if js.status == RUNNING else js.remaining_steps
        if steps <= 0:
            continue
        seg = js.current if js.status == RUNNING else None
        opts = est.options(js)
        if not opts:
            continue
        fresh = seg is None and js.status != STOPPING and not js.startup_obs
        jobs.append(SimpleNamespace(name=js.name, steps=steps, techniques=None, gpus=None, signature=None,
                                    checkpoint_every=est.checkpoint_every if fresh else 0))
        for o in opts:
            st = est.step_time(js, o.technique, o.gpus, o.knobs)
            current = (seg is not None and o.technique == seg.technique and o.gpus == len(seg.gpus)
                       and o.knobs == knobs_key(seg.knobs))
            if current:
                startup = max(0.0, est.remaining_s(js, now) - steps * st)
            elif seg is not None:
                startup = est.switch_cost(js, o.technique, o.gpus, o.knobs)
            elif js.status == STOPPING:
                startup = checkpoint_left(js, est, now) + est.startup(js, o.technique, o.gpus, o.knobs)
            else:
                startup = est.startup(js, o.technique, o.gpus, o.knobs)
            split = {}  # a fresh job on its profiled fixed cost: launch + final save, by phase
            final = est.final_save_s(o)
            if fresh and final is not None and startup >= final:
                behind = final != o.checkpoint_s
                split = {"launch_s": startup - final, "checkpoint_s": final,
                         "checkpoint_source": ("estimated" if behind and o.checkpoint_stage_s is None
                                               else o.checkpoint_source),
                         "checkpoint_stage_s": o.checkpoint_s if est.over_budget(o) else o.checkpoint_stage_s,
                         **({"drain_s": max(0.0, o.checkpoint_s - final)} if behind and o.checkpoint_s else {})}
            rows.append({"job": js.name, "technique": o.technique, "knobs": o.knobs, "gpus": o.gpus,
                         "step_time_s": st, "startup_s": startup, "feasible": True,
                         "gpu_type": o.gpu_type, **split})
    return jobs, pd.DataFrame(rows, columns=["job", "technique", "knobs", "gpus", "step_time_s",
                                             "startup_s", "feasible", "gpu_type", "launch_s",
                                             "checkpoint_s", "checkpoint_source",
                                             "checkpoint_stage_s", "drain_s"])


def checkpoint_left(js: JobState, est: Estimator, now: float) -> float:
    """Checkpoint time a running/stopping job still needs before its GPUs are free."""
    left = est.checkpoint_cost(js)
    seg = js.current
    if seg is not None and seg.stop_requested_at is not None:
        left = max(0.0, left - (now - seg.stop_requested_at))
    return left


def held_gpus(state: RunState, est: Estimator, now: float, moved: Iterable[str] = ()) -> list[Assignment]:
    """What holds GPUs now, as `fixed` assignments for the planner (times relative to `now`).

    A running job not in `moved` keeps its option and GPUs until its estimated end (remaining time
    from observed speed); a job that checkpoints -- a stopping job, or a running job in `moved` --
    holds its old GPUs for its (remaining) checkpoint time, as a pseudo-job `<job>@checkpoint`
    (see `is_checkpoint`), which is not launched and is dropped from the plans the executor keeps."""
    moved = set(moved)
    out = []
    # a running job keeps the host memory its plan gave it (saturn.planner.cores.HOST_MEMORY)
    host = {a.get("job"): float(a.get("host_mem_gb") or 0.0) for a in (state.plan or {}).get("assignments", [])}
    for js in state.jobs.values():
        seg = js.current
        if js.status not in ACTIVE or seg is None:
            continue
        if js.status == RUNNING and js.name not in moved:
            out.append(Assignment(js.name, seg.technique, dict(seg.knobs), seg.node, list(seg.gpus), 0.0,
                                  max(est.remaining_s(js, now), 1e-6), host_mem_gb=host.get(js.name, 0.0)))
        else:
            left = checkpoint_left(js, est, now)
            if left > 1e-9:
                out.append(Assignment(js.name + CHECKPOINT_SUFFIX, seg.technique, dict(seg.knobs), seg.node,
                                      list(seg.gpus), 0.0, left))
    return out + worker_start_blocks(state, est)


def worker_start_blocks(state: RunState, est: Estimator) -> list[Assignment]:
    """Devices whose warm worker is still starting, held for the rest of that start as pseudo-jobs
    `<node>:<gpu>@worker-start` (not launched, dropped like checkpoint pseudo-jobs): the first job
    planned there starts after it, every later one pays only the warm launch."""
    busy = state.busy_gpus()
    out = []
    for (node, gpu), left in sorted(est.launch.worker_starts.items()):
        left = est.worker_start_s() if left is None else float(left)
        if left > 1e-9 and (node, int(gpu)) not in busy:
            out.append(Assignment(f"{node}:{gpu}{WORKER_START_SUFFIX}", "worker-start", {}, node,
                                  [int(gpu)], 0.0, left))
    return out


def is_checkpoint(a: Any) -> bool:
    """A pseudo-job of `held_gpus` (a checkpoint or a worker start): held time, never launched."""
    job = a["job"] if isinstance(a, Mapping) else a.job
    return str(job).endswith((CHECKPOINT_SUFFIX, WORKER_START_SUFFIX))


def planner_inputs_around_running(state: RunState, est: Estimator, now: float
                                  ) -> tuple[list[Any], pd.DataFrame, list[Assignment]]:
    """(jobs, profile table, fixed) for `plan(jobs, cluster, table, fixed=fixed)`: the plan in
    which no running job moves. Running jobs are fixed on their GPUs (see `held_gpus`), so the
    solver places everything else around them; only the other jobs are planned."""
    fixed = held_gpus(state, est, now)
    pinned = {a.job for a in fixed}
    jobs, table = planner_jobs_and_profiles(state, est, now)
    jobs = [j for j in jobs if j.name not in pinned]
    table = table[table["job"].isin({j.name for j in jobs})].reset_index(drop=True)
    return jobs, table, fixed

