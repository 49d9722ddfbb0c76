#!/usr/bin/env python
"""Giants on one GPU (issue 33): models far larger than the GPU, on one host, against DeepSpeed.

GPU (one H100 80 GB / H200, a host with 128 GiB and 16 cores), in two calls of about 10 minutes:

    python scripts/bench_giant.py --only probes,saturn-6.7b,deepspeed-6.7b --out-dir $OUT
    python scripts/bench_giant.py --only probes,saturn-13b,cap7 --out-dir $OUT

(`--only` merges into the benchmarks/giant.json an earlier call wrote: between calls on a fresh
device copy, put the first call's $OUT/giant.json there; no `--only` = all. `--from-json FILE`
re-renders the BENCHMARKS.md section from a recorded giant.json with its command, machine, date.)

Measured, each in its own subprocess with a timeout, its process tree's resident memory sampled
every 0.5 s (pinned host memory is resident, so it is counted):

* probes: host memory bandwidth (bench_spilling's STREAM triad), pinned host->GPU copy rate,
  bf16 matmul rate, this node's host memory (cgroup limit respected);
* saturn-6.7b: `saturn run` from an empty profile store, default numerics (exact): gpt-6.7b,
  batch 4 x seq 512, bf16, --steps steps. Reported: the option Saturn chose, s/step (median of
  the steps after the first), its floor = max(compute, link, host optimizer) from the probes
  (compute: 8 x params x tokens FLOPs -- forward, recomputed forward, backward -- at the probed
  matmul rate; link: bf16 weights in twice + bf16 gradients out; host optimizer: 28 bytes per
  parameter -- fused AdamW's minimum traffic -- at the triad bandwidth), and host peak bytes per
  parameter;
* deepspeed-6.7b: DeepSpeed ZeRO-3, parameters + optimizer offloaded (DeepSpeedCPUAdam), same
  model and batch (bench_spilling's worker). A worker killed by SIGKILL with its memory near the
  node's is recorded as "host out of memory: killed at X GB resident, the node has Y GB";
* saturn-13b: `saturn run` on gpt-13b with `numerics: low-memory`;
* cap7: gpt-2.7b at a 7 GB GPU cap, spilling (fp32 state) vs DeepSpeed offload (bench_spilling's
  workers, batch 8 x seq 512);
* the prior's host-memory estimate for each option measured here against its measured peak.

Writes benchmarks/giant.json after every measurement (mirrored into --out-dir), the `giant`
section of BENCHMARKS.md at the end. `--quick`: the same code on CPU with tiny models
(DeepSpeed skipped), writing only under --out-dir or a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import benchlib  # noqa: E402
from bench_spilling import run_worker, stream_triad  # noqa: E402

ORDER = ("probes", "saturn-6.7b", "deepspeed-6.7b", "saturn-13b", "cap7")
TIMEOUTS = {"saturn-6.7b": 330, "deepspeed-6.7b": 200, "saturn-13b": 390, "cap7": 240}  # cap7: both halves
GB = 1e9
TITLE = "Giants on one GPU: host memory, spilling vs DeepSpeed offload"


# ------------------------------------------------------------------------------ memory sampling
class TreePeak:
    """Peak resident memory of this process's descendants (the measured subprocess trees),
    sampled every `every` seconds on a thread while the `with` block runs."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.every):
            total = 0
            for c in me.children(recursive=True):
                try:
                    total += c.memory_info().rss
                except psutil.Error:  # exited while read
                    continue
            self.peak = max(self.peak, total)

    def __enter__(self) -> "TreePeak":
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join(timeout=5)


def killed_cause(returncode: Optional[int], peak_gb: float, node_gb: Optional[float]) -> str:
    """A worker's end from its exit signal and its measured memory (never from its log)."""
    from saturn.profiles.host_memory import host_oom_reason

    if returncode is not None and returncode < 0 and -returncode == 9:
        if node_gb and peak_gb >= 0.85 * node_gb:
            return host_oom_reason(peak_gb, node_gb)
        return f"killed by SIGKILL at {peak_gb:.1f} GB resident"
    return ""


