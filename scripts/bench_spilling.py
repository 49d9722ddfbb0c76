#!/usr/bin/env python
"""Benchmark model spilling at its floor, against what a user would pick instead, and SHARP.

GPU (one H200; ~8 minutes in all; every measurement in its own subprocess with a timeout):

    python scripts/bench_spilling.py --out-dir $OUT

    = --model gpt-2.7b --batch-size 8 --seq-len 512 --cap-gb 7 --steps 2 --warmup 1 --budget-s 540

CPU: `--quick` (smoke run of the same code on gpt2-tiny, writes only under --out-dir or a temp
dir), `--parity` (loss parity of every numerics-changing knob, >= 200 steps on a small model;
writes benchmarks/spilling_parity.json and its BENCHMARKS.md section), `--from-json FILE`
(re-render the BENCHMARKS.md section from a recorded JSON, with that run's command, machine and
date).

Measured, in this order (each a median of --steps steps after --warmup; GPU memory capped at
--cap-gb with torch.cuda.set_per_process_memory_fraction):

1. host memory bandwidth: a STREAM triad (a = b + s*c, fp32, 2 x 512 MiB inputs) with torch on
   all cores, best of 5 (in this process, nothing else running);
2. spilling (worker `spilling`): the engine under each knob variant (fp32 optimizer state = the
   old engine; bf16 state; the split optimizer), with per variant the host optimizer alone (every
   host-stepped shard's step back to back) and the bytes it must touch; then the compute bound
   (same shards, all resident, no transfers, no optimizer; uncapped) and the transfer bound (the
   bytes a step moves, serially, pinned). Host-optimizer bound = bytes / triad bandwidth;
   floor = max(compute, link, host-optimizer bound);
3. DeepSpeed ZeRO-3 with parameter + optimizer offload (DeepSpeedCPUAdam; its op is JIT-built
   outside the timed steps), FSDP2 with CPUOffloadPolicy (Saturn's fsdp builder), fairscale
   OffloadModel (last: at a 7 GB cap it is not expected to fit); the baselines recompute
   activations per block, as spilling does per shard;
4. SHARP of --sharp-models gpt-2.7b-class models vs the same models spilled one after another,
   both with --sharp-knobs.

Results go to benchmarks/spilling.json after every measurement (a cut-off run keeps what it
measured), worker logs to benchmarks/spilling-logs/ (both mirrored into --out-dir), and the
`spilling` section of BENCHMARKS.md at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

ORDER = ("spilling", "deepspeed", "fsdp2", "sharp", "fairscale")
TIMEOUTS = {"spilling": 170, "deepspeed": 150, "fsdp2": 80, "sharp": 140, "fairscale": 30}
NEEDS_CUDA = ("deepspeed", "fsdp2", "fairscale")


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--model", default="gpt-2.7b", help="zoo model name")
    p.add_argument("--overrides", default="{}", help="JSON architecture overrides")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--cap-gb", type=float, default=7.0, help="GPU memory cap per process (GB)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--split-fraction", type=float, default=0.4,
                   help="gpu_state_fraction of the split-optimizer variants")
    p.add_argument("--variants", default="fp32-state,bf16-state,split+bf16-state",
                   help="spilling variants: fp32-state, bf16-state, split, split+bf16-state")
    p.add_argument("--only", default=",".join(ORDER), help=f"measurements to run ({ORDER})")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="wall-clock budget for all measurements; later ones are skipped past it")
    p.add_argument("--timeouts", default="{}", help=f"JSON per-worker timeouts (default {TIMEOUTS})")
    p.add_argument("--sharp-models", type=int, default=3)
    p.add_argument("--sharp-overrides", default='{"n_layer": 16}')
    p.add_argument("--sharp-batch-size", type=int, default=4)
    p.add_argument("--sharp-steps", type=int, default=2)
    p.add_argument("--sharp-knobs", default='{"optimizer_state": "bf16"}')
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out-dir", default=None, help="also write the JSON and logs here ($OUT)")
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke run on gpt2-tiny; writes only under --out-dir (else a temp dir)")
    p.add_argument("--parity", action="store_true",
                   help="loss parity of the numerics-changing knobs (CPU, >= 200 steps)")
    p.add_argument("--parity-steps", type=int, default=200)
    p.add_argument("--host-optimizer", type=int, default=0, metavar="NUMEL",
                   help="time one host optimizer step over NUMEL parameters here (fp32 vs bf16 "
                        "state) and exit")
    p.add_argument("--from-json", default=None,
                   help="re-render BENCHMARKS.md's spilling section from this JSON and exit")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    try:
        for field in ("overrides", "timeouts", "sharp_overrides", "sharp_knobs"):
            json.loads(getattr(a, field))
    except json.JSONDecodeError as exc:
        p.error(f"--{field.replace('_', '-')}: not JSON ({exc})")
    bad = [w for w in a.only.split(",") if w and w not in ORDER]
    if bad:
        p.error(f"--only: unknown measurement(s) {bad}; allowed: {list(ORDER)}")
    if a.quick:
        a.device, a.model, a.overrides = "cpu", "gpt2-tiny", '{"n_layer": 4}'
        a.batch_size, a.seq_len, a.steps, a.warmup, a.cap_gb = 4, 32, 2, 1, 0.0
        a.sharp_models, a.sharp_overrides, a.sharp_batch_size = 2, '{"n_layer": 2}', 4
        a.precision = "bf16"  # the bf16-state knob needs it; CPU engines compute in fp32
    if a.device == "cuda" and not (a.parity or a.from_json or a.worker or a.host_optimizer):
        import torch

        if not torch.cuda.is_available():
            p.error("no CUDA device; use --quick (CPU smoke run) or --parity")
    return a


# ------------------------------------------------------------------------------ host bandwidth
def stream_triad(numel: int = 1 << 27, reps: int = 5) -> dict[str, Any]:
    """STREAM-style host memory bandwidth with torch on all cores: triad a = b + s*c (fp32),
    counted as STREAM counts it (3 arrays x 4 bytes per element), best of `reps`; copy too."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    b, c = torch.rand(numel), torch.rand(numel)
    a = torch.empty(numel)
    best_triad = best_copy = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        best_triad = min(best_triad, time.perf_counter() - t0)
        t0 = time.perf_counter()
        a.copy_(b)
        best_copy = min(best_copy, time.perf_counter() - t0)
    return {"status": "ok", "triad_gb_s": 3 * 4 * numel / best_triad / 1e9,
            "copy_gb_s": 2 * 4 * numel / best_copy / 1e9, "threads": torch.get_num_threads(),
            "array_mib": 4 * numel / 2**20}


