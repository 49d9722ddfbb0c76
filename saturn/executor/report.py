"""What a run directory says: status (live or finished), plan vs actual, prediction error, Gantt,
and where the wall time went: per job and phase (launch, training steps, checkpoints + teardown),
planned vs actual, and the run's goodput (GPU-seconds in training steps / GPU-seconds of wall time).

Everything is derived from the journal alone, so `saturn status DIR` works while a run is going on
(SQLite WAL readers do not block the writer) and `saturn report DIR` after a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from saturn.executor.journal import JOURNAL_FILE, Journal, executor_liveness, mark_dead_jobs, replay
from saturn.executor.state import RunState
from saturn.fmt import duration


def load_run(run_dir: Union[str, Path]) -> tuple[RunState, Journal]:
    from saturn.executor.config import ExecutorError

    path = Path(run_dir) / JOURNAL_FILE
    if not path.exists():
        raise ExecutorError(f"{run_dir} is not a run directory (no {JOURNAL_FILE})")
    j = Journal(path)
    return replay(j), j


def summarize(run_dir: Union[str, Path]) -> dict[str, Any]:
    """Per-job and whole-run numbers: planned vs actual runtime, prediction error, utilization."""
    state, journal = load_run(run_dir)
    plans = journal.plans()
    first = plans[0]["plan"] if plans else {"assignments": []}
    planned = {a["job"]: a for a in first.get("assignments", [])}
    nodes = journal.get_meta("nodes") or []
    total_gpus = sum(int(n["gpus"]) for n in nodes) or 1
    last_t = max([t for t, _, _ in journal.events()] + [0.0])
    jobs: list[dict[str, Any]] = []
    busy = 0.0
    held: dict[tuple, tuple[float, float]] = {}  # group attempts: (group, pid, GPUs) -> (launch, end)
    end_all = 0.0
    for js in state.jobs.values():
        segs = js.segments
        start = min((s.launched_at for s in segs), default=None)
        end = max((s.ended_at if s.ended_at is not None else last_t for s in segs), default=None)
        for s in segs:
            seg_end = s.ended_at if s.ended_at is not None else last_t
            group = (s.knobs or {}).get("group")
            if group:  # a group attempt (one runner pid) holds its GPUs once, first launch to last end
                key = (group, s.pid, tuple(s.gpus))
                t0, t1 = held.get(key, (s.launched_at, seg_end))
                held[key] = (min(t0, s.launched_at), max(t1, seg_end))
            else:
                busy += (seg_end - s.launched_at) * len(s.gpus)
        durable = max((s.durable_at for s in segs if s.durable_at is not None), default=None)
        if end is not None:  # the run ends when its last result is durable (drains behind)
            end_all = max(end_all, end, durable or 0.0, last_t if js.status == "finishing" else 0.0)
        p = planned.get(js.name)
        pred = (p["end_s"] - p["start_s"]) if p else None
        actual = (sum(((s.ended_at if s.ended_at is not None else last_t) - s.launched_at) for s in segs)
                  if segs else None)
        err = (actual - pred) / pred if pred and actual is not None and js.status == "completed" else None
        cur = segs[-1] if segs else None
        jobs.append({"job": js.name, "status": js.status, "steps": js.committed_step,
                     "progress": max(js.progress_step, js.committed_step), "total_steps": js.info.total_steps,
                     "technique": cur.technique if cur else None, "gpus": len(cur.gpus) if cur else None,
                     "attempts": len(segs), "loss": js.loss, "start_s": start, "end_s": end,
                     "planned_runtime_s": pred, "actual_runtime_s": actual, "prediction_error": err,
                     "durable_s": durable, "phases": attempt_phases(segs),
                     "reason": js.reason[:300] if js.reason else "",  # the head names the cause
                     "cause": failure_cause(js.reason) if js.status == "failed" else "",
                     "log": js.log if js.log and Path(js.log).exists() else _existing_log(run_dir, js.name),
                     "group": next((s.knobs["group"] for s in reversed(segs) if s.knobs.get("group")), None)})
    groups: dict[str, list[str]] = {}  # SHARP / fused groups the members ran in (saturn.executor.sharp_dispatch)
    for j in jobs:
        if j["group"]:
            groups.setdefault(j["group"], []).append(j["job"])
    busy += sum((end - launched) * len(gpus) for (_, _, gpus), (launched, end) in held.items())
    makespan = end_all
    # one source of truth for liveness: `saturn status` and `saturn report` both show a job of a
    # dead executor as dead (journal.executor_liveness), never as running
    return mark_dead_jobs({"run_dir": str(run_dir), "jobs": jobs, "makespan_s": makespan,
            "planned_makespan_s": first.get("makespan_s"),
            # results durable: after the last planned drain (saves that drain behind)
            "planned_durable_s": first.get("durable_s", first.get("makespan_s")),
            "plan_versions": len(plans),
            "replans": state.replans, "switches": state.switches,
            # allocation: GPUs held by jobs (not how busy the devices were; see phases/goodput)
            "gpu_allocation": busy / (makespan * total_gpus) if makespan > 0 else None,
            "gpu_utilization": busy / (makespan * total_gpus) if makespan > 0 else None,  # old name
            "device_utilization": journal.get_meta("device_utilization"),
            # CPU slots are called slots; a simulated run ran nothing on a device
            "cpu_slots": bool(nodes) and all(str(n.get("gpu_type", "")).lower() == "cpu" for n in nodes),
            "simulated": bool((journal.get_meta("stages") or {}).get("simulated")),
            "done": state.done(), "total_gpus": total_gpus, "sharp_groups": groups,
            # what the executor warned about (skipped checkpoints, bogus steps): the run's own output
            "warnings": [{"job": d.get("job"), "text": d.get("text", "")} for _, kind, d in journal.events()
                         if kind == "warning"] + _damaged_metrics(run_dir, state),
            "data": _data_summary(run_dir),  # data-wait phase + input tuner decisions (saturn.data)
            **phase_summary(state, first, makespan, total_gpus, last_t)}, executor_liveness(run_dir, journal))


def failure_cause(reason: str) -> str:
    """The line of a failure's text that names its cause (an exception line such as
    `TypeError: ...`, else the first line), at most 400 characters."""
    lines = [x.strip() for x in (reason or "").splitlines() if x.strip()]
    if not lines:
        return ""
    first = lines[0]
    if "Error" not in first and "Exception" not in first:
        for x in lines[1:]:
            if ("Error:" in x or "Exception:" in x or x.startswith("Killed")) and not x.startswith("File "):
                first = f"{first} ... {x}"
                break
    return first[:400]


def _damaged_metrics(run_dir: Union[str, Path], state: RunState) -> list[dict[str, Any]]:
    """A warning per job whose metrics.jsonl has lines that cannot be read (they are skipped)."""
    from saturn.executor.metrics import METRICS_FILE, bad_lines

    out = []
    for name in state.jobs:
        p = Path(run_dir) / "jobs" / name / METRICS_FILE
        n = bad_lines(p)
        if n:
            out.append({"job": name, "text": f"{p}: {n} undecodable line(s) skipped (damaged file)"})
    return out


def _existing_log(run_dir: Union[str, Path], job: str) -> Optional[str]:
    """The job's newest log file that exists (error.txt, log.txt, runner.txt), or None."""
    d = Path(run_dir) / "jobs" / job
    for name in ("error.txt", "log.txt", "runner.txt"):
        if (d / name).exists():
            return str(d / name)
    return None


