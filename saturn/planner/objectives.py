"""What the planner minimizes: the makespan, or the (weighted) mean completion time.

HPO and online users want early, steady results: a search's short trials should not wait behind
its long ones, and a successive-halving rung should not wait for the slowest job. So besides the
makespan (when does the whole batch end?) the planner can minimize

* ``mean_completion``: the mean end time of the jobs, sum_j C_j / n;
* ``weighted_completion``: the weighted mean end time, sum_j w_j C_j / sum_j w_j, with each job's
  ``weight`` (a priority: a job of weight 2 counts like two jobs of weight 1).

Both are reported as weighted means in seconds (readable next to the makespan). Jobs already
running (`fixed`) are part of the mean with their known ends: a constant the plan cannot change.

Lower bound (`completion_lower_bound`), valid for every plan on G GPUs in total:

* each job ends no earlier than its fastest option's runtime: sum w_j C_j >= sum w_j r_j;
* by the time the k-th job (in completion order) ends, the GPU-area of the first k jobs is done,
  and G GPUs do at most G*t GPU-seconds by time t, so C_(k) >= (a_(1) + ... + a_(k)) / G with a_j
  the job's least area. The least sum w_j C_j over all orders under these constraints is Smith's
  rule on a_j / w_j (one machine of speed G), which is therefore a bound as well.

The bound is the larger of the two (labelled "completion bound" in the report).

Baseline (`sjf`): shortest job first as people do it by hand -- every job on its fastest 1-GPU
option (or its smallest option), in order of runtime / weight (Smith's rule; with equal weights it
is shortest-job-first), each placed as early as it fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from saturn.errors import SaturnError
from saturn.planner.inputs import NodeSpec
from saturn.planner.options import JobOptions, Option
from saturn.planner.plan import Assignment
from saturn.planner.schedule import Choice, list_schedule

OBJECTIVES = ("makespan", "mean_completion", "weighted_completion")


def check_objective(name: Optional[str]) -> str:
    """The objective's canonical name; a clear error naming the field and the allowed values."""
    if name is None:
        return "makespan"
    key = str(name).strip().lower().replace("-", "_")
    if key not in OBJECTIVES:
        raise SaturnError(f"objective: unknown value {name!r}; use one of {', '.join(OBJECTIVES)}")
    return key


@dataclass
class Objective:
    """The objective of one `plan()` call: scores candidate plans in one unit (seconds)."""

    name: str = "makespan"
    weights: dict[str, float] = field(default_factory=dict)  # job -> weight (completion objectives)
    fixed: Sequence[Assignment] = ()

    @property
    def is_makespan(self) -> bool:
        return self.name == "makespan"

    def weight(self, job: str) -> float:
        return self.weights.get(job, 1.0) if self.name == "weighted_completion" else 1.0

    def milp_weights(self, jobs) -> Optional[dict[str, float]]:
        return None if self.is_makespan else {j: self.weight(j) for j in jobs}

    def _fixed_sum(self) -> tuple[float, float]:
        return (sum(self.weight(a.job) * a.end_s for a in self.fixed), sum(self.weight(a.job) for a in self.fixed))

    def value(self, assignments: Sequence[Assignment]) -> float:
        """Makespan, or the weighted mean completion time of `assignments` plus the fixed jobs."""
        if self.is_makespan:
            return max([a.end_s for a in assignments] + [a.end_s for a in self.fixed], default=0.0)
        fs, fw = self._fixed_sum()
        total_w = sum(self.weight(a.job) for a in assignments) + fw
        return (sum(self.weight(a.job) * a.end_s for a in assignments) + fs) / total_w if total_w else 0.0

    def sub_value(self, assignments: Sequence[Assignment]) -> float:
        """Score of a part of a plan (one node of a decomposed MILP): comparable within the part."""
        if self.is_makespan:
            return max((a.end_s for a in assignments), default=0.0)
        return sum(self.weight(a.job) * a.end_s for a in assignments)

    def lower_bound(self, options: Mapping[str, JobOptions], nodes: Sequence[NodeSpec]) -> float:
        """A valid bound on `value` for completion objectives (see the module docstring)."""
        fs, fw = self._fixed_sum()
        total_w = sum(self.weight(j) for j in options) + fw
        if not total_w:
            return 0.0
        return (completion_lower_bound(options, nodes, {j: self.weight(j) for j in options}) + fs) / total_w


def completion_lower_bound(options: Mapping[str, JobOptions], nodes: Sequence[NodeSpec],
                           weights: Mapping[str, float]) -> float:
    """Lower bound on sum_j w_j C_j of the jobs in `options` (not divided by the weights)."""
    total_gpus = sum(n.gpus for n in nodes)
    fastest = sum(weights[j] * jo.fastest().runtime_s for j, jo in options.items())
    areas = sorted(((jo.min_area().area, weights[j]) for j, jo in options.items()), key=lambda aw: aw[0] / aw[1])
    done, smith = 0.0, 0.0
    for a, w in areas:
        done += a
        smith += w * done / total_gpus
    return max(fastest, smith)


def _one_gpu_option(jo: JobOptions) -> Option:
    ones = [o for o in jo.by_size if o.gpus == 1]
    pool = ones or [o for o in jo.by_size if o.gpus == min(p.gpus for p in jo.by_size)]
    return min(pool, key=lambda o: o.runtime_s)


def sjf_baseline(options: Mapping[str, JobOptions], nodes: Sequence[NodeSpec], objective: Objective,
                 fixed: Sequence[Assignment] = ()) -> list[Assignment]:
    """Shortest (weighted) job first on one GPU each (see the module docstring)."""
    chosen = [_one_gpu_option(jo) for jo in options.values()]
    chosen.sort(key=lambda o: (o.runtime_s / objective.weight(o.job), o.job))
    return list_schedule(nodes, (Choice(o) for o in chosen), fixed)


def completion_candidates(options: Mapping[str, JobOptions], nodes: Sequence[NodeSpec], objective: Objective,
                          fixed: Sequence[Assignment] = ()) -> list[tuple[str, list[Assignment]]]:
    """Smith-rule list schedules: every option rule (least area, fastest, allotment targets) in
    order of runtime / weight and of area / weight. Valid by construction (list scheduling)."""
    from saturn.planner.greedy import allot, allotment_targets

    rules: dict[str, dict[str, Option]] = {
        "min_area": {j: jo.min_area() for j, jo in options.items()},
        "fastest": {j: jo.fastest() for j, jo in options.items()},
    }
    for c in allotment_targets(options, nodes, k=2):
        rules[f"allot({c:.4g}s)"] = allot(options, c)
    out = []
    for rule, chosen in rules.items():
        for order, key in (("wspt", lambda o: o.runtime_s), ("warea", lambda o: o.area)):
            seq = sorted(chosen.values(), key=lambda o: (key(o) / objective.weight(o.job), o.job))
            out.append((f"greedy:{rule}/{order}", list_schedule(nodes, (Choice(o) for o in seq), fixed)))
    return out