def host_optimizer_cpu(numel: int) -> int:
    """`--host-optimizer`: one host optimizer step over `numel` parameters on this machine, as
    the engine runs it: fp32 state (torch fused AdamW + bf16 gradient upcast + wire refresh) vs
    bf16 state (FlatAdamW: compiled one-pass, and its eager fallback); each against the triad
    bandwidth. Writes benchmarks/spilling_host_cpu.json and its BENCHMARKS.md section."""
    import benchlib
    import torch
    from bench_spilling_workers import host_bytes_per_param

    from saturn.techniques.spilling.states import FlatAdamW, FlatSlot, warm_compiled_kernel

    bw = stream_triad(1 << 25)
    n = numel
    wire_grad = torch.randn(n).bfloat16()
    wire = torch.empty(n, dtype=torch.bfloat16)

    def best(fn: Any, reps: int = 3) -> float:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    master = torch.nn.Parameter(torch.randn(n))
    master.grad = torch.zeros(n)
    ref = {"p": master, "opt": torch.optim.AdamW([master], lr=1e-3, fused=True)}

    def fp32_step() -> None:
        ref["p"].grad.copy_(wire_grad)  # land_grads
        ref["opt"].step()
        wire.copy_(ref["p"].data)  # refresh_wire

    res: dict[str, Any] = {"fp32 state (fused AdamW + upcast + refresh)": (
        best(fp32_step), host_bytes_per_param("fp32", True))}
    ref.clear()  # its 4 x n fp32 go back before the next
    del master
    compiled = warm_compiled_kernel()
    for label, comp in (("bf16 state, compiled one pass", True), ("bf16 state, eager ops", False)):
        if comp and not compiled:
            res[label] = (None, host_bytes_per_param("bf16", True))
            continue
        q = torch.nn.Parameter(torch.randn(n))
        opt = FlatAdamW([q], [FlatSlot(q.data, wire_grad, wire, [0], [n], [q.shape])], "adamw",
                        {"lr": 1e-3}, "bf16", compiled=comp)
        res[label] = (best(opt.step, 2 if comp else 1), host_bytes_per_param("bf16", True))
    rows = {k: ({"s_per_step": t, "ns_per_param": t / n * 1e9, "bytes_per_param": b,
                 "gb_s": n * b / t / 1e9, "of_triad": n * b / t / 1e9 / bw["triad_gb_s"]}
                if t else {"status": "skipped", "reason": "torch.compile unavailable"})
            for k, (t, b) in res.items()}
    report = {"benchmark": "spilling_host_cpu", "numel": n, "threads": torch.get_num_threads(),
              "host_bandwidth": bw, "results": rows}
    lines = [f"One host optimizer step over {n / 1e6:.0f} M parameters, {report['threads']} "
             f"threads, measured (best of 3 timed steps for fp32, 2 for compiled, 1 for eager, after "
             f"one untimed; other work shares this machine). Triad bandwidth "
             f"{bw['triad_gb_s']:.1f} GB/s.", "",
             "| update | s/step | ns/param | bytes/param | GB/s | of triad |", "|---|---|---|---|---|---|"]
    for k, r in rows.items():
        lines.append(f"| {k} | " + (f"{r['s_per_step']:.3f} | {r['ns_per_param']:.2f} | "
                                     f"{r['bytes_per_param']} | {r['gb_s']:.1f} | "
                                     f"{r['of_triad']:.2f} |" if "s_per_step" in r
                                     else f"{r['status']}: {r['reason']} | | | | |"))
    md = "\n".join(lines) + "\n"
    print(md)
    path = benchlib.write_json("spilling_host_cpu", report)
    benchlib.write_section("spilling_host_cpu", "Spilling: the host optimizer step on this CPU", md)
    print(f"wrote {path} and the spilling_host_cpu section of BENCHMARKS.md")
    return 0


