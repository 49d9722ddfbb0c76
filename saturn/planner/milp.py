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

Fixed (running) jobs: their GPUs are subtracted from the node's capacity in every slot they
overlap (rounded outward here, inward in the relaxed lower-bound model), and compaction places
them first with their own GPU ids.

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

from saturn.planner.cores import add_core_rows, constrained, cores_ok, slot_seed
from saturn.planner.inputs import NodeSpec
from saturn.planner.options import JobOptions, Option
from saturn.planner.plan import Assignment
from saturn.planner.schedule import Choice, Scheduler, make_assignment


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


def _build(jobs, opts, groups, T, dur, endc, last_start, lb_slots, max_nonzeros, reserved=None) -> Optional[_Model]:
    """Column-wise (CSC) time-indexed model; see the module docstring for the rows.

    groups: [(capacity, representative node)] (one per node, or per pool of identical nodes);
    dur/endc/last_start: per option key, slots occupied, end coefficient in the makespan row,
    and the last allowed start slot; reserved: per group, GPUs taken by fixed jobs in slot t
    (array of length T). Returns None if the model would exceed max_nonzeros.
    """
    import highspy

    J = len(jobs)
    sym_pairs = _identical_pairs(jobs, opts)
    sym_row0 = 2 * J + T * len(groups)
    sym_rows_of: dict[int, list[tuple[int, int]]] = {}
    for p, (j1, j2) in enumerate(sym_pairs):
        sym_rows_of.setdefault(j1, []).append((sym_row0 + p, -1))
        sym_rows_of.setdefault(j2, []).append((sym_row0 + p, +1))
    blocks: list[_Block] = []
    starts, index, value = [0], [], []
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
    cost[c_col] = 1.0
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


def _highs_for(model: _Model, time_limit_s: float, mip_gap: float, threads: int):
    """A HiGHS instance for `model` that stops by `time_limit_s` from now, wall clock.

    Two things keep it on time (measured on 30-slot models of 64 jobs / 16 GPUs, where the
    default settings ran 5.6 s past a 1 s limit): *light* presolve (presolve_mode=2), because
    full presolve's probing on time-indexed models checks neither the time limit nor the
    interrupt callback -- light presolve also solves these models 2-10x faster to optimality --
    and a MIP-interrupt callback that stops the search at the wall-clock deadline (HiGHS' own
    limit counts from inside run(), and the callback also catches overruns in its heuristics).
    """
    h = new_highs()
    # Stop a little early: an interrupt is only seen between B&B steps, and the caller still
    # extracts and compacts the solution (measured: 0.1-0.3 s on a loaded 2-core machine).
    budget = max(0.05, 0.95 * time_limit_s - 0.05)
    deadline = time.perf_counter() + budget
    h.setOptionValue("time_limit", budget)
    h.setOptionValue("mip_rel_gap", mip_gap)
    h.setOptionValue("threads", threads)
    h.setOptionValue("random_seed", 0)
    try:  # not in older HiGHS releases (pyproject allows >= 1.7)
        h.setOptionValue("presolve_mode", 2)
    except Exception:  # noqa: BLE001
        pass
    h.passModel(model.lp)
    interrupt_at_deadline(h, deadline)
    return h


def interrupt_at_deadline(h, deadline: float) -> None:
    """Ask HiGHS to stop (keeping its incumbent) once time.perf_counter() passes `deadline`."""

    def stop(e):
        if time.perf_counter() >= deadline:
            e.interrupt()

    for name in ("cbMipInterrupt", "cbSimplexInterrupt", "cbIpmInterrupt"):
        cb = getattr(h, name, None)
        if cb is not None:
            try:
                cb.subscribe(stop)
            except Exception:  # noqa: BLE001 - older highspy: rely on the time_limit option
                return


