"""Time-indexed MILP for one group of nodes, solved with HiGHS, and exact compaction.

Formulation (no big-M): time is cut into slots of length delta = H / T, where H is the makespan of
the best plan known so far (an upper bound). Binary x[j,o,n,s] = "job j runs option o on node n
starting at slot s", with option o taking d_o = ceil(runtime_o / delta) slots.

    sum_{o,n,s} x[j,o,n,s] = 1                                    each job runs exactly once
    sum_{j,o,s: s <= t < s + d_o} gpus_o x[j,o,n,s] <= G_n         GPU capacity of node n, slot t
    C >= sum_{o,n,s} (s + d_o) x[j,o,n,s]                          makespan (in slots)
    sum s x[j1,...] <= sum s x[j2,...]                             identical jobs start in order
    min C,   ceil(LB / delta) <= C <= T

Capacity per node (not per GPU) suffices: on one node any capacity-feasible schedule can be given
concrete GPU ids by assigning them in start order (see `compact`). The LP relaxation of
time-indexed models is strong, and the only constants are GPU counts and slot indices.

Rounding durations up makes every MILP solution feasible in real time, with makespan at most
C * delta after compaction; the price is at most one slot per job on the critical chain, which
is why T adapts to the instance size and the result is compacted with the real durations.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from saturn.planner.inputs import NodeSpec
from saturn.planner.options import JobOptions, Option
from saturn.planner.plan import Assignment
from saturn.planner.schedule import Choice, NodeTimeline, Scheduler, make_assignment


@dataclass
class MilpResult:
    status: str  # "optimal", "time_limit", "gap_limit", "no_solution", "skipped", ...
    gap: Optional[float]
    time_s: float
    assignments: Optional[list[Assignment]]  # compacted real-time plan, None if no solution
    slot_s: float = 0.0
    num_cols: int = 0


@contextmanager
def _quiet_fd1():
    """HiGHS prints a banner to C stdout when constructed; keep it out of CLI output."""
    try:
        fd = os.dup(1)
    except OSError:  # no real stdout (e.g. some notebooks)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(fd, 1)
        os.close(fd)


def new_highs():
    import highspy

    with _quiet_fd1():
        h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    return h


@dataclass
class _Block:
    """Columns for one (job, option, node): start slots 0..n_starts-1."""

    job: int
    option: Option
    node: int
    dur: int
    col0: int
    n_starts: int


def _slot_seed(blocks_by_key: dict, seed: Sequence[Assignment], opt_key, nodes_idx, caps: Sequence[int], dur_of) -> tuple[dict, int]:
    """Replay the seed plan (options, nodes, start order) in slot time: job -> (key, start slot)."""
    use = [dict() for _ in caps]  # per node: slot -> GPUs in use
    out, ms = {}, 0
    for a in sorted(seed, key=lambda a: (a.start_s, a.job)):
        key = opt_key(a)
        n = nodes_idx[a.node]
        d, g = dur_of[key], len(a.gpus)
        s = 0
        while any(use[n].get(t, 0) + g > caps[n] for t in range(s, s + d)):
            s += 1
        for t in range(s, s + d):
            use[n][t] = use[n].get(t, 0) + g
        out[a.job] = (key, s)
        ms = max(ms, s + d)
    return out, ms


def solve_time_indexed(
    options: Mapping[str, JobOptions],
    nodes: Sequence[NodeSpec],
    seed: Sequence[Assignment],
    lower_bound_s: float,
    *,
    time_limit_s: float,
    mip_gap: float = 0.01,
    slots: int = 80,
    threads: int = 1,
    max_nonzeros: int = 3_000_000,
) -> MilpResult:
    """Solve the model for `options` on `nodes`, warm-started from `seed` (a valid plan)."""
    t0 = time.perf_counter()
    jobs = list(options)
    horizon = max(a.end_s for a in seed)
    delta = horizon / slots
    node_idx = {n.name: i for i, n in enumerate(nodes)}
    caps = [n.gpus for n in nodes]

    def okey(o: Option):
        return (o.job, o.technique, o.knobs, o.gpus, o.gpu_type)

    seed_by_job = {a.job: a for a in seed}
    opts: dict[str, list[Option]] = {}
    for j in jobs:
        jo = options[j]
        a = seed_by_job[j]
        cand = [o for o in jo.options if o.runtime_s <= horizon * (1 + 1e-9)]
        seed_opt = next(o for o in jo.options + jo.by_size if o.technique == a.technique and o.gpus == len(a.gpus)
                        and o.knobs_dict == a.knobs and o.fits(nodes[node_idx[a.node]]) and abs(o.runtime_s - a.duration_s) <= 1e-6 * max(1.0, a.duration_s))
        if okey(seed_opt) not in {okey(o) for o in cand}:
            cand.append(seed_opt)
        opts[j] = cand
    dur_of = {okey(o): max(1, math.ceil(o.runtime_s / delta - 1e-9)) for j in jobs for o in opts[j]}
    seed_slots, seed_ms = _slot_seed({}, seed, lambda a: okey(_match(opts[a.job], a)), node_idx, caps, dur_of)
    T = max(slots, seed_ms)

    # --- columns -------------------------------------------------------------------------
    J = len(jobs)
    cap_base = [2 * J + sum(T for _ in range(i)) for i in range(len(nodes))]
    sym_pairs = _identical_pairs(jobs, opts)
    sym_row0 = 2 * J + T * len(nodes)
    sym_rows_of: dict[int, list[tuple[int, int]]] = {}
    for p, (j1, j2) in enumerate(sym_pairs):
        sym_rows_of.setdefault(j1, []).append((sym_row0 + p, -1))
        sym_rows_of.setdefault(j2, []).append((sym_row0 + p, +1))
    n_rows = sym_row0 + len(sym_pairs)

    blocks: list[_Block] = []
    starts, index, value = [0], [], []
    col = 0
    nnz = 0
    for ji, j in enumerate(jobs):
        for o in opts[j]:
            d = dur_of[okey(o)]
            for ni, n in enumerate(nodes):
                if not o.fits(n) or d > T:
                    continue
                ns = T - d + 1
                nnz += ns * (2 + d + len(sym_rows_of.get(ji, [])))
                if nnz > max_nonzeros:
                    return MilpResult("too_large", None, time.perf_counter() - t0, None, delta, col)
                blocks.append(_Block(ji, o, ni, d, col, ns))
                s = np.arange(ns)
                rows = [np.full(ns, ji), np.full(ns, J + ji)]
                vals = [np.ones(ns), -(s + d).astype(float)]
                for k in range(d):
                    rows.append(cap_base[ni] + s + k)
                    vals.append(np.full(ns, float(o.gpus)))
                for r, sign in sym_rows_of.get(ji, []):
                    rows.append(np.full(ns, r))
                    vals.append(sign * s.astype(float))
                R = np.stack(rows, axis=1)
                V = np.stack(vals, axis=1)
                mask = V != 0
                index.append(R[mask])  # row-major over (start, entry): column by column
                value.append(V[mask])
                starts.extend((np.cumsum(mask.sum(axis=1)) + starts[-1]).tolist())
                col += ns
    c_col = col  # the makespan variable
    index.append(np.arange(J, 2 * J))
    value.append(np.ones(J))
    starts.append(starts[-1] + J)
    n_cols = col + 1

    import highspy

    lp = highspy.HighsLp()
    lp.num_col_ = n_cols
    lp.num_row_ = n_rows
    cost = np.zeros(n_cols)
    cost[c_col] = 1.0
    lp.col_cost_ = cost
    lb_slots = max(1, math.ceil(lower_bound_s / delta - 1e-9)) if lower_bound_s > 0 else 0
    lp.col_lower_ = np.concatenate([np.zeros(col), [float(min(lb_slots, T))]])
    lp.col_upper_ = np.concatenate([np.ones(col), [float(T)]])
    row_lower = np.concatenate([np.ones(J), np.zeros(J), np.full(T * len(nodes), -highspy.kHighsInf), np.zeros(len(sym_pairs))])
    row_upper = np.concatenate([np.ones(J), np.full(J, highspy.kHighsInf), np.repeat(np.array(caps, float), T), np.full(len(sym_pairs), highspy.kHighsInf)])
    lp.row_lower_ = row_lower
    lp.row_upper_ = row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.concatenate(index).astype(np.int32)
    lp.a_matrix_.value_ = np.concatenate(value)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * col + [highspy.HighsVarType.kContinuous]

    h = new_highs()
    h.setOptionValue("time_limit", max(0.1, time_limit_s - (time.perf_counter() - t0)))
    h.setOptionValue("mip_rel_gap", mip_gap)
    h.setOptionValue("threads", threads)
    h.setOptionValue("random_seed", 0)
    h.passModel(lp)

    # --- warm start from the seed plan ---------------------------------------------------
    x0 = np.zeros(n_cols)
    by_jn = {}
    for b in blocks:
        by_jn[(b.job, okey(b.option), b.node)] = b
    for ji, j in enumerate(jobs):
        key, s = seed_slots[j]
        b = by_jn[(ji, key, node_idx[seed_by_job[j].node])]
        x0[b.col0 + s] = 1.0
    x0[c_col] = float(seed_ms)
    sol = highspy.HighsSolution()
    sol.col_value = x0.tolist()
    sol.value_valid = True
    h.setSolution(sol)

    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    info = h.getInfo()
    gap = float(info.mip_gap) if math.isfinite(info.mip_gap) else None
    values = np.asarray(h.getSolution().col_value) if info.primal_solution_status >= 1 else None
    elapsed = time.perf_counter() - t0
    if values is None or len(values) != n_cols:
        return MilpResult("no_solution", None, elapsed, None, delta, n_cols)
    picks = []  # (start slot, job name, option, node index)
    for b in blocks:
        seg = values[b.col0 : b.col0 + b.n_starts]
        k = int(np.argmax(seg))
        if seg[k] > 0.5:
            picks.append((k, jobs[b.job], b.option, b.node))
    if len(picks) != J:
        return MilpResult("no_solution", gap, elapsed, None, delta, n_cols)
    plan = compact(picks, nodes, delta)
    return MilpResult(_status_name(status), gap, time.perf_counter() - t0, plan, delta, n_cols)


def _match(opts: list[Option], a: Assignment) -> Option:
    return next(o for o in opts if o.technique == a.technique and o.gpus == len(a.gpus) and o.knobs_dict == a.knobs)


def _status_name(s: str) -> str:
    s = s.lower()
    if "optimal" in s:
        return "optimal"
    if "time limit" in s:
        return "time_limit"
    return s.replace(" ", "_")


def _identical_pairs(jobs: list[str], opts: Mapping[str, list[Option]]) -> list[tuple[int, int]]:
    """Consecutive pairs of jobs with identical option sets (interchangeable in any plan)."""
    groups: dict[tuple, list[int]] = {}
    for ji, j in enumerate(jobs):
        sig = tuple(sorted((o.gpus, round(o.runtime_s, 9), o.gpu_type or "") for o in opts[j]))
        groups.setdefault(sig, []).append(ji)
    return [(g[i], g[i + 1]) for g in groups.values() for i in range(len(g) - 1)]


def compact(picks: list[tuple[int, str, Option, int]], nodes: Sequence[NodeSpec], delta: float) -> list[Assignment]:
    """Exact compaction of a slotted solution into a real-time plan with GPU ids.

    Two replays, keep the shorter: (a) start at s*delta with the real duration, give GPU ids in
    start order (possible because slot capacity held and real durations are shorter), then shift
    every job left as far as its own GPUs allow (never later: makespan <= C*delta); (b) list
    schedule the same options/nodes in the MILP's start order, each job as early as possible.
    """
    picks = sorted(picks, key=lambda p: (p[0], -p[2].gpus, p[1]))
    a = _compact_fixed(picks, nodes, delta)
    sched = Scheduler(nodes)
    for _, _, o, ni in picks:
        sched.add(Choice(o, nodes[ni].name))
    b = sched.assignments
    return a if max(x.end_s for x in a) <= max(x.end_s for x in b) else b


def _compact_fixed(picks, nodes: Sequence[NodeSpec], delta: float) -> list[Assignment]:
    free_at = [[0.0] * n.gpus for n in nodes]  # real end of the last job on each GPU
    shifted_end = [[0.0] * n.gpus for n in nodes]  # same, after left-shifting
    out = []
    for s, _, o, ni in picks:
        t = s * delta
        free = [g for g in range(nodes[ni].gpus) if free_at[ni][g] <= t + 1e-9 * max(1.0, t)]
        if len(free) < o.gpus:  # cannot happen for a capacity-feasible slotted plan
            raise AssertionError("slot capacity violated during compaction")
        free.sort(key=lambda g: -free_at[ni][g])  # best fit: GPUs freed most recently
        ids = sorted(free[: o.gpus])
        start = max(shifted_end[ni][g] for g in ids)
        for g in ids:
            free_at[ni][g] = t + o.runtime_s
            shifted_end[ni][g] = start + o.runtime_s
        out.append(make_assignment(o, nodes[ni].name, start, ids))
    return out
