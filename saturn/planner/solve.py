"""`plan()`: from jobs + cluster + profiles to a validated, near-optimal plan.

Pipeline (every stage yields *valid* plans with concrete GPU ids; the best one so far is kept, so a
time limit can stop us anywhere and still return something sound):

1. options: profile table -> Pareto-pruned options per job (errors name infeasible jobs);
2. lower bound (allotment bound, see lower_bound.py);
3. baselines + greedy rules (+ the warm-start plan, replayed on the current jobs);
4. (makespan) search.py: time-indexed MILP steps warm-started from the best plan, compacted to
   real durations, alternating with relaxed slot-model bound steps, until the gap is closed or
   no longer worth the time left (the early-stop rule). On one node, or when the whole model is
   small, one MILP; otherwise the best plan's job-to-node split is kept and each node gets its
   own MILP (critical nodes first, each with a share of the time). Models too big to build and
   search in the time left are skipped: the plan is then the best heuristic one, and says so;
5. a short randomized re-ordering search with what time is left (if still worth it);
6. `validate_plan` on the result.

Every phase before the search is near-linear in the number of options (10,000 jobs: about 3 s of
CPU on a 2-core machine): the bound and allotment targets are vectorized, list schedules stop
backfilling above schedule.BACKFILL_MAX_JOBS jobs, baselines keep a heap per group shape.

`objective` (planner/objectives.py): "makespan" (default), or "mean_completion" /
"weighted_completion", which rank every candidate by the (weighted) mean completion time, add
Smith-rule candidates and the shortest-job-first baseline, and give the MILP the sum w_j C_j cost.
For them SolverInfo.status/gap refer to that objective and its own lower bound
(Plan.objective_lower_bound); Plan.lower_bound_s stays the makespan bound.

`time_limit_s` is the wall-clock budget of the whole call (inputs, bounds, heuristics, MILP,
validation): every stage gets a deadline, HiGHS is interrupted at it (see highs_util.highs_for), and a
margin is kept for building and validating the result.

`fixed` (keyword-only): assignments of jobs already running when the executor re-plans (start_s=0,
end_s = remaining runtime from now). They are kept exactly -- same technique, knobs, node, GPU ids
and window -- and appear in the returned plan; every other job is planned around them, and the
makespan and lower bound include them. A fixed job may also be listed in `jobs` (it is not
planned again) and needs no profile rows.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Optional, Sequence, Union

import pandas as pd

from saturn.errors import SaturnError
from saturn.planner.baselines import baseline_plans
from saturn.planner.cores import core_lower_bound, cores_ok
from saturn.planner.greedy import allot, allotment_targets, greedy_candidates, makespan, perturbed_search
from saturn.planner.inputs import NodeSpec, normalize_cluster, normalize_jobs
from saturn.planner.lower_bound import lower_bound
from saturn.planner.milp import MilpResult, solve_time_indexed
from saturn.planner.objectives import Objective, check_objective, completion_candidates, sjf_baseline
from saturn.planner.options import JobOptions, Option, build_options
from saturn.planner.plan import Assignment, Plan, SolverInfo, as_plan, validate_plan
from saturn.planner.schedule import Choice, list_schedule
from saturn.planner.search import improve_makespan, worth_continuing

FULL_MODEL_MAX_STARTS = 60_000  # (job, option, node, start) columns above which we decompose by node


def plan(
    jobs: Any,
    cluster: Any,
    profiles: pd.DataFrame,
    *,
    time_limit_s: float = 30,
    mip_gap: float = 0.01,
    warm_start: Union[Plan, dict, None] = None,
    threads: int = 1,
    slots: Optional[int] = None,
    fixed: Optional[Sequence[Union[Assignment, dict]]] = None,
    objective: str = "makespan",
    early_stop: bool = True,
    _groups: bool = True,
) -> Plan:
    """Choose a technique, node, GPU ids and start time for every job, minimizing `objective`
    (makespan, mean_completion or weighted_completion; see planner/objectives.py).

    Returns within about `time_limit_s` seconds of wall time (the whole call), sooner when the
    remaining gap is worth less than the time left (`early_stop`, see planner/search.py)."""
    from saturn.planner import fused_option, sharp_option  # group options (profiled multi-job rows)

    if _groups and (sharp_option.has_groups(profiles) or fused_option.has_groups(profiles)):
        return sharp_option.plan_with_groups(plan, jobs, cluster, profiles, time_limit_s=time_limit_s,
                                             mip_gap=mip_gap, warm_start=warm_start, threads=threads,
                                             slots=slots, fixed=fixed, objective=objective, early_stop=early_stop)
    t0 = time.perf_counter()
    objective = check_objective(objective)
    nodes = normalize_cluster(cluster)
    pinned = normalize_fixed(fixed, nodes)
    pinned_names = {a.job for a in pinned}
    job_specs = normalize_jobs(jobs) if not (pinned and _empty(jobs)) else []
    to_plan = [j for j in job_specs if j.name not in pinned_names]
    # Margin for building + validating the result (grows with the job count) and for HiGHS
    # returning after an interrupt.
    margin = min(0.25 * time_limit_s, 0.3 + 0.006 * len(to_plan) + 0.03 * time_limit_s)
    deadline = t0 + time_limit_s - margin
    fixed_end = makespan(pinned)
    obj = Objective(objective, {j.name: j.weight for j in job_specs}, pinned)
    ms = obj.value  # the objective, including the running jobs (the makespan by default)

    if not to_plan:  # everything is already running
        result = Plan(assignments=sorted(pinned, key=lambda a: (a.start_s, a.job)), lower_bound_s=fixed_end,
                      solver=SolverInfo(status="optimal", time_s=time.perf_counter() - t0, source="fixed"))
        validate_plan(result, job_specs, nodes, profiles, fixed=pinned)
        return result
    options = build_options(to_plan, nodes, profiles)
    lb = max(lower_bound(options, nodes, pinned), core_lower_bound(options, nodes, pinned))
    mk_lb = lb  # the makespan bound, reported as Plan.lower_bound_s whatever the objective
    if not obj.is_makespan:
        lb = obj.lower_bound(options, nodes)

    base = baseline_plans(options, nodes, pinned)
    if not obj.is_makespan:
        base["sjf"] = sjf_baseline(options, nodes, obj, pinned)
    cands: list[tuple[str, list[Assignment]]] = [(f"baseline:{k}", v) for k, v in base.items()]
    if warm_start is not None:
        ws = warm_start_assignments(options, nodes, warm_start, pinned)
        if ws is not None:
            cands.append(("warm_start", ws))
    cands += greedy_candidates(options, nodes, deadline=t0 + 0.3 * time_limit_s, fixed=pinned)
    if not obj.is_makespan:
        cands += completion_candidates(options, nodes, obj, pinned)
    cands = [c for c in cands if cores_ok(c[1], nodes, pinned)] or cands  # CPU-core capacity (cores.py)
    source, best = min(cands, key=lambda c: (ms(c[1]), c[0]))

    milp_runs: list[MilpResult] = []
    stop: Optional[str] = None
    if obj.is_makespan and _gap(ms(best), lb) > mip_gap and time.perf_counter() >= deadline - 0.2:
        used = time.perf_counter() - t0
        stop = (f"no time left for the MILP after the heuristics ({len(to_plan)} jobs, {used:.1f} s of the "
                f"{time_limit_s:g} s limit): the plan is the best heuristic one")
    elif obj.is_makespan and _gap(ms(best), lb) > mip_gap:
        full = _full_model_ok(options, nodes)
        res = improve_makespan(
            options, nodes, best, lb, deadline=deadline, mip_gap=mip_gap, threads=threads, slots=slots,
            fixed=pinned, early_stop=early_stop,
            primal_step=None if full else _per_node_step(options, nodes, mip_gap, threads, pinned, obj))
        milp_runs, lb, stop = res.runs, max(lb, res.lower_bound_s), res.stop
        if res.improved and ms(res.best) < ms(best) - 1e-9:
            source, best = "milp", res.best
    elif not obj.is_makespan and time.perf_counter() < deadline - 0.2:
        improved = _milp_phase(options, nodes, best, lb, deadline, mip_gap, threads, slots, milp_runs, pinned, obj)
        if improved is not None and ms(improved) < ms(best) - 1e-9:
            source, best = "milp", improved
    left = deadline - time.perf_counter()
    if obj.is_makespan and _gap(ms(best), lb) > mip_gap and left > 0.1 and (
            not early_stop or worth_continuing(ms(best), lb, left)):
        better = perturbed_search(options, nodes, best, deadline=min(deadline - 0.05, time.perf_counter() + 2.0),
                                  fixed=pinned)
        if better is not None and ms(better) < ms(best) - 1e-9:
            source, best = source + "+reorder", better

    if ms(best) < lb <= ms(best) * (1 + 1e-9):  # floating-point noise only
        lb = ms(best)
    completion: dict[str, Any] = {} if obj.is_makespan else dict(
        objective=objective, objective_value=ms(best), objective_lower_bound=lb,
        objective_baselines={k: ms(v) for k, v in base.items() if cores_ok(v, nodes, pinned)})
    result = Plan(
        assignments=sorted(list(pinned) + list(best), key=lambda a: (a.start_s, a.job)),
        lower_bound_s=lb if obj.is_makespan else min(mk_lb, max(makespan(best), fixed_end)),
        solver=_solver_info(ms(best), lb, mip_gap, milp_runs, time.perf_counter() - t0, source, stop),
        baselines={k: max(makespan(v), fixed_end) for k, v in base.items() if cores_ok(v, nodes, pinned)},
        ruled_out={j: jo.ruled_out for j, jo in options.items() if jo.ruled_out},
        **completion,
    )
    validate_plan(result, job_specs, nodes, profiles, fixed=pinned)
    result.solver.time_s = time.perf_counter() - t0
    return result


def _empty(jobs: Any) -> bool:
    try:
        return len(jobs) == 0
    except TypeError:
        return False


def normalize_fixed(fixed: Optional[Sequence[Union[Assignment, dict]]], nodes: Sequence[NodeSpec]) -> list[Assignment]:
    """Check the pinned (running) assignments: known node, valid distinct GPU ids, start 0, end > 0,
    no GPU held by two of them, unique job names."""
    if not fixed:
        return []
    node_of = {n.name: n for n in nodes}
    out: list[Assignment] = []
    held: dict[tuple[str, int], str] = {}
    problems: list[str] = []
    for f in fixed:
        a = f if isinstance(f, Assignment) else Assignment.from_dict(f)
        n = node_of.get(a.node)
        if n is None:
            problems.append(f"{a.job}: unknown node {a.node!r}")
        elif not a.gpus or len(set(a.gpus)) != len(a.gpus) or any(not 0 <= g < n.gpus for g in a.gpus):
            problems.append(f"{a.job}: bad GPU ids {a.gpus} on node {a.node} ({n.gpus} GPUs)")
        if abs(a.start_s) > 1e-9 or not (a.end_s > 0 and a.end_s < float("inf")):
            problems.append(f"{a.job}: a running job needs start_s=0 and a finite end_s > 0 (remaining time), "
                            f"got [{a.start_s}, {a.end_s}]")
        for g in a.gpus:
            other = held.setdefault((a.node, g), a.job)
            if other != a.job:
                problems.append(f"{a.job}: GPU {g} of {a.node} is already held by fixed job {other}")
        if any(b.job == a.job for b in out):
            problems.append(f"{a.job}: fixed twice")
        out.append(Assignment(a.job, a.technique, dict(a.knobs), a.node, [int(g) for g in a.gpus], 0.0, float(a.end_s),
                              a.cpu_cores, getattr(a, "host_mem_gb", 0.0)))
    if problems:
        raise SaturnError("bad fixed (running) assignments:\n  " + "\n  ".join(problems))
    return out


def _gap(ms: float, lb: float) -> float:
    return (ms - lb) / ms if ms > 0 else 0.0


def _solver_info(ms, lb, mip_gap, runs: Sequence[MilpResult], elapsed, source, stop=None) -> SolverInfo:
    gap = max(0.0, _gap(ms, lb))
    solved = [r for r in runs if r.assignments is not None]
    if gap <= 1e-9:
        status = "optimal"
    elif gap <= mip_gap:
        status = "gap_limit"
    elif solved and all(r.status == "optimal" for r in runs):
        status = "slot_optimal"
    elif solved:
        status = "time_limit"
    else:  # no MILP ran, or none could be built / found a plan in time: say so (#28)
        status = "heuristic"
    milp_status = ",".join(sorted({r.status for r in runs})) if runs else None
    gaps = [r.gap for r in runs if r.gap is not None]
    return SolverInfo(
        status=status,
        gap=gap,
        time_s=elapsed,
        source=source,
        milp_status=milp_status,
        milp_gap=max(gaps) if gaps else None,
        stop=stop,
    )


SLOT_LADDER = (20, 30, 45, 70, 100, 150)  # coarse first (fast, proves optimal), then finer


def _full_model_ok(options, nodes) -> bool:
    """One MILP over all nodes when it stays small; else one per node of the best plan's split."""
    n_opt = sum(len(jo.options) for jo in options.values())
    return len(nodes) == 1 or n_opt * len(nodes) * SLOT_LADDER[1] <= FULL_MODEL_MAX_STARTS


