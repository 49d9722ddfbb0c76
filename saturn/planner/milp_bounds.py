"""The relaxed time-indexed model (a valid makespan lower bound) and model export.

Both reuse `milp_model.build_model`; they differ from the planner's rounded model only in how durations map
to slots (down here, up there) and in what the solution is used for.
"""

from __future__ import annotations

import math
import time
from typing import Mapping, Optional, Sequence

from saturn.planner.highs_util import highs_for, new_highs
from saturn.planner.inputs import NodeSpec
from saturn.planner.milp_model import MAX_NONZEROS_PER_S, build_model, okey
from saturn.planner.options import JobOptions
from saturn.planner.plan import Assignment
from saturn.planner.slot_replay import match_option, reserved_slots, slot_seed


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
    target_s: Optional[float] = None,
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

    Only the dual bound is wanted, so the search stops as soon as the bound reaches `target_s`
    (e.g. enough to certify the requested gap); an interrupted search's dual bound is valid too.
    (Telling HiGHS the upper bound through `objective_bound` made these searches 2-5x slower on
    the README example, measured, so it is not done.)
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
    reserved = reserved_slots(fixed_slots, len(groups), T) if fixed_slots else None
    max_nonzeros = min(max_nonzeros, int(MAX_NONZEROS_PER_S * max(0.0, time_limit_s - (time.perf_counter() - t0))))
    model = build_model(jobs, opts, groups, T, dur, endc, last, lb_slots, max_nonzeros, reserved)
    if model is None:
        return None
    stop = None
    if target_s is not None:
        goal = target_s / delta

        def stop(out) -> bool:
            return bool(out.mip_dual_bound >= goal)

    h = highs_for(model, time_limit_s - (time.perf_counter() - t0), 0.0, threads, stop)
    h.run()
    info = h.getInfo()
    status = h.getModelStatus()
    import highspy

    if status == highspy.HighsModelStatus.kInfeasible:
        return upper_bound_s * (1 - 1e-6)  # no plan shorter than the upper bound exists
    bound = info.mip_dual_bound
    if not math.isfinite(bound):
        return None
    return min(upper_bound_s, bound * delta) * (1 - 1e-6)


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
        o = match_option(options[a.job].options + options[a.job].by_size, a)
        if okey(o) not in {okey(x) for x in opts[a.job]}:
            opts[a.job].append(o)
    dur = {okey(o): max(1, math.ceil(o.runtime_s / delta - 1e-9)) for v in opts.values() for o in v}
    node_idx = {n.name: i for i, n in enumerate(nodes)}
    _, seed_ms = slot_seed(seed, lambda a: okey(match_option(opts[a.job], a)), node_idx, [n.gpus for n in nodes], dur)
    T = max(slots, seed_ms)
    last = {k: T - d for k, d in dur.items()}
    lb = math.ceil(lower_bound(options, nodes) / delta - 1e-6)
    model = build_model(list(opts), opts, [(n.gpus, n) for n in nodes], T, dur, dur, last, lb, 50_000_000)
    assert model is not None  # (no size limit short of 50M nonzeros)
    h = new_highs()
    h.passModel(model.lp)
    path = Path(path)
    h.writeModel(str(path))
    return path
