"""SHARP and fused groups in the executor: plan them, launch one attempt per group, report per member.

Fused groups (`fused:a+b`, `saturn.fused`: same-shape jobs as one vmapped model on one device)
take the same path as SHARP groups below, with three differences: a member steps once per group
step (its derived row's step time is the group's, not N times it), only jobs that allow any
technique join one, and a group whose members cannot fuse (`saturn.fused.grouping`) is not offered
(a journaled warning names the field). Each fused member is registered with its own handle
(`saturn.fused.attempt.MemberAttempt`), so it finishes, or is stopped (cancel, prune), alone.

Why a module of its own: the executor's state, policy and backends are per job, and a SHARP
group (`saturn.sharp`: several spilled models trained by one pool of workers) is several jobs
in one attempt. Everything group-specific is here, behind three hooks of the loop (`solve`,
`launch`) and the job runner (`saturn.sharp.runner.run_group_attempt` for a group spec):

* Planning. The planner sees a profiled group as a pseudo-job `sharp:a+b+c`
  (`saturn.planner.sharp_option`). A group is offered only when it can run here: the backend
  runs groups (`runs_groups`: the process backend, on CPU slots or GPUs), every member is in
  the run, pending (a running job is not pulled into a group) and may use spilling (SHARP
  trains each member with the spilling engine). A chosen group comes back *expanded*: one
  assignment per member on the group's GPUs and window, technique `sharp`, knob `group`, so
  the run state, `saturn status` and the plan files stay per job. A running group is never
  moved by a re-plan: its members are planned as one fixed assignment until they end.
* Estimates. A group row is scaled by its members' observed/profiled speed (as the estimator
  scales every option of a job), so it stays comparable with their solo options. So that the
  policy can time a member (`covers`, `retime`, remaining time), each member gets a *derived*
  `sharp` row: the group's measured time per member step times the number of members (a member
  advances at 1/N of the group's step rate while all N train),
  journaled as a `profiles` event (labelled `source: derived from <group>`). It is never
  offered to the planner as a solo option.
* Launching. When the plan's first member of a group is ready, every pending member of the
  group is launched together: one `launch` event per member, one runner process
  (`python -m saturn.runtime.job_runner` with a group spec, so it dies with the executor and
  `resume` recognises it), registered with the process backend once per member. That process
  writes each member's metrics lines, checkpoints and result file in the member's own job
  directory, exactly where a solo attempt writes them, so progress, retries (a failed group
  attempt fails every member; the plan relaunches them from their checkpoints), stops
  (stopping one member checkpoints the group) and `--resume` work unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import weakref
from typing import Any, Optional

import pandas as pd

from saturn.executor.state import PENDING, RUNNING
from saturn.planner import fused_option, sharp_option
from saturn.planner.plan import Assignment

TECHNIQUE = sharp_option.TECHNIQUE
_WARNED: "weakref.WeakKeyDictionary[Any, set[str]]" = weakref.WeakKeyDictionary()  # refused groups
GROUP_TECHNIQUES = (TECHNIQUE, fused_option.TECHNIQUE)  # fused groups (saturn.fused) run the same way


def runs_groups(backend: Any) -> bool:
    """Whether this backend can run a group attempt (one process for several jobs)."""
    from saturn.executor.backends.process import ProcessBackend

    return isinstance(backend, ProcessBackend)


def group_of(knobs: Any) -> Optional[str]:
    g = (knobs or {}).get("group") if isinstance(knobs, dict) else None
    return str(g) if g and (sharp_option.is_group(str(g)) or fused_option.is_group(str(g))) else None


def members_of(group: str) -> list[str]:
    return fused_option.members_of(group) if fused_option.is_group(group) else sharp_option.members_of(group)


def technique_of(group: str) -> str:
    return fused_option.TECHNIQUE if fused_option.is_group(group) else TECHNIQUE


def _may_join(js: Any, group: str) -> bool:
    """SHARP trains members with the spilling engine; a fused group is its own single-device
    technique, so only jobs that allow any technique join one."""
    return _may_spill(js) if not fused_option.is_group(group) else not js.info.techniques


def _may_spill(js: Any) -> bool:
    t = js.info.techniques
    return not t or "spilling" in t or TECHNIQUE in t


# ------------------------------------------------------------------------------------ planning
def _fused_refusal(ex: Any, group: str, states: list[Any]) -> str:
    """Why a profiled fused group cannot run (`saturn.fused.grouping`), journaled once as a
    warning on its first member; '' when it can."""
    from saturn.fused.grouping import refusal
    from saturn.spec.schema import Job

    if any(js.info.spec is None for js in states):  # no full spec (simulated jobs): the runner checks
        return ""
    why = refusal([Job.model_validate(js.info.spec) for js in states])
    warned = _WARNED.setdefault(ex, set())
    if why and group not in warned:
        warned.add(group)
        ex.emit("warning", job=states[0].name, text=f"fused group {group} is not offered: {why}")
    return why


def _ensure_member_rows(ex: Any, group: str) -> None:
    """Journal the derived per-member rows of `group` once (see the module docstring)."""
    rows = []
    members, tech = members_of(group), technique_of(group)
    per_member = 1 if tech != TECHNIQUE else len(members)  # a fused member steps with every group step
    for o in ex.est.rows.get(group, []):
        knobs = json.dumps({**json.loads(o.knobs), "group": group}, sort_keys=True)
        for m in members:
            if any(r.technique == tech and r.knobs == knobs and r.gpus == o.gpus
                   for r in ex.est.rows.get(m, [])):
                continue
            rows.append({"job": m, "technique": tech, "knobs": knobs, "gpus": o.gpus,
                         "step_time_s": o.step_time_s * per_member, "startup_s": o.startup_s,
                         "feasible": True, "gpu_type": o.gpu_type,
                         "source": f"derived from {group}"})
    if rows:
        ex.emit("profiles", rows=rows)
        ex.est.add_profiles(pd.DataFrame(rows))


def _running_groups(ex: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for js in ex.state.jobs.values():
        seg = js.current
        group = group_of(seg.knobs) if seg is not None and js.status == RUNNING else None
        if group:
            out.setdefault(group, []).append(js)
    return out


def _merge_fixed(fixed: list[Any]) -> list[Any]:
    """Members of one group hold the same GPUs: one fixed assignment per group (and per group
    checkpoint), as the planner requires distinct holders per GPU."""
    from saturn.executor.planner_inputs import CHECKPOINT_SUFFIX, is_checkpoint

    out: list[Assignment] = []
    merged: dict[str, Assignment] = {}
    for f in fixed:
        a = f if isinstance(f, Assignment) else Assignment.from_dict(f)
        g = group_of(a.knobs)
        if g is None:
            out.append(a)
            continue
        name = g + (CHECKPOINT_SUFFIX if is_checkpoint(a) else "")
        if name in merged:
            merged[name].end_s = max(merged[name].end_s, a.end_s)  # the group ends with its last
        else:
            merged[name] = dataclasses.replace(a, job=name, knobs=dict(a.knobs))
            out.append(merged[name])
    # a member that left (finished, cancelled) saves inside the group's process, on the group's
    # GPUs: while the group still runs, its checkpoint hold is part of the group's hold
    for name, hold in list(merged.items()):
        group = group_of({"group": name}) if not name.endswith(CHECKPOINT_SUFFIX) else None
        ck = merged.get(f"{group}{CHECKPOINT_SUFFIX}") if group else None
        if ck is not None:
            hold.end_s = max(hold.end_s, ck.end_s)
            out.remove(ck)
    return out


def solve(ex: Any, solve_fn: Any, jobs: list[Any], table: pd.DataFrame, **kw: Any) -> Any:
    """`solve_fn(jobs, ex.nodes, table, **kw)` with the SHARP groups that can run here offered
    as options; the result has every group expanded into its members (module docstring)."""
    groups = [g for g in ex.est.rows if group_of({"group": g})] if runs_groups(ex.backend) else []
    if not groups:
        return solve_fn(jobs, ex.nodes, table, _groups=False, **kw)
    running = _running_groups(ex)
    held = {js.name for lst in running.values() for js in lst}
    fixed = kw.pop("fixed", None)
    if fixed is None and held:  # the free re-plan: a running group stays where it runs
        from saturn.executor.planner_inputs import held_gpus

        fixed = [a for a in held_gpus(ex.state, ex.est, ex.now) if a.job in held]
    jobs = [j for j in jobs if j.name not in held]
    names = {j.name for j in jobs}
    table = table[~table["job"].isin(held) & ~table["technique"].isin(GROUP_TECHNIQUES)]
    rows = []
    for g in groups:
        members = members_of(g)
        states = [ex.state.jobs.get(m) for m in members]
        if not all(js is not None and js.status == PENDING and js.name in names and _may_join(js, g)
                   for js in states):
            continue
        if fused_option.is_group(g) and _fused_refusal(ex, g, states):
            continue
        _ensure_member_rows(ex, g)
        # observed / profiled speed of the members scales the group row as it scales their own
        # options (the estimator's rule), so a group and its members' solo options stay comparable
        factor = math.exp(sum(math.log(ex.est.factor(js)) for js in states) / len(states))
        rows += [{"job": g, "technique": o.technique, "knobs": o.knobs, "gpus": o.gpus,
                  "step_time_s": o.step_time_s * factor, "startup_s": o.startup_s, "feasible": True,
                  "gpu_type": o.gpu_type} for o in ex.est.rows[g]]
    if rows:
        table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
        kw["warm_start"] = None  # a warm start in per-member form is no start for a group plan
    plan = solve_fn(jobs, ex.nodes, table.reset_index(drop=True), fixed=_merge_fixed(fixed or []) or None,
                    _groups=bool(rows), **kw)
    return dataclasses.replace(plan, assignments=expand(plan.assignments))


def expand(assignments: list[Any]) -> list[Assignment]:
    """Group assignments as one per member (group checkpoint holds are kept as they are)."""
    from saturn.executor.planner_inputs import is_checkpoint

    out = []
    for a in assignments:
        if group_of({"group": a.job}) and not is_checkpoint(a):
            knobs = {**a.knobs, "group": a.job}
            out += [dataclasses.replace(a, job=m, knobs=dict(knobs)) for m in members_of(a.job)]
        else:
            out.append(a)
    return out


# ----------------------------------------------------------------------------------- launching
def launch(ex: Any, assignment: dict) -> bool:
    """Launch the group of `assignment` if it is a member's (True), else leave it (False)."""
    group = group_of(assignment.get("knobs"))
    if group is None:
        return False
    members = [ex.state.jobs[m] for m in members_of(group)
               if m in ex.state.jobs and ex.state.jobs[m].status == PENDING
               and ex.state.jobs[m].remaining_steps > 0]
    if not members:
        return True
    for js in members:
        ex.emit("launch", job=js.name, technique=technique_of(group), knobs=dict(assignment.get("knobs") or {}),
                node=assignment["node"], gpus=list(assignment["gpus"]), start_step=js.committed_step,
                group=group)
    pid = ex.backend.launch_group(group, members, assignment)
    for js in members:
        js.current.pid = pid
        ex.emit("spawned", job=js.name, pid=pid)
    return True