def _per_node_step(options, nodes, mip_gap, threads, fixed, obj):
    def step(best, T, step_deadline, runs, lb):
        return _per_node(options, nodes, best, step_deadline, mip_gap, threads, T, runs, fixed, obj)

    return step


def _milp_phase(options, nodes, best, lb, deadline, mip_gap, threads, slots, runs, fixed=(),
                obj: Optional[Objective] = None) -> Optional[list[Assignment]]:
    """Full model when small enough, otherwise one MILP per node of the best plan's split."""
    obj = obj or Objective()
    if _full_model_ok(options, nodes):
        return _refine(options, nodes, best, lb, deadline, mip_gap, threads, slots, runs, fixed, obj)
    return _per_node(options, nodes, best, deadline, mip_gap, threads, slots, runs, fixed, obj)


def _refine(options, nodes, best, lb, deadline, mip_gap, threads, slots, runs, fixed=(),
            obj: Optional[Objective] = None) -> list[Assignment]:
    """Solve the rounded model with finer and finer slots while each level solves to optimality.

    Each level is warm-started from the best plan so far and its horizon is that plan's
    makespan, so the slot length shrinks both with the slot count and with every improvement.
    """
    obj = obj or Objective()
    ladder = (slots,) if slots else SLOT_LADDER
    names = {n.name for n in nodes}
    fixed = [a for a in fixed if a.node in names]
    fixed_end = makespan(fixed)
    # the makespan bound (in the model's own units); completion objectives stop on optimality only
    mk_lb = lb if obj.is_makespan else 0.0
    for T in ladder:
        left = deadline - time.perf_counter()
        if left < 0.1 or (obj.is_makespan and _gap(max(makespan(best), fixed_end), lb) <= mip_gap):
            break
        r = solve_time_indexed(options, nodes, best, mk_lb, time_limit_s=left, mip_gap=mip_gap, slots=T,
                               threads=threads, fixed=fixed, weights=obj.milp_weights(options), score=obj.sub_value)
        runs.append(r)
        if r.assignments is not None and obj.sub_value(r.assignments) < obj.sub_value(best) - 1e-9:
            best = r.assignments
        if r.status != "optimal":
            break
    return best


