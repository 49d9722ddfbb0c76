"""Loss parity of each `numerics` setting against plain fp32 AdamW (issue 33), on CPU.

`numerics: exact` (the default) promises what a plain AdamW loop computes: fp32 master weights
and fp32 moments. `numerics: low-memory` lets Saturn round optimizer state. This trains the same
seeded small GPT on the same batches for >= 500 steps under:

* the reference: a plain torch loop with `torch.optim.AdamW` (fp32 everything);
* exact: spilling with fp32 state (the default knobs; must match the reference to rounding);
* low-memory: spilling with `optimizer_state: bf16` (bf16 moments, dithered rounding, fp32
  masters: Saturn's own kernel, `saturn.techniques.spilling.states`);
* low-memory candidate: torchao's `AdamW8bit` (8-bit block-quantized moments) in the plain loop,
  when torchao is importable (it is not a Saturn dependency; the result says why when absent).

Compute is fp32 on CPU, so the curves differ only by the optimizer. Reported per setting: max
|loss diff| per step, max |diff| of the 20-step moving average, mean |diff| over the last 50
steps, final losses; the reference's own noise (std over its last 50 steps) gives the scale.
Writes benchmarks/numerics_parity.json after every setting and the `numerics_parity` section of
BENCHMARKS.md at the end.

    python scripts/bench_numerics.py [--steps 500] [--budget-s 1800]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_spilling_parity  # noqa: E402
import benchlib  # noqa: E402
from bench_spilling_parity import MODEL, curve, smooth  # noqa: E402

BATCH, SEQ, LR, WD = 8, 32, 1e-3, 0.01


def _job(steps: int) -> Any:
    from saturn.spec.schema import Job

    return Job(name="parity", model=bench_spilling_parity.MODEL, data="synthetic-tokens", batch_size=BATCH,
               seq_len=SEQ, steps=steps, precision="bf16", optimizer={"name": "adamw", "lr": LR, "weight_decay": WD})


def plain_curve(make_optimizer: Callable[[Any], Any], steps: int) -> list[float]:
    """The reference loop: the same seeded model and batches as bench_spilling_parity.curve."""
    import torch

    from saturn.training import loop as training
    from saturn.zoo.data import batch_for_step

    job = _job(steps)
    torch.manual_seed(0)
    model = training.build_model(job)
    ds = training.build_dataset(job, model)
    opt = make_optimizer(model.parameters())
    losses = []
    for s in range(steps):
        x, y = batch_for_step(ds, s, job.batch_size)
        loss = model.loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def adamw8bit() -> Callable[[Any], Any]:
    """torchao's AdamW8bit (raises ImportError when torchao is not installed)."""
    from torchao.optim import AdamW8bit

    return lambda params: AdamW8bit(params, lr=LR, weight_decay=WD)


def settings() -> dict[str, tuple[str, Callable[[int], list[float]]]]:
    import torch

    return {
        "fp32 AdamW (reference)": ("exact", lambda n: plain_curve(
            lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD), n)),
        "spilling, fp32 state": ("exact", lambda n: curve({}, n, BATCH, SEQ)[0]),
        "spilling, bf16 moments": ("low-memory", lambda n: curve({"optimizer_state": "bf16"}, n, BATCH, SEQ)[0]),
        "torchao AdamW8bit": ("low-memory (not offered by Saturn)", lambda n: plain_curve(adamw8bit(), n)),
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--budget-s", type=float, default=1800.0, help="skip settings that would start after this")
    p.add_argument("--overrides", default=None,
                   help=f"JSON architecture overrides of {MODEL['name']} (default {json.dumps(MODEL['overrides'])})")
    a = p.parse_args(argv)
    if a.steps < 500:
        p.error("--steps must be >= 500 (the documented check)")
    if a.overrides is not None:
        try:
            bench_spilling_parity.MODEL = {"name": MODEL["name"], "overrides": json.loads(a.overrides)}
        except json.JSONDecodeError as exc:
            p.error(f"--overrides: not JSON ({exc})")
    torch.set_num_threads(1)  # tiny matmuls: one thread is as fast, and steadier on a shared host
    t_start = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "numerics_parity", **benchlib.stamp(), "model": bench_spilling_parity.MODEL,
                              "steps": a.steps, "batch_size": BATCH, "seq_len": SEQ,
                              "optimizer": f"adamw lr {LR} wd {WD}", "results": {}}
    ref: list[float] = []
    for name, (numerics, run) in settings().items():
        r: dict[str, Any] = {"numerics": numerics}
        if time.perf_counter() - t_start > a.budget_s:
            r["status"] = f"skipped: --budget-s {a.budget_s:g} spent"
        else:
            t0 = time.perf_counter()
            try:
                losses = run(a.steps)
            except ImportError as exc:  # torchao absent: say so, never a failure
                r["status"] = f"unavailable: {exc}"
            else:
                r.update(status="ok", losses=losses, wall_s=round(time.perf_counter() - t0, 1),
                         first_loss=losses[0], final_loss_mean_last20=statistics.fmean(losses[-20:]))
                if not ref:
                    ref = losses
                    r["noise_std_last50"] = statistics.pstdev(losses[-50:])
                else:
                    d = [abs(x - y) for x, y in zip(losses, ref)]
                    ds = [abs(x - y) for x, y in zip(smooth(losses), smooth(ref))]
                    r.update(max_abs_diff=max(d), max_abs_diff_smoothed20=max(ds),
                             mean_abs_diff_last50=statistics.fmean(d[-50:]))
        report["results"][name] = r
        print(name, {k: v for k, v in r.items() if k != "losses"}, flush=True)
        benchlib.write_json("numerics_parity", report)  # incrementally
    md = markdown(report)
    benchlib.write_section("numerics_parity", "Numerics: loss parity of exact and low-memory against fp32 AdamW", md)
    print(md)
    return 0


def markdown(r: dict[str, Any]) -> str:
    res = r["results"]
    ref = next(iter(res.values()))
    m = r["model"]
    lines = [f"{m['name']} {m['overrides']}, batch {r['batch_size']} x seq {r['seq_len']}, {r['optimizer']}, "
             f"{r['steps']} steps, same seed and batches, fp32 compute on CPU (only the optimizer differs). "
             f"Measured. Scale: the reference's own loss noise (std over its last 50 steps) is "
             f"{ref.get('noise_std_last50', float('nan')):.4f}.", "",
             "| setting | numerics | first loss | mean loss, last 20 | max abs diff | max abs diff, 20-step mean "
             "| mean abs diff, last 50 |", "|---|---|---|---|---|---|---|"]
    for name, x in res.items():
        if x.get("status") != "ok":
            lines.append(f"| {name} | {x['numerics']} | {x['status']} | | | | |")
            continue
        lines.append(f"| {name} | {x['numerics']} | {x['first_loss']:.4f} | {x['final_loss_mean_last20']:.4f} | "
                     f"{x.get('max_abs_diff', 0):.4f} | {x.get('max_abs_diff_smoothed20', 0):.4f} | "
                     f"{x.get('mean_abs_diff_last50', 0):.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