# ------------------------------------------------------------------------------ orchestration
def variants(a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    budget = {"gpu_budget_gb": round(0.9 * a.cap_gb, 2)} if a.cap_gb else {"shard_layers": 1}
    table = {"fp32-state": {}, "bf16-state": {"optimizer_state": "bf16"},
             "split": {"gpu_state_fraction": a.split_fraction},
             "split+bf16-state": {"gpu_state_fraction": a.split_fraction,
                                  "optimizer_state": "bf16"}}
    out = {}
    for name in a.variants.split(","):
        if name not in table:
            raise SystemExit(f"--variants: unknown variant {name!r}; allowed: {list(table)}")
        if a.precision == "fp32" and "bf16" in name:
            continue  # precision fp32 forbids bf16 optimizer state
        out[name] = {**budget, **table[name]}
    return out


def run_worker(name: str, spec: dict[str, Any], timeout: float, log_dir: str) -> dict[str, Any]:
    """Run one worker in its own process group; on timeout SIGTERM then SIGKILL the group.
    Returns its (possibly partial) result with status, wall time and log path."""
    fd, spec_path = tempfile.mkstemp(prefix=f"spill-{name}-", suffix=".json")
    os.close(fd)
    spec = {**spec, "result": spec_path + ".result"}
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    log = os.path.join(log_dir, f"{name}.log")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if name == "deepspeed":
        env["TORCH_CUDA_ARCH_LIST"] = "9.0"  # DeepSpeed's JIT parser fails on "9.0a"
    t0 = time.perf_counter()
    status, reason, rc = "ok", "", None
    with open(log, "w") as lf:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", name,
                                 "--spec", spec_path], stdout=lf, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            if rc != 0:
                status, reason = "failed", f"worker exited with status {rc} (see {log})"
        except subprocess.TimeoutExpired:
            status, reason = "timeout", f"killed after its {timeout:.0f} s timeout (see {log})"
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=15)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
    out: dict[str, Any] = {}
    try:
        with open(spec["result"]) as f:
            out = json.load(f)
    except (OSError, json.JSONDecodeError):
        pass
    for path in (spec_path, spec["result"]):
        try:
            os.remove(path)
        except OSError:
            pass
    if status == "ok" and not out.get("done"):
        status, reason = "failed", f"worker ended without finishing (see {log})"
    out.update(status=status, wall_s=round(time.perf_counter() - t0, 1), log=log,
               returncode=rc)  # typed: -9 = killed by SIGKILL (bench_giant tells a host OOM from it)
    if reason:
        out["reason"] = reason
    return out


