"""Saturn's planner: jobs + cluster + profile table -> a validated plan (pure Python + HiGHS).

    from saturn.planner import plan
    p = plan({"a": 1000, "b": 500}, {"node0": 8}, profiles_df, time_limit_s=10)
    p.to_dict()  # {"makespan_s", "lower_bound_s", "solver", "baselines", "assignments"}
"""

from saturn.planner import baselines
from saturn.planner.plan import Assignment, InvalidPlanError, Plan, SolverInfo, validate_plan
from saturn.planner.schedule import Choice as Placement  # executor re-timing
from saturn.planner.schedule import NodeSpec, Option, list_schedule
from saturn.planner.solve import plan

__all__ = ["plan", "Plan", "Assignment", "SolverInfo", "validate_plan", "InvalidPlanError", "baselines",
           "Placement", "NodeSpec", "Option", "list_schedule"]
