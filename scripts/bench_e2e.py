"""First contact, end to end: `saturn run W.yaml` from an EMPTY profile store vs the same jobs as
plain PyTorch loops (scripts/bench_practice.py), one invocation, one machine.

What it answers (issues 24 and 25): how long a new user waits from an empty store (measure + plan
+ run) against running the jobs by hand; how much of it is measuring outside the jobs' own
training; whether every job completes; goodput (time in training steps / makespan); the plan's
per-job, per-phase accuracy (launch, steps, saves) and its makespan; the blocking save of the
largest job; the ViT step against its step minus the wait for its batch (data wait, from the
job's per-step metrics); and the accuracy of the first (unmeasured) step-time numbers against
what the jobs' own first steps measured.

    python scripts/bench_e2e.py --gpus 1 --workdir /tmp/e2e     # one H200, ~10-12 min
    python scripts/bench_e2e.py --quick                        # CPU slots, toy sizes, ~2-3 min
    python scripts/bench_e2e.py --summarize /tmp/e2e           # re-record a (cut-off) work dir
    python scripts/bench_e2e.py --install-from DIR             # DIR = a remote run's --root or
                                                               # --copy-to: its JSON + section here

Workload (GPU): GPT-2 medium B32 x 300 steps, GPT-2 large B16 x 150, ViT-base B128 x 300, two
learning rates each (6 jobs), seq 512, bf16, default techniques and GPU counts (no `techniques:`
or `gpus:` restriction), one GPU. Saturn runs first (`python -m saturn run W.yaml --no-live`, a
child process, SATURN_PROFILES = a fresh empty directory), then the plain loops (one process per
job, in sequence). `--skip-saturn` / `--skip-practice` run one side only.

Started detached, it leaves partial results: the work directory's bench.log and state.json
(every number so far) are written as it goes, the JSON and BENCHMARKS.md section after each part
(and every 30 s while Saturn runs), and `--copy-to DIR` mirrors them there each time. To fit the
GPU host's disk, a completed job's checkpoints are deleted while the run goes on (never a running
job's; Saturn's timing is not affected: it has already published them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchlib  # noqa: E402

TARGETS = {  # name: (op, target, issue)
    "all_jobs_completed": ("==", 1.0, 24),
    "whole_vs_practice": ("<=", 0.6, 24),
    "measuring_outside_share": ("<=", 0.10, 24),
    "first_numbers_step_error_median": ("<=", 0.25, 24),
    "goodput_run": (">=", 0.85, 25),
    "job_error_median": ("<=", 0.05, 25),
    "job_error_max": ("<=", 0.15, 25),
    "makespan_vs_plan": ("<=", 0.05, 25),
    "largest_blocking_save_s": ("<=", 1.0, 25),
    "vit_step_vs_ready_batch": ("<=", 0.10, 25),
}


def workload_yaml(quick: bool) -> str:
    if quick:
        return """name: e2e-quick
cluster: {devices: cpu, slots: 2}
defaults: {seq_len: 16, batch_size: 4, precision: fp32, optimizer: {name: adamw, lr: 1.0e-3}}
jobs:
  - {name: lm-a, model: gpt2-tiny, data: synthetic-tokens, steps: 40}
  - {name: lm-b, model: {name: gpt2-tiny, overrides: {n_layer: 4}}, data: synthetic-tokens, steps: 30}
  - {name: vit, model: vit-tiny, data: synthetic-images, seq_len: 1, steps: 40}
sweep:
  optimizer.lr: [1.0e-3, 3.0e-3]
"""
    return """name: e2e-1gpu
cluster: {devices: cuda}
defaults: {seq_len: 512, precision: bf16, optimizer: {name: adamw, lr: 3.0e-4, weight_decay: 0.1}}
jobs:
  - {name: gpt2-medium, model: gpt2-medium, data: synthetic-tokens, batch_size: 32, steps: 300}
  - {name: gpt2-large, model: gpt2-large, data: synthetic-tokens, batch_size: 16, steps: 150}
  - {name: vit-base, model: vit-base, data: synthetic-images, seq_len: 1, batch_size: 128, steps: 300}
sweep:
  optimizer.lr: [1.0e-4, 3.0e-4]