def _slot_seed(seed: Sequence[Assignment], opt_key, nodes_idx, caps: Sequence[int], dur_of,
               reserved=None) -> tuple[dict, int]:
    """Replay the seed plan (options, nodes, start order) in slot time: job -> (key, start slot).

    Gives HiGHS a feasible starting point of the rounded model; its makespan fixes the horizon.
    """
    use = [dict() for _ in caps]  # per node: slot -> GPUs in use
    for n, r in enumerate(reserved or []):
        for t, g in enumerate(r):
            if g:
                use[n][t] = int(g)
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
    slots: int = 40,
    threads: int = 1,
    max_nonzeros: int = 3_000_000,
    fixed: Sequence[Assignment] = (),
) -> MilpResult:
    """Solve the ceil-rounded model on `nodes`, warm-started from `seed` (a valid plan around
    the `fixed` jobs, which are not in `options`)."""
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
        seed_opt = _match(jo.options + jo.by_size, a)
        if okey(seed_opt) not in {okey(o) for o in cand}:
            cand.append(seed_opt)
        opts[j] = cand
    dur = {okey(o): max(1, math.ceil(o.runtime_s / delta - 1e-9)) for j in jobs for o in opts[j]}
    # a fixed job ending at e blocks slots 0 .. ceil(e / delta) - 1 (outward rounding: sound)
    fixed_slots = [(node_idx[a.node], len(a.gpus), max(1, math.ceil(a.end_s / delta - 1e-9))) for a in fixed]
    T0 = max([slots] + [s for *_, s in fixed_slots])
    reserved0 = _reserved(fixed_slots, len(nodes), T0)
    seed_slots, seed_ms = _slot_seed(seed, lambda a: okey(_match(opts[a.job], a)), node_idx, [n.gpus for n in nodes], dur,
                                     reserved0)
    if constrained(nodes):  # CPU cores too (saturn.planner.cores): a seed that fits the core rows
        fixed_cores = [(node_idx[a.node], a.cpu_cores, n) for a, (_, _, n) in zip(fixed, fixed_slots)]
        seed_slots, seed_ms = slot_seed(seed, lambda a: okey(_match(opts[a.job], a)), node_idx, nodes, dur, reserved0,
                                        fixed_cores)
    T = max(slots, seed_ms, T0)
    last = {k: T - d for k, d in dur.items()}
    lb_slots = math.ceil(lower_bound_s / delta - 1e-6) if lower_bound_s > 0 else 0
    model = _build(jobs, opts, [(n.gpus, n) for n in nodes], T, dur, dur, last, lb_slots, max_nonzeros,
                   _reserved(fixed_slots, len(nodes), T) if fixed else None)
    if model is None:
        return MilpResult("too_large", None, time.perf_counter() - t0, None, delta, 0)
    h = _highs_for(model, time_limit_s - (time.perf_counter() - t0), mip_gap, threads)
    add_core_rows(h, model.blocks, nodes, T, [(node_idx[a.node], a.cpu_cores, n) for a, (_, _, n) in zip(fixed, fixed_slots)])

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
    return MilpResult(status, gap, time.perf_counter() - t0, compact(picks, nodes, delta, fixed), delta, model.n_cols)


def _reserved(fixed_slots, n_groups: int, T: int) -> list[np.ndarray]:
    """Per group: GPUs held by fixed jobs in each of T slots; fixed_slots = [(group, gpus, n_slots)]."""
    out = [np.zeros(T) for _ in range(n_groups)]
    for gi, g, n in fixed_slots:
        out[gi][: min(n, T)] += g
    return out