ATTEMPT_PHASES = ("launch_s", "steps_s", "checkpoint_block_s", "save_block_s")


def attempt_phases(segs: list) -> Optional[dict[str, Any]]:
    """A job's phases as its attempts measured them (summed over attempts): launch_s (launch ->
    training loop), steps_s (the loop, less the periodic saves' blocking), checkpoint_block_s
    (periodic saves' blocking: staging + waiting for the staging budget), save_block_s (the final
    save's blocking), drain_s (writing the final checkpoint behind, after the slot was free;
    None if nothing drained) and finishing_s (slot free -> result durable). None if no attempt
    reported them (simulations, killed attempts, older runs)."""
    rows = [s for s in segs if s.phases]
    if not rows:
        return None
    out: dict[str, Any] = {k: round(sum(float(s.phases.get(k) or 0.0) for s in rows), 4)
                           for k in ATTEMPT_PHASES}
    drains = [s for s in segs if s.durable_at is not None and s.ended_at is not None]
    out["drain_s"] = (round(sum(float(s.drain_s if s.drain_s is not None else s.durable_at - s.ended_at)
                                for s in drains), 4) if drains else None)
    out["finishing_s"] = round(sum(s.durable_at - s.ended_at for s in drains), 4) if drains else None
    return out


def _data_summary(run_dir: Union[str, Path]) -> dict[str, Any]:
    from saturn.data.report import data_summary

    return data_summary(run_dir)


PHASES = ("launch", "steps", "save_teardown")
PLANNED_AS = {"launch": ("launch",), "steps": ("steps",), "save_teardown": ("checkpoints", "final_save")}