"""


class Bench:
    """The work directory: log, state.json (every number so far), outputs (atomic, mirrored)."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.state_path = work / "state.json"
        self.state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.lock = threading.Lock()
        self.log_f = open(work / "bench.log", "a", buffering=1)

    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.log_f.write(line + "\n")
        os.fsync(self.log_f.fileno())

    def save(self, **kw: Any) -> None:
        with self.lock:
            self.state.update(kw)
            tmp = self.state_path.with_name(".state.json.tmp")
            tmp.write_text(json.dumps(self.state, indent=1, default=str))
            os.replace(tmp, self.state_path)

    def mirror(self, *paths: Path) -> None:
        if self.args.copy_to is None:
            return
        dest = Path(self.args.copy_to)
        dest.mkdir(parents=True, exist_ok=True)
        for p in (self.work / "bench.log", self.state_path, self.work / "saturn-run.log", *paths):
            if p.exists():
                shutil.copy2(p, dest / p.name)


# ---------------------------------------------------------------------------------------- Saturn
def run_saturn(b: Bench, wl_path: Path) -> None:
    """`saturn run W.yaml` on an empty store, as a child process (the user's path)."""
    store, run_dir = b.work / "store", b.work / "run"
    for p in (store, run_dir):
        if p.exists():
            shutil.rmtree(p)
    store.mkdir()
    env = dict(os.environ, SATURN_PROFILES=str(store), SATURN_SEED_PROFILES="none")  # empty: no shipped rows
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(benchlib.ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "saturn", "run", str(wl_path), "--run-dir", str(run_dir), "--no-live"]
    if b.args.quick:
        cmd += ["--devices", "cpu"]
    b.log(f"saturn: {' '.join(cmd)} (SATURN_PROFILES={store}, empty)")
    t0 = time.time()
    b.save(saturn={"started_wall": t0, "cmd": cmd, "store": str(store), "run_dir": str(run_dir), "done": False})
    stop = threading.Event()
    mon = threading.Thread(target=_monitor, args=(b, run_dir, stop), daemon=True)
    mon.start()
    with open(b.work / "saturn-run.log", "ab") as out:
        p = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(b.work),
                           timeout=b.args.saturn_timeout_s)
    t1 = time.time()
    stop.set()
    mon.join(timeout=60)
    b.save(saturn={**b.state["saturn"], "exit_code": p.returncode, "whole_s": t1 - t0, "done": True})
    b.log(f"saturn: exit {p.returncode} after {t1 - t0:.1f} s")


def _monitor(b: Bench, run_dir: Path, stop: threading.Event) -> None:
    """While Saturn runs: partial results every 30 s, and completed jobs' checkpoints deleted."""
    while not stop.wait(30.0 if not b.args.quick else 5.0):
        try:
            if not b.args.keep_checkpoints:
                _prune(run_dir)
            record(b, partial="Saturn still running")
        except Exception as exc:  # noqa: BLE001 - a partial summary is best effort
            b.log(f"(partial summary failed: {type(exc).__name__}: {exc})")


def _prune(run_dir: Path) -> None:
    from saturn.executor.report import summarize

    if not (run_dir / "journal.sqlite").exists():
        return
    now = time.time()
    for j in summarize(run_dir)["jobs"]:
        d = run_dir / "jobs" / j["job"] / "ckpt"
        if j["status"] != "completed" or not d.is_dir():
            continue
        newest = max((f.stat().st_mtime for f in d.rglob("*") if f.exists()), default=0.0)
        if now - newest > 30.0:  # nothing written there for 30 s: no save is still draining
            shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------------- plain loops
def run_practice(b: Bench, wl_path: Path) -> None:
    import bench_practice

    b.log("plain loops: one process per job, in sequence")
    save_dir = b.work / "practice-saves"
    save_dir.mkdir(exist_ok=True)

    def on_job(res: dict) -> None:
        r = res["jobs"][-1]
        b.log(f"plain loop {r['job']}: " + (f"{r['process_wall_s']:.1f} s ({r.get('implementation')})"
                                            if "error" not in r else f"FAILED: {r['error'][-300:]}"))
        b.save(practice=res)
        record(b, partial="plain loops still running")

    res = bench_practice.run_all(wl_path, b.work / "practice.json", "cpu" if b.args.quick else "cuda",
                                 str(save_dir), on_job=on_job)
    b.save(practice=res)
    b.log(f"plain loops: {res['total_wall_s']:.1f} s in total, complete={res['complete']}")


# -------------------------------------------------------------------------------------- numbers
def _journal(run_dir: Path) -> tuple[list, dict]:
    from saturn.executor.journal import Journal

    j = Journal(run_dir / "journal.sqlite")
    return list(j.events()), {"stages": j.get_meta("stages") or {}}


