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
from saturn.planner.highs_util import _quiet_fd1, highs_for, interrupt_at_deadline, new_highs  # noqa: F401
from saturn.planner.inputs import NodeSpec
from saturn.planner.options import JobOptions, Option
from saturn.planner.plan import Assignment
from saturn.planner.slot_replay import compact, match_option, reserved_slots, slot_seed

MAX_NONZEROS_PER_S = 500_000  # largest model worth building per second of time limit

_highs_for = highs_for  # old private names, kept for callers outside the planner
_match = match_option


@dataclass
class MilpResult:
    status: str  # "optimal", "time_limit", "gap_limit", "no_solution", "skipped", ...
    gap: Optional[float]
    time_s: float
    assignments: Optional[list[Assignment]]  # compacted real-time plan, None if no solution
    slot_s: float = 0.0
    num_cols: int = 0


@dataclass
class _Block:
    """Columns for one (job, option, node group): start slots 0..n_starts-1."""

    job: int
    option: Option
    group: int
    dur: int
    col0: int
    n_starts: int


@dataclass
class _Model:
    lp: object
    blocks: list[_Block]
    c_col: int
    n_cols: int


def okey(o: Option) -> tuple:
    return (o.job, o.technique, o.knobs, o.gpus, o.gpu_type)


def _build(jobs, opts, groups, T, dur, endc, last_start, lb_slots, max_nonzeros, reserved=None,
           weights: Optional[Sequence[float]] = None) -> Optional[_Model]:
    """Column-wise (CSC) time-indexed model; see the module docstring for the rows.

    groups: [(capacity, representative node)] (one per node, or per pool of identical nodes);
    dur/endc/last_start: per option key, slots occupied, end coefficient in the makespan row,
    and the last allowed start slot; reserved: per group, GPUs taken by fixed jobs in slot t
    (array of length T); weights: per job index, for the completion-time objective (None:
    minimize the makespan column). Returns None if the model would exceed max_nonzeros.
    """
    import highspy

    J = len(jobs)
    sym_pairs = _identical_pairs(jobs, opts, weights)
    sym_row0 = 2 * J + T * len(groups)
    sym_rows_of: dict[int, list[tuple[int, int]]] = {}
    for p, (j1, j2) in enumerate(sym_pairs):
        sym_rows_of.setdefault(j1, []).append((sym_row0 + p, -1))
        sym_rows_of.setdefault(j2, []).append((sym_row0 + p, +1))
    blocks: list[_Block] = []
    starts, index, value, costs = [0], [], [], []
    col = nnz = 0
    for ji, j in enumerate(jobs):
        syms = sym_rows_of.get(ji, [])
        for o in opts[j]:
            k = okey(o)
            d, ns = dur[k], last_start[k] + 1
            if ns <= 0:
                continue
            for gi, (_, rep) in enumerate(groups):
                if not o.fits(rep):
                    continue
                nnz += ns * (2 + d + len(syms))
                if nnz > max_nonzeros:
                    return None
                blocks.append(_Block(ji, o, gi, d, col, ns))
                s = np.arange(ns)
                if weights is not None:  # w_j * (completion slot of this start)
                    costs.append(weights[ji] * (s + endc[k]).astype(float))
                rows = [np.full(ns, ji), np.full(ns, J + ji)]
                vals = [np.ones(ns), -(s + endc[k]).astype(float)]
                for step in range(d):
                    rows.append(2 * J + gi * T + s + step)
                    vals.append(np.full(ns, float(o.gpus)))
                for r, sign in syms:
                    rows.append(np.full(ns, r))
                    vals.append(sign * s.astype(float))
                R, V = np.stack(rows, axis=1), np.stack(vals, axis=1)
                mask = V != 0
                index.append(R[mask])  # row-major over (start, entry) = column by column
                value.append(V[mask])
                starts.extend((np.cumsum(mask.sum(axis=1)) + starts[-1]).tolist())
                col += ns
    c_col = col
    index.append(np.arange(J, 2 * J))
    value.append(np.ones(J))
    starts.append(starts[-1] + J)
    n_cols, n_rows = col + 1, sym_row0 + len(sym_pairs)
    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n_cols, n_rows
    cost = np.zeros(n_cols)
    if weights is None:
        cost[c_col] = 1.0
    elif costs:
        cost[:c_col] = np.concatenate(costs)
    lp.col_cost_ = cost
    lp.col_lower_ = np.concatenate([np.zeros(col), [float(min(lb_slots, T))]])
    lp.col_upper_ = np.concatenate([np.ones(col), [inf]])
    caps = np.repeat(np.array([c for c, _ in groups], float), T)
    if reserved is not None:
        caps = np.maximum(0.0, caps - np.concatenate([np.asarray(r, float)[:T] for r in reserved]))
    nsym = len(sym_pairs)
    lp.row_lower_ = np.concatenate([np.ones(J), np.zeros(J), np.full(T * len(groups), -inf), np.zeros(nsym)])
    lp.row_upper_ = np.concatenate([np.ones(J), np.full(J, inf), caps, np.full(nsym, inf)])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.concatenate(index).astype(np.int32)
    lp.a_matrix_.value_ = np.concatenate(value)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * col + [highspy.HighsVarType.kContinuous]
    return _Model(lp, blocks, c_col, n_cols)


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
    model = _build(jobs, opts, [(n.gpus, n) for n in nodes], T, dur, dur, last, lb_slots if w is None else 0,
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


def _identical_pairs(jobs: list[str], opts: Mapping[str, list[Option]],
                     weights: Optional[Sequence[float]] = None) -> list[tuple[int, int]]:
    """Consecutive pairs of jobs with identical option sets (and weights): interchangeable."""
    groups: dict[tuple, list[int]] = {}
    for ji, j in enumerate(jobs):
        sig: tuple = tuple(sorted((o.gpus, round(o.runtime_s, 9), o.gpu_type or "") for o in opts[j]))
        if weights is not None:
            sig = (round(float(weights[ji]), 12),) + sig
        groups.setdefault(sig, []).append(ji)
    return [(g[i], g[i + 1]) for g in groups.values() for i in range(len(g) - 1)]




def slot_lower_bound(*args, **kwargs):
    """See milp_bounds.slot_lower_bound (kept here for existing imports)."""
    from saturn.planner.milp_bounds import slot_lower_bound as impl

    return impl(*args, **kwargs)


def export_model(*args, **kwargs):
    """See milp_bounds.export_model (kept here for existing imports)."""
    from saturn.planner.milp_bounds import export_model as impl

    return impl(*args, **kwargs)