def segment_phases(seg: Any, last_t: float) -> Optional[dict[str, float]]:
    """Actual seconds of one attempt by phase, from its progress reports: `launch` (launch to the
    first step's start), `steps` (training steps, incl. the blocking part of periodic saves) and
    `save_teardown` (after the last step: final save, teardown). None without two reports."""
    if seg.first_progress is None or seg.last_progress is None:
        return None
    (t_f, s_f), (t_l, s_l) = seg.first_progress, seg.last_progress
    if s_l <= s_f:
        return None
    rate = (t_l - t_f) / (s_l - s_f)
    end = seg.ended_at if seg.ended_at is not None else last_t
    launch = max(0.0, (t_f - seg.launched_at) - (s_f - seg.start_step) * rate)
    steps = (s_l - seg.start_step) * rate
    tail = max(0.0, end - seg.launched_at - launch - steps)
    return {"launch": launch, "steps": steps, "save_teardown": tail}


def phase_summary(state: RunState, plan: dict, makespan: float, total_gpus: int,
                  last_t: float) -> dict[str, Any]:
    """Per-job planned vs actual seconds per phase, and the run's goodput."""
    planned = {a["job"]: a.get("phases") or {} for a in plan.get("assignments", [])}
    rows, train_gpu_s, measured_all = [], 0.0, True
    for js in state.jobs.values():
        actual = {k: 0.0 for k in PHASES}
        known = bool(js.segments)
        for seg in js.segments:
            ph = segment_phases(seg, last_t)
            if ph is None:
                known = False
                continue
            for k in PHASES:
                actual[k] += ph[k]
            train_gpu_s += ph["steps"] * len(seg.gpus)
        measured_all &= known
        plan_ph = planned.get(js.name, {})
        plan_row = {k: (sum(float(plan_ph[p]["s"]) for p in parts if p in plan_ph) if plan_ph else None)
                    for k, parts in PLANNED_AS.items()}
        sources = sorted({str(v.get("source")) for v in plan_ph.values()} - {"measured", "none"})
        measured = attempt_phases(js.segments) or {}
        rows.append({"job": js.name, "planned": plan_row, "actual": actual if known else None,
                     "planned_sources": sources, "drain_s": measured.get("drain_s"),
                     "planned_drain_s": (plan_ph.get("drain") or {}).get("s")})
    goodput = train_gpu_s / (makespan * total_gpus) if makespan > 0 else None
    return {"phases": rows, "goodput": goodput, "train_gpu_s": train_gpu_s,
            "goodput_complete": measured_all}


def print_phases(console: Any, s: dict[str, Any]) -> None:
    """The per-phase table (planned / actual seconds) and the goodput line."""
    from saturn.fmt import compact_table, short_names

    t = compact_table("where the time went (planned / actual)")
    names = short_names([r["job"] for r in s.get("phases", [])], max_len=24)
    for col in ("job", "launch", "training steps", "saves + teardown", "draining (free)", "plan rests on"):
        t.add_column(col, no_wrap=col == "job", min_width=max([len(v) for v in names.values()] + [3])
                     if col == "job" else None)
    for r in s.get("phases", []):
        p, a = r["planned"], r["actual"] or {}
        t.add_row(names[r["job"]], *[f"{duration(p.get(k))} / {duration(a.get(k))}" for k in PHASES],
                  f"{duration(r.get('planned_drain_s'))} / {duration(r.get('drain_s'))}",
                  ", ".join(r["planned_sources"]) or "measured")
    console.print(t)
    g = s.get("goodput")
    note = "" if s.get("goodput_complete") else " (some attempts lack progress reports: a lower bound)"
    console.print(f"goodput {100 * g:.0f}% of GPU time in training steps{note}" if g is not None
                  else "goodput: no progress reports yet")
    du = s.get("device_utilization")
    if s.get("simulated"):
        console.print("device utilization: none (a simulated run: nothing ran on a device)")
        return
    word = "slot" if s.get("cpu_slots") else "GPU"
    console.print(f"device utilization (measured) {100 * float(du):.0f}%" if du is not None else
                  f"device utilization: not reported (needs NVML on the GPU nodes; {word} allocation "
                  f"above is the time {word}s were held by jobs)")