def slot_lower_bound(
    options: Mapping[str, JobOptions],
    nodes: Sequence[NodeSpec],
    upper_bound_s: float,
    lower_bound_s: float,
    *,
    time_limit_s: float,
    slots: int = 40,
    threads: int = 1,
    max_nonzeros: int = 2_000_000,
    fixed: Sequence[Assignment] = (),
) -> Optional[float]:
    """A valid makespan lower bound from a *relaxed* time-indexed model (None if not solved).

    Relaxations: durations rounded *down* to slots (a real schedule with start S maps to slot
    floor(S/delta); every job occupying slot t in that image is running at real time
    (t+1)*delta - 0, so slot capacities hold), identical nodes pooled into one capacity (drops
    "all GPUs on one node" across pooled nodes, keeps it via option fit), and the makespan row
    uses the real runtime: C * delta >= floor(S/delta)*delta + r <= S + r. Any dual bound of
    this MILP, times delta, bounds every plan no longer than upper_bound_s; hence
    min(upper_bound_s, bound) is valid. A fixed job ending at e is surely running at the instant
    (t+1)*delta - 0 only for t + 1 <= e / delta, so it takes capacity in slots 0..floor(e/delta)-1.
    """
    t0 = time.perf_counter()
    jobs = list(options)
    delta = upper_bound_s / slots
    opts = {j: [o for o in options[j].options if o.runtime_s <= upper_bound_s * (1 + 1e-9)] for j in jobs}
    pools: dict[tuple, list[NodeSpec]] = {}
    for n in nodes:
        pools.setdefault((n.gpus, (n.gpu_type or "").lower()), []).append(n)
    groups = [(sum(n.gpus for n in ns), ns[0]) for ns in pools.values()]
    group_of = {n.name: gi for gi, ns in enumerate(pools.values()) for n in ns}
    keys = {okey(o): o for j in jobs for o in opts[j]}
    dur = {k: int(math.floor(o.runtime_s / delta + 1e-9)) for k, o in keys.items()}
    endc = {k: o.runtime_s / delta for k, o in keys.items()}
    last = {k: int(math.floor((upper_bound_s - o.runtime_s) / delta + 1e-9)) for k, o in keys.items()}
    T = slots + 1
    lb_slots = lower_bound_s / delta
    fixed_slots = [(group_of[a.node], len(a.gpus), int(math.floor(a.end_s / delta + 1e-9)))
                   for a in fixed if a.node in group_of]
    reserved = _reserved(fixed_slots, len(groups), T) if fixed_slots else None
    model = _build(jobs, opts, groups, T, dur, endc, last, lb_slots, max_nonzeros, reserved)
    if model is None:
        return None
    h = _highs_for(model, time_limit_s - (time.perf_counter() - t0), 0.0, threads)
    h.run()
    info = h.getInfo()
    status = h.getModelStatus()
    import highspy

    if status == highspy.HighsModelStatus.kInfeasible:
        return upper_bound_s  # no plan shorter than the upper bound exists
    bound = info.mip_dual_bound
    if not math.isfinite(bound):
        return None
    return min(upper_bound_s, bound * delta * (1 - 1e-7))


def _match(opts: list[Option], a: Assignment) -> Option:
    """The option an assignment runs (same technique, knobs, GPU count and duration)."""
    tol = 1e-6 * max(1.0, a.duration_s)
    return next(
        o for o in opts
        if o.technique == a.technique and o.gpus == len(a.gpus) and o.knobs_dict == a.knobs
        and abs(o.runtime_s - a.duration_s) <= tol
    )


def _status_name(s: str) -> str:
    s = s.lower()
    if "optimal" in s:
        return "optimal"
    if "time limit" in s or "interrupt" in s:
        return "time_limit"
    return s.replace(" ", "_")


def _identical_pairs(jobs: list[str], opts: Mapping[str, list[Option]]) -> list[tuple[int, int]]:
    """Consecutive pairs of jobs with identical option sets (interchangeable in any plan)."""
    groups: dict[tuple, list[int]] = {}
    for ji, j in enumerate(jobs):
        sig = tuple(sorted((o.gpus, round(o.runtime_s, 9), o.gpu_type or "") for o in opts[j]))
        groups.setdefault(sig, []).append(ji)
    return [(g[i], g[i + 1]) for g in groups.values() for i in range(len(g) - 1)]