def main_run(a: argparse.Namespace) -> int:
    import benchlib
    from bench_spilling_report import markdown, summarize

    out_dir = a.out_dir
    if a.quick and not out_dir:
        out_dir = tempfile.mkdtemp(prefix="bench-spilling-quick-")
    bench_dir = out_dir if a.quick else os.path.join(ROOT, "benchmarks")
    log_dir = os.path.join(out_dir or bench_dir, "spilling-logs")
    os.makedirs(log_dir, exist_ok=True)
    timeouts = {**TIMEOUTS, **json.loads(a.timeouts)}
    if a.quick:
        timeouts = {k: 300 for k in timeouts} | json.loads(a.timeouts)
    spec = {"model": a.model, "overrides": json.loads(a.overrides), "batch_size": a.batch_size,
            "seq_len": a.seq_len, "precision": a.precision, "steps": a.steps, "warmup": a.warmup,
            "cap_gb": a.cap_gb or None, "device": a.device, "variants": variants(a),
            "sharp_models": a.sharp_models, "sharp_overrides": json.loads(a.sharp_overrides),
            "sharp_batch_size": a.sharp_batch_size, "sharp_steps": a.sharp_steps,
            "sharp_knobs": json.loads(a.sharp_knobs)}
    report: dict[str, Any] = {"benchmark": "spilling", **benchlib.stamp(),
                              "config": {**spec, "budget_s": a.budget_s, "timeouts": timeouts,
                                         "cpu_count": os.cpu_count()},
                              "results": {}}

    def save() -> None:
        try:
            report["summary"] = summarize(report)
        except Exception as exc:  # noqa: BLE001 -- never lose measured results to a report bug
            report["summary"] = {"error": f"{type(exc).__name__}: {exc}"}
        text = json.dumps(report, indent=2, default=str) + "\n"
        for d in {bench_dir, out_dir} - {None}:
            benchlib.atomic_write(os.path.join(str(d), "spilling.json"), text)

    def say(msg: str) -> None:
        print(msg, flush=True)
        with open(os.path.join(log_dir, "bench.log"), "a") as f:
            f.write(msg + "\n")

    t_start = time.perf_counter()
    say(f"{benchlib.command()} -- {benchlib.machine()}")
    report["results"]["host_bandwidth"] = stream_triad(1 << (22 if a.quick else 27))
    say(f"host bandwidth: {json.dumps(report['results']['host_bandwidth'])}")
    save()
    for name in [w for w in ORDER if w in a.only.split(",")]:
        left = a.budget_s - (time.perf_counter() - t_start)
        if name in NEEDS_CUDA and a.device != "cuda":
            report["results"][name] = {"status": "skipped", "reason": "needs CUDA"}
        elif left < 20:
            report["results"][name] = {"status": "skipped",
                                       "reason": f"benchmark time budget ({a.budget_s:.0f} s) spent"}
        else:
            sub = {**spec, "batch_size": a.sharp_batch_size} if name == "sharp" else spec
            say(f"=== {name} (timeout {min(timeouts[name], left):.0f} s)")
            report["results"][name] = run_worker(name, sub, min(timeouts[name], left), log_dir)
            r = report["results"][name]
            say(f"    {name}: {r.get('status')} in {r.get('wall_s')} s {r.get('reason', '')}")
        save()
    report["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    save()
    md = markdown(report)
    say(md)
    if a.quick:
        print(f"--quick: wrote {out_dir}/spilling.json (BENCHMARKS.md untouched)")
        return 0
    benchlib.write_section("spilling", title(report), md, recorded=report)
    print(f"wrote benchmarks/spilling.json{' and ' + out_dir if out_dir else ''}, logs in "
          f"{log_dir}, and the spilling section of BENCHMARKS.md")
    return 0


def title(report: dict[str, Any]) -> str:
    c = report["config"]
    return f"Model spilling at its floor, vs DeepSpeed / FSDP2 offload ({c['model']}, one GPU)"


def main(argv: Optional[list[str]] = None) -> int:
    a = parse(argv)
    if a.worker:
        import bench_spilling_workers

        return bench_spilling_workers.main(a.worker, a.spec)
    if a.from_json:
        import benchlib
        from bench_spilling_report import markdown, summarize

        try:
            with open(a.from_json) as f:
                report = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            print(f"error: --from-json {a.from_json}: {exc}", file=sys.stderr)
            return 2
        report["summary"] = summarize(report)
        benchlib.write_section("spilling", title(report), markdown(report), recorded=report)
        print(markdown(report))
        print("rewrote the spilling section of BENCHMARKS.md")
        return 0
    if a.host_optimizer:
        return host_optimizer_cpu(a.host_optimizer)
    if a.parity:
        import bench_spilling_parity

        return bench_spilling_parity.main(a.parity_steps)
    return main_run(a)


if __name__ == "__main__":
    sys.exit(main())