def saturn_numbers(b: Bench) -> Optional[dict[str, Any]]:
    from saturn.executor.report import summarize

    sat = b.state.get("saturn")
    if not sat or not (Path(sat["run_dir"]) / "journal.sqlite").exists():
        return None
    run_dir = Path(sat["run_dir"])
    s = summarize(run_dir)
    events, meta = _journal(run_dir)
    started = next((d.get("wall") for _, k, d in events if k == "run_started"), None)
    last_t = max([t for t, _, _ in events] + [0.0])
    offset = (started - sat["started_wall"]) if started else None  # process start -> run clock 0
    whole = sat.get("whole_s") if sat.get("done") else (offset or 0.0) + last_t
    first_launch = min([t for t, k, _ in events if k == "launch"], default=None)
    first_progress = min([t for t, k, _ in events if k == "progress"], default=None)
    stages = meta["stages"]
    from saturn.executor.journal import Journal

    plans = Journal(run_dir / "journal.sqlite").plans()
    last_plan_end = (plans[-1]["t0"] + float(plans[-1]["plan"].get("makespan_s") or 0.0)) if plans else None
    # first numbers (what the plan started from) vs the jobs' own measurements
    first_rows: dict[tuple, dict] = {}
    for _, k, d in events:
        if k == "profiles":
            for r in d["rows"]:
                first_rows.setdefault((r["job"], r["technique"], str(r.get("knobs")), int(r["gpus"])), r)
            break
    measured = []
    for t, k, d in events:
        if k == "measured":
            base = next((r for (job, tech, _, g), r in first_rows.items()
                         if job in d["jobs"] and tech == d["technique"] and g == d["gpus"]), None)
            est = base.get("step_time_s") if base else None
            measured.append({"t": t, "signature": d["signature"], "technique": d["technique"], "gpus": d["gpus"],
                             "knobs": d["knobs"], "feasible": d["feasible"], "steps": d["steps"],
                             "measured_step_s": d["step_time_s"], "first_numbers_step_s": est,
                             "error": (est - d["step_time_s"]) / d["step_time_s"]
                             if est and d.get("step_time_s") else None, "first": d.get("first")})
    phases = {r["job"]: r for r in s["phases"]}
    jobs = []
    for j in s["jobs"]:
        ph = phases.get(j["job"], {})
        jobs.append({"job": j["job"], "status": j["status"], "reason": j.get("reason") or "",
                     "technique": j["technique"], "gpus": j["gpus"], "attempts": j["attempts"],
                     "progress": j["progress"], "total_steps": j["total_steps"],
                     "planned_s": j["planned_runtime_s"], "actual_s": j["actual_runtime_s"],
                     "error": j["prediction_error"], "planned_phases": ph.get("planned"),
                     "actual_phases": ph.get("actual"), "planned_sources": ph.get("planned_sources"),
                     # what the attempts themselves measured: launch_s, steps_s, checkpoint_block_s,
                     # save_block_s (blocking part of the final save), drain_s (written behind)
                     "measured_phases": j.get("phases"), "drain_s": ph.get("drain_s")})
    return {"whole_s": whole, "done": bool(sat.get("done")), "exit_code": sat.get("exit_code"),
            "process_start_to_run_clock_s": offset, "first_launch_s": _plus(offset, first_launch),
            "first_progress_s": _plus(offset, first_progress), "stages": stages,
            "measuring_outside_s": float(stages.get("profiles_s") or 0.0),
            "makespan_s": s["makespan_s"], "planned_makespan_s": s["planned_makespan_s"],
            "last_plan_makespan_s": last_plan_end,
            "goodput": s.get("goodput"), "train_gpu_s": s.get("train_gpu_s"), "plan_versions": s["plan_versions"],
            "switches": s["switches"], "measurements": measured, "jobs": jobs,
            "data_wait": _data_wait(run_dir, [j["job"] for j in jobs])}