def compact(picks: list[tuple[int, str, Option, int]], nodes: Sequence[NodeSpec], delta: float,
            fixed: Sequence[Assignment] = ()) -> list[Assignment]:
    """Exact compaction of a slotted solution into a real-time plan with GPU ids.

    Two replays, keep the shorter: (a) start at s*delta with the real duration, give GPU ids in
    start order (possible because slot capacity held and real durations are shorter), then shift
    every job left as far as its own GPUs allow (never later: makespan <= C*delta); (b) list
    schedule the same options/nodes in the MILP's start order, each job as early as possible.
    """
    picks = sorted(picks, key=lambda p: (p[0], -p[2].gpus, p[1]))
    a = _compact_fixed(picks, nodes, delta, fixed)
    sched = Scheduler(nodes, fixed)
    for _, _, o, ni in picks:
        sched.add(Choice(o, nodes[ni].name))
    b = sched.assignments
    if not cores_ok(a, nodes, fixed):  # left-shifting ignores cores; the list scheduler keeps them
        return b
    return a if max(x.end_s for x in a) <= max(x.end_s for x in b) else b


def _compact_fixed(picks, nodes: Sequence[NodeSpec], delta: float, fixed: Sequence[Assignment] = ()) -> list[Assignment]:
    free_at = [[0.0] * n.gpus for n in nodes]  # real end of the last job on each GPU
    shifted_end = [[0.0] * n.gpus for n in nodes]  # same, after left-shifting
    idx = {n.name: i for i, n in enumerate(nodes)}
    for f in fixed:  # running jobs hold their GPUs from 0 to their end
        if f.node in idx:
            for g in f.gpus:
                free_at[idx[f.node]][g] = max(free_at[idx[f.node]][g], f.end_s)
                shifted_end[idx[f.node]][g] = max(shifted_end[idx[f.node]][g], f.end_s)
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


def export_model(jobs, cluster, profiles, path, *, slots: int = 40):
    """Write the rounded time-indexed model (warm-start horizon from the greedy plan) as MPS/LP.

    For users with other MILP solvers; the file format follows the suffix (.mps or .lp).
    """
    from pathlib import Path

    from saturn.planner.greedy import greedy_candidates, makespan
    from saturn.planner.inputs import normalize_cluster, normalize_jobs
    from saturn.planner.lower_bound import lower_bound
    from saturn.planner.options import build_options

    nodes = normalize_cluster(cluster)
    options = build_options(normalize_jobs(jobs), nodes, profiles)
    seed = min((a for _, a in greedy_candidates(options, nodes)), key=makespan)
    horizon = makespan(seed)
    delta = horizon / slots
    opts = {j: [o for o in jo.options if o.runtime_s <= horizon * (1 + 1e-9)] for j, jo in options.items()}
    for a in seed:  # the seed's options must be in the model (a baseline may use non-Pareto ones)
        o = _match(options[a.job].options + options[a.job].by_size, a)
        if okey(o) not in {okey(x) for x in opts[a.job]}:
            opts[a.job].append(o)
    dur = {okey(o): max(1, math.ceil(o.runtime_s / delta - 1e-9)) for v in opts.values() for o in v}
    node_idx = {n.name: i for i, n in enumerate(nodes)}
    _, seed_ms = _slot_seed(seed, lambda a: okey(_match(opts[a.job], a)), node_idx, [n.gpus for n in nodes], dur)
    T = max(slots, seed_ms)
    last = {k: T - d for k, d in dur.items()}
    lb = math.ceil(lower_bound(options, nodes) / delta - 1e-6)
    model = _build(list(opts), opts, [(n.gpus, n) for n in nodes], T, dur, dur, last, lb, 50_000_000)
    h = new_highs()
    h.passModel(model.lp)
    path = Path(path)
    h.writeModel(str(path))
    return path
