"""Time-indexed MILP for one group of nodes, solved with HiGHS, and exact compaction.

Formulation (no big-M): time is cut into slots of length delta = H / T, where H is the makespan of
the best plan known so far (an upper bound). Binary x[j,o,n,s] = "job j runs option o on node n
starting at slot s", with option o taking d_o = ceil(runtime_o / delta) slots.

    sum_{o,n,s} x[j,o,n,s] = 1                                    each job runs exactly once
    sum_{j,o,s: s <= t < s + d_o} gpus_o x[j,o,n,s] <= G_n         GPU capacity of node n, slot t
    C >= sum_{o,n,s} (s + d_o) x[j,o,n,s]                          makespan (in slots)
    sum s x[j1,...] <= sum s x[j2,...]                             identical jobs start in order
    min C,   ceil(LB / delta) <= C <= T

Completion-time objectives (`objective: mean_completion | weighted_completion`) use the same
columns and rows with another cost: job j's completion in slots is sum (s + d_o) x[j,o,n,s], so
sum_j w_j C_j is linear in x; the makespan column then costs nothing (it stays as a harmless
free variable, so the model shape -- and the hooks other constraints add to it -- is shared).
Identical jobs are only paired for symmetry breaking when their weights are equal too.

Capacity per node (not per GPU) suffices: on one node any capacity-feasible schedule can be given
concrete GPU ids by assigning them in start order (see `compact`). The LP relaxation of
time-indexed models is strong, and the only constants are GPU counts and slot indices.

Fixed (running) jobs: their GPUs are subtracted from the node's capacity in every slot they
overlap (rounded outward here, inward in the relaxed lower-bound model), and compaction places
them first with their own GPU ids.

Rounding durations up makes every MILP solution feasible in real time, with makespan at most
C * delta after compaction; the price is at most one slot per job on the critical chain, which
is why T adapts to the instance size and the result is compacted with the real durations.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from saturn.planner.cores import RESOURCES, add_core_rows, constrained
from saturn.planner.cores import slot_seed as core_slot_seed
from saturn.planner.highs_util import highs_for
from saturn.planner.inputs import NodeSpec
from saturn.planner.milp_model import MAX_NONZEROS_PER_S, build_model, okey
from saturn.planner.options import JobOptions, Option
from saturn.planner.plan import Assignment
from saturn.planner.slot_replay import compact, match_option, reserved_slots, slot_seed


@dataclass
class MilpResult:
    status: str  # "optimal", "time_limit", "gap_limit", "no_solution", "skipped", ...
    gap: Optional[float]
    time_s: float
    assignments: Optional[list[Assignment]]  # compacted real-time plan, None if no solution
    slot_s: float = 0.0
    num_cols: int = 0


def solve_time_indexed(
    options: Mapping[str, JobOptions],
    nodes: Sequence[NodeSpec],
    seed: Sequence[Assignment],
    lower_bound_s: float,
    *,
    time_limit_s: float,
    mip_gap: float = 0.01,
    slots: int = 40,
    threads: int = 1,
    max_nonzeros: int = 3_000_000,
    fixed: Sequence[Assignment] = (),
    weights: Optional[Mapping[str, float]] = None,
    score: Optional[Callable[[Sequence[Assignment]], float]] = None,
) -> MilpResult:
    """Solve the ceil-rounded model on `nodes`, warm-started from `seed` (a valid plan around
    the `fixed` jobs, which are not in `options`).

    weights (job -> weight): minimize sum w_j C_j instead of the makespan; `score` then ranks
    compaction's replays (see slot_replay.compact)."""
    import highspy

    t0 = time.perf_counter()
    jobs = list(options)
    fixed = [a for a in fixed if a.node in {n.name for n in nodes}]
    horizon = max([a.end_s for a in seed] + [a.end_s for a in fixed])
    delta = horizon / slots
    node_idx = {n.name: i for i, n in enumerate(nodes)}
    seed_by_job = {a.job: a for a in seed}
    opts: dict[str, list[Option]] = {}
    for j in jobs:
        jo, a = options[j], seed_by_job[j]
        cand = [o for o in jo.options if o.runtime_s <= horizon * (1 + 1e-9)]
        seed_opt = match_option(jo.options + jo.by_size, a)
        if okey(seed_opt) not in {okey(o) for o in cand}:
            cand.append(seed_opt)
        opts[j] = cand
    dur = {okey(o): max(1, math.ceil(o.runtime_s / delta - 1e-9)) for j in jobs for o in opts[j]}
    # a fixed job ending at e blocks slots 0 .. ceil(e / delta) - 1 (outward rounding: sound)
    fixed_slots = [(node_idx[a.node], len(a.gpus), max(1, math.ceil(a.end_s / delta - 1e-9))) for a in fixed]
    T0 = max([slots] + [s for *_, s in fixed_slots])
    reserved0 = reserved_slots(fixed_slots, len(nodes), T0)
    seed_slots, seed_ms = slot_seed(seed, lambda a: okey(match_option(opts[a.job], a)), node_idx,
                                    [n.gpus for n in nodes], dur,
                                     reserved0)
    if constrained(nodes):  # cores, host memory too (saturn.planner.cores): a seed that fits their rows
        fixed_use = [(node_idx[a.node], a, n) for a, (_, _, n) in zip(fixed, fixed_slots)]
        seed_slots, seed_ms = core_slot_seed(seed, lambda a: okey(match_option(opts[a.job], a)), node_idx, nodes, dur,
                                             reserved0, fixed_use)
    T = max(slots, seed_ms, T0)
    last = {k: T - d for k, d in dur.items()}
    lb_slots = math.ceil(lower_bound_s / delta - 1e-6) if lower_bound_s > 0 else 0
    w = [float(weights.get(j, 1.0)) for j in jobs] if weights is not None else None
    # Building costs about a second per 2M nonzeros (2 cores) and HiGHS needs time to use the
    # model: a model that cannot be built and searched in the time left is not built at all.
    max_nonzeros = min(max_nonzeros, int(MAX_NONZEROS_PER_S * max(0.0, time_limit_s - (time.perf_counter() - t0))))
    model = build_model(jobs, opts, [(n.gpus, n) for n in nodes], T, dur, dur, last, lb_slots if w is None else 0,
                   max_nonzeros, reserved_slots(fixed_slots, len(nodes), T) if fixed else None, w)
    if model is None:
        return MilpResult("too_large", None, time.perf_counter() - t0, None, delta, 0)
    h = highs_for(model, time_limit_s - (time.perf_counter() - t0), mip_gap, threads)
    for res in RESOURCES:  # per-node capacities beside GPUs: CPU cores, host memory
        add_core_rows(h, model.blocks, nodes, T,
                      [(node_idx[a.node], res.need(a), n) for a, (_, _, n) in zip(fixed, fixed_slots)], res)

    x0 = np.zeros(model.n_cols)
    where = {(b.job, okey(b.option), b.group): b for b in model.blocks}
    for ji, j in enumerate(jobs):
        key, s = seed_slots[j]
        x0[where[(ji, key, node_idx[seed_by_job[j].node])].col0 + s] = 1.0
    x0[model.c_col] = float(max(seed_ms, lb_slots))
    sol = highspy.HighsSolution()
    sol.col_value = x0.tolist()
    sol.value_valid = True
    h.setSolution(sol)

    h.run()
    status = _status_name(h.modelStatusToString(h.getModelStatus()))
    info = h.getInfo()
    gap = float(info.mip_gap) if math.isfinite(info.mip_gap) else None
    values = np.asarray(h.getSolution().col_value)
    elapsed = time.perf_counter() - t0
    if info.primal_solution_status < 1 or len(values) != model.n_cols:
        return MilpResult("no_solution", None, elapsed, None, delta, model.n_cols)
    picks = []  # (start slot, job name, option, node index)
    for b in model.blocks:
        seg = values[b.col0 : b.col0 + b.n_starts]
        k = int(np.argmax(seg))
        if seg[k] > 0.5:
            picks.append((k, jobs[b.job], b.option, b.group))
    if len(picks) != len(jobs):
        return MilpResult("no_solution", gap, elapsed, None, delta, model.n_cols)
    return MilpResult(status, gap, time.perf_counter() - t0, compact(picks, nodes, delta, fixed, score), delta,
                      model.n_cols)


def _status_name(s: str) -> str:
    s = s.lower()
    if "optimal" in s:
        return "optimal"
    if "time limit" in s or "interrupt" in s:
        return "time_limit"
    return s.replace(" ", "_")