# ------------------------------------------------------------------------------ probes
def probes(quick: bool) -> dict[str, Any]:
    import torch

    from saturn.profiles.host_memory import node_host_memory_gb

    out: dict[str, Any] = {"host_bandwidth": stream_triad(1 << (22 if quick else 27)),
                           "node_host_memory_gb": node_host_memory_gb()}
    if torch.cuda.is_available():
        n = 1 << 28  # 1 GiB of fp32, pinned
        h = torch.empty(n, dtype=torch.float32, pin_memory=True)
        d = torch.empty(n, dtype=torch.float32, device="cuda")
        best = float("inf")
        for _ in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            d.copy_(h, non_blocking=True)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        out["h2d_gb_s"] = 4 * n / best / GB
        a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        out["bf16_tflops"] = 10 * 2 * 8192 ** 3 / (time.perf_counter() - t0) / 1e12
        del h, d, a
        torch.cuda.empty_cache()
    return out


def floor_s(params: float, tokens: int, p: dict[str, Any]) -> dict[str, Any]:
    """max(compute, link, host optimizer) for one spilling step (see the module docstring)."""
    triad = (p.get("host_bandwidth") or {}).get("triad_gb_s")
    parts = {"host_optimizer_s": 28 * params / (triad * GB) if triad else None,
             "link_s": 6 * params / (p["h2d_gb_s"] * GB) if p.get("h2d_gb_s") else None,
             "compute_s": 8 * params * tokens / (p["bf16_tflops"] * 1e12) if p.get("bf16_tflops") else None}
    known = [v for v in parts.values() if v]
    return {**parts, "floor_s": max(known) if known else None, "source": "estimated from the probes"}


# ------------------------------------------------------------------------------ saturn run
def saturn_run(name: str, model: dict[str, Any], numerics: str, steps: int, timeout: float, work: Path,
               quick: bool, batch: int, seq: int) -> dict[str, Any]:
    """`saturn run` of one job from an empty store in a subprocess; host peak sampled."""
    from saturn.executor.report import load_run, summarize

    d = work / name
    shutil.rmtree(d, ignore_errors=True)
    (d / "store").mkdir(parents=True)
    cluster = "{devices: cpu, slots: 1}" if quick else "local"
    wl = d / "w.yaml"
    wl.write_text(f"name: {name}\ncluster: {cluster}\njobs:\n  - {{name: giant, model: {json.dumps(model)}, "
                  f"batch_size: {batch}, seq_len: {seq}, steps: {steps}, precision: bf16, numerics: {numerics}}}\n")
    env = dict(os.environ, SATURN_PROFILES=str(d / "store"),
               PYTHONPATH=os.pathsep.join(x for x in (ROOT, os.environ.get("PYTHONPATH")) if x))
    cmd = [sys.executable, "-m", "saturn", "run", str(wl), "--run-dir", str(d / "run"), "--no-live"]
    t0 = time.perf_counter()
    with TreePeak() as peak, open(d / "saturn-run.log", "wb") as log:
        try:
            rc: Optional[int] = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(d),
                                               timeout=timeout, start_new_session=True).returncode
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            rc, status = None, "timeout"
    r: dict[str, Any] = {"status": status, "exit_code": rc, "wall_s": round(time.perf_counter() - t0, 1),
                         "host_peak_gb": round(peak.peak / GB, 2), "log": str(d / "saturn-run.log"),
                         "model": model, "numerics": numerics, "batch_size": batch, "seq_len": seq}
    try:
        (job,) = summarize(d / "run")["jobs"]
        state, _ = load_run(d / "run")
        seg = state.jobs["giant"].segments[-1]
        r.update(job_status=job["status"], steps=job["steps"], attempts=job["attempts"],
                 technique=seg.technique, knobs=dict(seg.knobs), reason=job.get("cause") or job["reason"])
        times = []  # the training loop's own per-step lines (step_io.MetricsWriter), last attempt
        for f in sorted((d / "run").rglob("progress.jsonl"), key=lambda f: f.stat().st_mtime)[-1:]:
            rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
            times = [float(x["step_time_s"]) for x in rows if x.get("step_time_s") is not None]
        r["step_times"] = times
        r["s_per_step"] = statistics.median(times[1:] or times) if times else None
    except Exception as exc:  # noqa: BLE001 - what the run left is recorded as it is
        r["summary_error"] = f"{type(exc).__name__}: {exc}"
    if status != "ok":  # what saturn run said (the log stays in the work directory only)
        r["log_tail"] = (d / "saturn-run.log").read_text(errors="replace")[-1500:]
    return r