def _plus(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a + b


def _data_wait(run_dir: Path, jobs: list[str]) -> dict[str, Any]:
    """Per job, from its per-step metrics lines: median step, median wait for the batch, and the
    step without the wait (the ready-batch step, derived: step - data wait)."""
    out = {}
    for job in jobs:
        p = run_dir / "jobs" / job / "progress.jsonl"
        if not p.exists():
            continue
        steps, waits = [], []
        for line in p.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("step_time_s") is not None:
                steps.append(float(r["step_time_s"]))
                waits.append(float(r.get("data_wait_s") or 0.0))
        if len(steps) > 3:
            st, w = statistics.median(steps[2:]), statistics.median(waits[2:])
            ready = statistics.median([a - c for a, c in zip(steps[2:], waits[2:])])
            out[job] = {"step_s": st, "data_wait_s": w, "ready_batch_step_s": ready,
                        "step_vs_ready": (st - ready) / ready if ready > 0 else None, "steps": len(steps)}
    return out


def _met(name: str, value: Optional[float], note: str = "") -> dict[str, Any]:
    op, target, issue = TARGETS[name]
    ok = None if value is None else (value >= target if op == ">=" else value <= target if op == "<="
                                     else value == target)
    return {"value": value, "target": f"{op} {target}", "issue": issue, "met": ok, "note": note}


def record(b: Bench, partial: str = "") -> None:
    """Every number so far -> benchmarks/e2e-*.json + the BENCHMARKS.md section (+ --copy-to)."""
    sat = saturn_numbers(b)
    prac = b.state.get("practice")
    name = "e2e-1gpu" if not b.args.quick else "e2e-quick-cpu"
    root = b.args.root or (b.work if b.args.quick else benchlib.ROOT)
    practice_s = prac.get("total_wall_s") if prac and prac.get("complete") else None
    t: dict[str, Any] = {}
    if sat is not None:
        jobs = sat["jobs"]
        errs = [abs(j["error"]) for j in jobs if j["error"] is not None]
        whole = sat["whole_s"]
        t["all_jobs_completed"] = _met("all_jobs_completed",
                                       sum(j["status"] == "completed" for j in jobs) / max(1, len(jobs)))
        t["whole_vs_practice"] = _met("whole_vs_practice", whole / practice_s if practice_s and sat["done"] else None,
                                      "" if practice_s else "plain loops not (fully) run")
        t["measuring_outside_share"] = _met("measuring_outside_share",
                                            sat["measuring_outside_s"] / whole if whole else None,
                                            "the profile stage (store read, estimates, any trial process)")
        me = [abs(m["error"]) for m in sat["measurements"] if m["error"] is not None and m["first"]]
        t["first_numbers_step_error_median"] = _met(
            "first_numbers_step_error_median", statistics.median(me) if me else None,
            f"{len(me)} options: first (unmeasured) step time vs the job's own measurement")
        t["goodput_run"] = _met("goodput_run", sat["goodput"])
        t["job_error_median"] = _met("job_error_median", statistics.median(errs) if errs else None)
        t["job_error_max"] = _met("job_error_max", max(errs) if errs else None)
        mk, pl = sat["makespan_s"], sat["planned_makespan_s"]
        lp = sat["last_plan_makespan_s"]
        t["makespan_vs_plan"] = _met("makespan_vs_plan", abs(mk - pl) / pl if pl and sat["done"] else None,
                                     "vs the first plan (made before any measurement); vs the last plan: "
                                     + (f"{abs(mk - lp) / lp:.3f}" if lp and sat["done"] else "-"))
        big = _largest_save(jobs)
        t["largest_blocking_save_s"] = _met("largest_blocking_save_s", big[1] if big else None,
                                            f"{big[0]}: phase {big[2]!r} (median over its jobs)" if big else "")
        vit = [v for k, v in sat["data_wait"].items() if k.startswith("vit")]
        t["vit_step_vs_ready_batch"] = _met(
            "vit_step_vs_ready_batch", max(v["step_vs_ready"] for v in vit) if vit else None,
            "derived from per-step metrics: step vs step minus data wait" if vit else "no ViT metrics")
    data = {"mode": "quick-cpu" if b.args.quick else f"{b.args.gpus}-gpu", "workload": b.state.get("workload"),
            "partial": partial or None, "saturn": sat, "practice": prac, "targets": t,
            "source": "measured (one run)" + (f"; PARTIAL: {partial}" if partial else "")}
    out = benchlib.write_json(name, data, root=root)
    md = benchlib.write_section(name, f"First contact, end to end ({data['mode']})", _body(b, sat, prac, t, partial),
                                root=root)
    b.mirror(out, md)


def _largest_save(jobs: list[dict]) -> Optional[tuple[str, float, str]]:
    """(job family, blocking save seconds, phase name) of the largest model that saved."""
    order = ("gpt2-large", "gpt2-medium", "vit-base", "lm-b", "lm-a", "vit")
    for fam in order:
        vals, key = [], None
        for j in jobs:
            if not (j["job"].startswith(fam + "-") and j["status"] == "completed"):
                continue
            mp = j.get("measured_phases") or {}
            if mp.get("save_block_s") is not None:  # the final save's blocking part, as measured
                vals.append(float(mp["save_block_s"]))
                key = "save_block_s (measured by the attempt)"
            elif (j["actual_phases"] or {}).get("save_teardown") is not None:
                vals.append(float(j["actual_phases"]["save_teardown"]))
                key = "save_teardown (from progress reports)"
        if vals and key:
            return fam, statistics.median(vals), key
    return None


def _pa(j: dict, k: str) -> str:
    return f"{_r((j['planned_phases'] or {}).get(k))} / {_r((j['actual_phases'] or {}).get(k))}"


def _r(v: Any, nd: int = 2) -> Any:
    return "-" if v is None else round(float(v), nd)


def _body(b: Bench, sat: Optional[dict], prac: Optional[dict], t: dict, partial: str) -> str:
    lines = []
    if partial:
        lines.append(f"**Partial** ({partial}): the numbers below cover what had run.\n")
    if b.state.get("command") and b.state["command"] != benchlib.command():
        lines.append(f"The run: `{b.state['command']}` on {b.state.get('machine', '?')}.\n")
    if sat is not None:
        st = sat["stages"]
        lines.append(f"Saturn from an empty store: **{_r(sat['whole_s'], 1)} s** whole (`saturn run` process), "
                     f"exit {sat['exit_code']}; stages {', '.join(st.get('stages', []))}; profile stage "
                     f"{_r(st.get('profiles_s'))} s; first launch at {_r(sat['first_launch_s'], 1)} s, first step "
                     f"reported at {_r(sat['first_progress_s'], 1)} s; makespan {_r(sat['makespan_s'], 1)} s "
                     f"(first plan {_r(sat['planned_makespan_s'], 1)} s); plan versions {sat['plan_versions']}, "
                     f"switches {sat['switches']}; goodput {_r(sat['goodput'], 3)}.")
    if prac is not None:
        impls = sorted({r.get("implementation", "?") for r in prac["jobs"]})
        lines.append(f"Plain loops (one process per job, in sequence; {', '.join(impls)}): "
                     f"**{_r(prac.get('total_wall_s'), 1)} s** for {len(prac['jobs'])} job(s)"
                     + ("" if prac.get("complete") else " (NOT complete)") + ".")
    rows = [{"target": k, "issue": f"#{v['issue']}", "value": _r(v["value"], 3), "wanted": v["target"],
             "met": {True: "met", False: "missed", None: "n/a"}[v["met"]], "note": v["note"]} for k, v in t.items()]
    if rows:
        lines.append("\n" + benchlib.md_table(rows, ["target", "issue", "value", "wanted", "met", "note"]))
    if sat is not None and sat["jobs"]:
        keys: list[str] = []
        for j in sat["jobs"]:
            for k in list((j["planned_phases"] or {})) + list((j["actual_phases"] or {})):
                if k not in keys:
                    keys.append(k)
        jr = [{"job": j["job"], "status": j["status"] + (f" ({j['reason'][:60]})" if j["reason"] else ""),
               "option": f"{j['technique']}x{j['gpus']}", "tries": j["attempts"],
               **{f"{k} plan/actual": _pa(j, k) for k in keys},
               "blocking save": _r((j.get("measured_phases") or {}).get("save_block_s")),
               "draining": _r(j.get("drain_s")), "error": _r(j["error"])} for j in sat["jobs"]]
        lines.append("\nPer job (seconds):\n\n" + benchlib.md_table(jr, list(jr[0])))
        if any(m["first"] for m in sat["measurements"]):
            mr = [{"signature": m["signature"], "option": f"{m['technique']}x{m['gpus']} {m['knobs']}",
                   "first numbers s/step": _r(m["first_numbers_step_s"], 4),
                   "measured s/step": _r(m["measured_step_s"], 4), "error": _r(m["error"]), "steps": m["steps"],
                   "at run s": _r(m["t"], 1)} for m in sat["measurements"] if m["first"]]
            lines.append("\nMeasured by the jobs' own first steps (into the store; the first measurement of each "
                         "option, refinements in the JSON):\n\n" + benchlib.md_table(mr, list(mr[0])))
        if sat["data_wait"]:
            dr = [{"job": k, "step s": _r(v["step_s"], 4), "data wait s": _r(v["data_wait_s"], 4),
                   "ready-batch step s (derived)": _r(v["ready_batch_step_s"], 4)} for k, v in sat["data_wait"].items()]
            lines.append("\nStep vs data wait (per-step metrics, median):\n\n" + benchlib.md_table(dr, list(dr[0])))
    if prac is not None and prac["jobs"]:
        pr = [{"job": r["job"], "process s": _r(r.get("process_wall_s"), 1), "build s": _r(r.get("build_s")),
               "train s": _r(r.get("train_s"), 1), "save s": _r(r.get("save_s")),
               "s/step": _r(r.get("step_time_median_s"), 4)} for r in prac["jobs"]]
        lines.append("\nPlain loops per job:\n\n" + benchlib.md_table(pr, list(pr[0])))
    return "\n".join(lines)


def install_from(src: Path) -> None:
    """Bring a remote run's outputs (its --root) into this repository: the JSON files as they are,
    each BENCHMARKS.md section verbatim (command, machine and date lines included)."""
    import re

    text = (src / "BENCHMARKS.md").read_text()
    found = sorted((src / "benchmarks").glob("e2e-*.json")) or sorted(src.glob("e2e-*.json"))  # --root / --copy-to
    if not found:
        sys.exit(f"no e2e-*.json under {src} or {src / 'benchmarks'}")
    for js in found:
        name = js.stem
        m = re.search(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", text, re.S)
        if m is None:
            sys.exit(f"{src / 'BENCHMARKS.md'} has no section {name}")
        shutil.copy2(js, benchlib.ROOT / "benchmarks" / js.name)
        md = benchlib.ROOT / "BENCHMARKS.md"
        old = md.read_text()
        pat = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
        section = m.group(0)
        hit = pat.search(old)
        new = (old[:hit.start()] + section + old[hit.end():]) if hit else old.rstrip("\n") + "\n\n" + section + "\n"
        md.write_text(new)
        print(f"installed {name}: benchmarks/{js.name} and its BENCHMARKS.md section")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, default=1, help="GPUs (1 is the benchmark)")
    ap.add_argument("--quick", action="store_true", help="CPU slots, toy sizes (proves the script)")
    ap.add_argument("--workdir", type=Path, default=None, help="store, run dir, log (default: a new temp dir)")
    ap.add_argument("--skip-saturn", action="store_true")
    ap.add_argument("--skip-practice", action="store_true")
    ap.add_argument("--summarize", type=Path, default=None, help="only re-record this work dir")
    ap.add_argument("--copy-to", type=Path, default=None, help="mirror log, state and outputs here")
    ap.add_argument("--keep-checkpoints", action="store_true", help="do not delete completed jobs' checkpoints")
    ap.add_argument("--saturn-timeout-s", type=float, default=1500.0)
    ap.add_argument("--root", type=Path, default=None,
                    help="where benchmarks/*.json and BENCHMARKS.md go (default: the repo; --quick: the work dir)")
    ap.add_argument("--install-from", type=Path, default=None,
                    help="copy DIR/benchmarks/e2e-*.json and their BENCHMARKS.md sections into this repo")
    args = ap.parse_args()
    if args.install_from is not None:
        return install_from(args.install_from)
    if args.summarize is not None:
        b = Bench(args, args.summarize)
        args.quick = b.state.get("quick", args.quick)
        record(b, partial="" if b.state.get("finished") else "re-recorded from a cut-off work dir")
        return
    if not args.quick:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() < args.gpus:
            sys.exit(f"needs {args.gpus} CUDA GPU(s); use --quick on CPU")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(args.gpus)))
    import tempfile

    work = args.workdir or Path(tempfile.mkdtemp(prefix="saturn-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    b = Bench(args, work)
    wl_path = work / "workload.yaml"
    wl_path.write_text(workload_yaml(args.quick))
    b.save(workload=wl_path.read_text(), quick=args.quick, started=time.time(), finished=False,
           command=benchlib.command(), machine=benchlib.machine())
    b.log(f"work dir {work}; {benchlib.machine()}; disk free {shutil.disk_usage(work).free / 2**30:.0f} GiB")
    if not args.skip_saturn:
        run_saturn(b, wl_path)
        record(b, partial="" if args.skip_practice else "plain loops not run yet")
    if not args.skip_practice:
        run_practice(b, wl_path)
    b.save(finished=True)
    record(b)
    b.log(f"done: {benchlib.ROOT if not args.quick else work}")


if __name__ == "__main__":
    main()