def _per_node(options, nodes, best, deadline, mip_gap, threads, slots, runs, fixed=(),
              obj: Optional[Objective] = None) -> Optional[list[Assignment]]:
    """Keep the best plan's job->node split; improve nodes one by one, longest first."""
    by_node: dict[str, list[Assignment]] = {}
    for a in best:
        by_node.setdefault(a.node, []).append(a)
    order = sorted(by_node, key=lambda n: -makespan(by_node[n]))
    node_of = {n.name: n for n in nodes}
    for i, name in enumerate(order):
        left = deadline - time.perf_counter()
        if left < 0.2:
            break
        sub = {a.job: options[a.job] for a in by_node[name]}
        sub_nodes = [node_of[name]]
        sub_fixed = [a for a in fixed if a.node == name]
        share = left / (len(order) - i) * (1.5 if i == 0 else 1.0)
        by_node[name] = _refine(sub, sub_nodes, by_node[name], lower_bound(sub, sub_nodes, sub_fixed),
                                time.perf_counter() + min(left, share), mip_gap, threads, slots, runs, sub_fixed, obj)
    return [a for v in by_node.values() for a in v]


def warm_start_assignments(options: Mapping[str, JobOptions], nodes: Sequence[NodeSpec], warm,
                           fixed: Sequence[Assignment] = ()) -> Optional[list[Assignment]]:
    """Replay a previous plan on the current jobs: kept jobs keep option and node (if still
    feasible) and their start order; jobs no longer present are ignored; new jobs are added
    longest-first with the allotment rule's option."""
    prev = as_plan(warm).by_job()
    node_of = {n.name: n for n in nodes}
    chosen = allot(options, allotment_targets(options, nodes, k=1)[0])
    kept, new = [], []
    for name, jo in options.items():
        a = prev.get(name)
        o = _find_option(jo, a, node_of.get(a.node)) if a is not None else None
        if a is not None and o is not None:
            kept.append((a.start_s, name, Choice(o, a.node)))
        else:
            new.append((-chosen[name].runtime_s, name, Choice(chosen[name])))
    if not kept:
        return None
    seq = [c for *_, c in sorted(kept, key=lambda x: x[:2])] + [c for *_, c in sorted(new, key=lambda x: x[:2])]
    return list_schedule(nodes, seq, fixed)


def _find_option(jo: JobOptions, a: Assignment, node: Optional[NodeSpec]) -> Optional[Option]:
    if node is None:
        return None
    for o in jo.options + jo.by_size:
        if o.technique == a.technique and o.gpus == len(a.gpus) and o.knobs_dict == a.knobs and o.fits(node):
            return o
    return None