def with_prior(r: dict[str, Any], model: dict[str, Any], batch: int, seq: int, device: str) -> dict[str, Any]:
    """The prior's host-memory estimate of the option measured, beside its measured peak."""
    from saturn.prior.shapes import shape_of
    from saturn.profiles.host_memory import host_bytes

    shape = shape_of(model["name"], model.get("overrides"), batch, seq, "bf16")
    if shape is None or not r.get("technique") or not r.get("host_peak_gb"):
        return r
    est = host_bytes(shape, r["technique"], r.get("knobs") or {}, 1, device)
    r.update(params=shape.params, host_estimate_gb=round(est.gb, 2),
             host_estimate_error=round((est.gb - r["host_peak_gb"]) / r["host_peak_gb"], 3),
             host_peak_bytes_per_param=round(r["host_peak_gb"] * GB / shape.params, 2))
    return r


# ------------------------------------------------------------------------------ the bench
def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(ORDER), help=f"measurements to run ({', '.join(ORDER)})")
    p.add_argument("--steps", type=int, default=6, help="steps of each saturn run")
    p.add_argument("--budget-s", type=float, default=690.0, help="no measurement starts after this")
    p.add_argument("--timeouts", default="{}", help=f"JSON per-measurement timeouts (default {TIMEOUTS})")
    p.add_argument("--out-dir", default=None, help="also write the JSON and logs here ($OUT)")
    p.add_argument("--quick", action="store_true", help="CPU smoke run with tiny models (writes no BENCHMARKS.md)")
    p.add_argument("--from-json", default=None, help="re-render the BENCHMARKS.md section (and benchmarks/giant.json) "
                   "from a recorded giant.json (a GPU run's $OUT copy), with that run's command, machine and date")
    a = p.parse_args(argv)
    bad = [w for w in a.only.split(",") if w and w not in ORDER]
    if bad:
        p.error(f"--only: unknown measurement(s) {bad}; allowed: {list(ORDER)}")
    try:
        json.loads(a.timeouts)
    except json.JSONDecodeError as exc:
        p.error(f"--timeouts: not JSON ({exc})")
    if a.steps < 2:
        p.error("--steps must be >= 2 (the first step is not timed)")
    return a