def phases_chart(run_dir: Union[str, Path], out: Union[str, Path]) -> Path:
    """A stacked-bar PNG: per job, planned and actual seconds by phase, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saturn.planner.gantt import save_figure

    s = summarize(run_dir)
    rows = s["phases"]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4.5))
    colors = {"launch": "#d62728", "steps": "#2ca02c", "save_teardown": "#1f77b4"}
    for i, r in enumerate(rows):
        for dx, which, hatch in ((-0.2, "planned", "//"), (0.2, "actual", None)):
            vals = r[which] or {}
            bottom = 0.0
            for k in PHASES:
                v = float(vals.get(k) or 0.0)
                ax.bar(i + dx, v, 0.38, bottom=bottom, color=colors[k], hatch=hatch, alpha=0.85,
                       edgecolor="white", label=k.replace("_", " + ") if i == 0 and dx > 0 else None)
                bottom += v
    ax.set_xticks(range(len(rows)), [r["job"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("seconds (left: planned, hatched; right: actual)")
    g = s.get("goodput")
    ax.set_title(f"per-job phases; run goodput {100 * g:.0f}%" if g is not None else "per-job phases")
    ax.legend()
    return save_figure(fig, out)


def gantt(run_dir: Union[str, Path], out: Union[str, Path]) -> Path:
    """Plan (first version) vs actual (every attempt) as a two-panel Gantt chart PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saturn.planner.gantt import draw_bars, draw_phases, job_colors, plan_spans, save_figure

    state, journal = load_run(run_dir)
    plans = journal.plans()
    nodes = journal.get_meta("nodes") or [{"name": "node0", "gpus": 1}]
    rows = [(n["name"], g) for n in nodes for g in range(int(n["gpus"]))]
    colors = job_colors(state.jobs)
    fig, axes = plt.subplots(2, 1, figsize=(12, 2 + 0.5 * len(rows) * 2), sharex=True)
    last_t = max([t for t, _, _ in journal.events()] + [0.0])
    t0 = plans[0]["t0"] if plans else 0.0
    panels = [("plan (v1)", [(a["job"], a["node"], a["gpus"], t0 + a["start_s"], t0 + a["end_s"],
                              f"{a['technique']}x{len(a['gpus'])}") for a in plans[0]["plan"]["assignments"]]
               if plans else []),
              ("actual", [(js.name, s.node, s.gpus, s.launched_at, s.ended_at if s.ended_at is not None else last_t,
                           f"{s.technique}x{len(s.gpus)}" + (f" {s.status}" if s.status in ("failed", "oom") else ""))
                          for js in state.jobs.values() for s in js.segments])]
    spans = [[sp for a in plans[0]["plan"]["assignments"] for sp in plan_spans(a, t0)] if plans else [],
             [sp for js in state.jobs.values() for s in js.segments for sp in segment_spans(s, last_t)]]
    for ax, (title, bars), sp in zip(axes, panels, spans):
        draw_bars(ax, bars, rows, colors, min_label_frac=0.0,
                  device="slot" if all(str(n.get("gpu_type", "")).lower() == "cpu" for n in nodes) else "GPU")
        draw_phases(ax, sp, rows)
        ax.set_title(title)
    # failed jobs (some never ran an attempt, so have no bar): named with their cause under the chart
    failed = [f"FAILED {js.name}: {failure_cause(js.reason)[:150]}"
              for js in state.jobs.values() if js.status == "failed"]
    axes[-1].set_xlabel("\n".join(["seconds since run start", *failed]), fontsize=8 if failed else None)
    return save_figure(fig, out)


def segment_spans(seg: Any, last_t: float) -> list[tuple]:
    """One attempt's phases on the run clock, for the Gantt chart: what the attempt measured
    (launch, steps incl. periodic saves' blocking, final save's blocking, the rest = teardown),
    else what its progress reports show; plus its checkpoint draining after it left the GPU."""
    from saturn.planner.gantt import sequential_spans

    end = seg.ended_at if seg.ended_at is not None else last_t
    ph = seg.phases or {}
    if ph:
        parts = [("launch", ph.get("launch_s", 0.0)),
                 ("steps", float(ph.get("steps_s") or 0.0) + float(ph.get("checkpoint_block_s") or 0.0)),
                 ("save", ph.get("save_block_s", 0.0))]
    else:
        est = segment_phases(seg, last_t)
        if est is None:
            return []
        parts = [("launch", est["launch"]), ("steps", est["steps"])]
    out = [(seg.node, seg.gpus, name, a, b) for name, a, b in sequential_spans(seg.launched_at, end, parts)]
    if seg.ended_at is not None and seg.durable_at is not None and seg.durable_at > seg.ended_at:
        out.append((seg.node, seg.gpus, "draining", seg.ended_at, seg.durable_at))
    return out