def main(argv: Optional[list[str]] = None) -> int:
    a = parse(argv)
    if a.from_json:
        report = json.loads(Path(a.from_json).read_text())
        report["summary"] = summarize(report.get("results") or {})
        benchlib.atomic_write(os.path.join(ROOT, "benchmarks", "giant.json"), json.dumps(report, indent=2) + "\n")
        benchlib.write_section("giant", TITLE, markdown(report), recorded=report)
        print(f"wrote benchmarks/giant.json and the giant section of BENCHMARKS.md from {a.from_json}")
        return 0
    quick = a.quick
    out_dir = Path(a.out_dir or tempfile.mkdtemp(prefix="bench-giant-")) if quick or a.out_dir else None
    bench_dir = out_dir if quick else Path(ROOT) / "benchmarks"
    assert bench_dir is not None
    work = Path(tempfile.mkdtemp(prefix="giant-work-"))
    log_dir = (out_dir or bench_dir) / "giant-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    timeouts = {**TIMEOUTS, **({k: 300 for k in TIMEOUTS} if quick else {}), **json.loads(a.timeouts)}
    tiny = {"name": "gpt2-tiny", "overrides": {"n_layer": 4}}
    m67 = tiny if quick else {"name": "gpt-6.7b"}
    m13 = {"name": "gpt2-tiny", "overrides": {"n_layer": 6}} if quick else {"name": "gpt-13b"}
    batch, seq = (2, 32) if quick else (4, 512)
    path = bench_dir / "giant.json"
    old = json.loads(path.read_text()) if path.exists() and not quick else {}
    report: dict[str, Any] = {"benchmark": "giant", **benchlib.stamp(), "results": dict(old.get("results") or {}),
                              "config": {"steps": a.steps, "budget_s": a.budget_s, "timeouts": timeouts,
                                         "quick": quick, "cpu_count": os.cpu_count()}}

    def save() -> None:
        report["summary"] = summarize(report["results"])
        text = json.dumps(report, indent=2, default=str) + "\n"
        for d in {bench_dir, out_dir} - {None}:
            benchlib.atomic_write(os.path.join(str(d), "giant.json"), text)

    def say(msg: str) -> None:
        print(msg, flush=True)
        with open(log_dir / "bench.log", "a") as f:
            f.write(msg + "\n")

    node_gb = (report["results"].get("probes") or {}).get("node_host_memory_gb")
    cuda_spec = {"overrides": {}, "precision": "bf16", "steps": 2, "warmup": 1, "device": "cuda"}

    def deepspeed(model: str, b: int, cap: Optional[float], timeout: float) -> dict[str, Any]:
        with TreePeak() as peak:
            r = run_worker("deepspeed", {**cuda_spec, "model": model, "batch_size": b, "seq_len": seq,
                                         "cap_gb": cap}, timeout, str(log_dir))
        r["host_peak_gb"] = round(peak.peak / GB, 2)
        cause = killed_cause(r.get("returncode"), r["host_peak_gb"], node_gb)
        if cause:
            r.update(status="killed", reason=cause)
        return r

    jobs: dict[str, Callable[[float], dict[str, Any]]] = {
        "probes": lambda t: probes(quick),
        "saturn-6.7b": lambda t: with_prior(saturn_run("saturn-67b", m67, "exact", a.steps, t, work, quick, batch,
                                                       seq), m67, batch, seq, "cpu" if quick else "cuda"),
        "deepspeed-6.7b": lambda t: deepspeed("gpt-6.7b", batch, None, t),
        "saturn-13b": lambda t: with_prior(saturn_run("saturn-13b", m13, "low-memory", max(2, a.steps - 2), t, work,
                                                      quick, batch, seq), m13, batch, seq, "cpu" if quick else "cuda"),
        "cap7": lambda t: {  # t covers both: half each
            "spilling": run_worker("spilling", {**cuda_spec, "device": "cpu" if quick else "cuda",
                                                "model": tiny["name"] if quick else "gpt-2.7b",
                                                "overrides": tiny["overrides"] if quick else {},
                                                "batch_size": batch if quick else 8, "seq_len": seq,
                                                "cap_gb": None if quick else 7.0,
                                                "variants": {"fp32-state": {"shard_layers": 1} if quick
                                                             else {"gpu_budget_gb": 6.3}}}, t / 2, str(log_dir)),
            **({} if quick else {"deepspeed": deepspeed("gpt-2.7b", 8, 7.0, t / 2)})},
    }
    t_start = time.perf_counter()
    say(f"{benchlib.command()} -- {benchlib.machine()}")
    for name in [w for w in ORDER if w in a.only.split(",")]:
        left = a.budget_s - (time.perf_counter() - t_start)
        if name == "deepspeed-6.7b" and quick:
            report["results"][name] = {"status": "skipped", "reason": "needs CUDA"}
        elif left < 30:
            report["results"][name] = {"status": "skipped", "reason": f"--budget-s {a.budget_s:g} spent"}
        else:
            say(f"=== {name}")
            t0 = time.perf_counter()
            report["results"][name] = r = jobs[name](min(timeouts.get(name, 120), left))
            r.setdefault("wall_s", round(time.perf_counter() - t0, 1))
            if name == "probes":
                node_gb = r.get("node_host_memory_gb")
            say(f"    {name}: {json.dumps({k: v for k, v in r.items() if k != 'step_times'}, default=str)[:600]}")
        save()
    report["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    save()
    md = markdown(report)
    say(md)
    shutil.rmtree(work, ignore_errors=True)
    if quick:
        print(f"--quick: wrote {out_dir}/giant.json (BENCHMARKS.md untouched)")
        return 0
    benchlib.write_section("giant", TITLE, md, recorded=report)
    return 0


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers: s/step vs floor, host bytes/param, speedups, the prior's error."""
    out: dict[str, Any] = {}
    p = res.get("probes") or {}
    s67 = res.get("saturn-6.7b") or {}
    if s67.get("s_per_step") and s67.get("params") and p:
        f = floor_s(s67["params"], s67["batch_size"] * s67["seq_len"], p)
        out["saturn-6.7b"] = {**f, "s_per_step": s67["s_per_step"],
                              "x_floor": s67["s_per_step"] / f["floor_s"] if f["floor_s"] else None,
                              "host_peak_bytes_per_param": s67.get("host_peak_bytes_per_param")}
    cap = res.get("cap7") or {}
    sp = (((cap.get("spilling") or {}).get("variants") or {}).get("fp32-state") or {}).get("step_time_s")
    ds = ((cap.get("deepspeed") or {}).get("result") or {}).get("step_time_s")
    if sp and ds:
        out["cap7_speedup_vs_deepspeed"] = ds / sp
    errs = [abs(r["host_estimate_error"]) for r in res.values() if isinstance(r, dict) and "host_estimate_error" in r]
    if errs:
        out["prior_host_median_abs_error"] = statistics.median(errs)
    return out


def markdown(report: dict[str, Any]) -> str:
    res, s = report["results"], report.get("summary") or {}
    lines = [f"Command, machine and date: `{report.get('command')}` on {report.get('machine')}, "
             f"{report.get('date')}. Measured unless labelled.", "",
             "| measurement | status | option | s/step | host peak GB | bytes/param | prior host GB (error) |",
             "|---|---|---|---|---|---|---|"]
    for name in ORDER[1:]:
        r = res.get(name)
        if not isinstance(r, dict):
            continue
        rows = [(name, r)] if name != "cap7" else [(f"cap7 {k}", v) for k, v in r.items() if isinstance(v, dict)]
        for label, x in rows:
            st = x.get("s_per_step") or (x.get("result") or {}).get("step_time_s") or \
                (((x.get("variants") or {}).get("fp32-state") or {}).get("step_time_s"))
            opt = f"{x.get('technique', '')} {json.dumps(x.get('knobs') or {})}" if x.get("technique") else ""
            prior = (f"{x['host_estimate_gb']:.1f} ({x['host_estimate_error']:+.0%})"
                     if "host_estimate_gb" in x else "")
            lines.append(f"| {label} | {x.get('job_status') or x.get('status')} {x.get('reason', '')[:120]} | {opt} | "
                         f"{st if st is None else f'{st:.3f}'} | {x.get('host_peak_gb', '')} | "
                         f"{x.get('host_peak_bytes_per_param', '')} | {prior} |")
    if s:
        lines += ["", "Summary (floor estimated from the probes): " + json.dumps(s, default=str)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
