"""Loss parity of spilling's numerics-changing knobs (`bench_spilling.py --parity`, CPU).

Trains the same seeded small GPT (gpt2-tiny with 4 layers, d=256) for N >= 200 steps on the
same batches with spilling under each setting and compares the loss curves against fp32
optimizer state, the reference:

* `optimizer_state: bf16` (bf16 moments, stochastic rounding; the one knob that changes the
  numbers by design);
* `gpu_state_fraction` (the split optimizer; on CPU slots the "device" shards step with torch's
  fused AdamW next to the host ones, so the difference must be at rounding level), alone and
  with bf16 state.

The job is `precision: bf16` (the precision that allows the bf16-state knob); on CPU slots the
engine computes in fp32, so the only difference between the curves is the optimizer state.
Reported per setting: max |loss diff| per step, max |diff| of the 20-step moving average, mean
|diff| over the last 50 steps, final losses, and the reference's own step-to-step noise (std of
its loss over the last 50 steps) for scale. Writes benchmarks/spilling_parity.json and the
`spilling_parity` section of BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

SETTINGS = {"fp32-state (reference)": {},
            "bf16-state": {"optimizer_state": "bf16"},
            "split 0.5": {"gpu_state_fraction": 0.5},
            "split 0.5 + bf16-state": {"gpu_state_fraction": 0.5, "optimizer_state": "bf16"}}
MODEL = {"name": "gpt2-tiny", "overrides": {"n_layer": 4, "n_embd": 256, "n_head": 4}}


def curve(knobs: dict[str, Any], steps: int, batch_size: int = 16, seq_len: int = 64) -> tuple[list[float], list[int]]:
    import torch

    from saturn.spec.schema import Job
    from saturn.techniques.spilling import SpillingEngine, engine_kwargs
    from saturn.training import loop
    from saturn.zoo.data import batch_for_step

    job = Job(name="parity", model=MODEL, data="synthetic-tokens", batch_size=batch_size, seq_len=seq_len,
              steps=steps, precision="bf16",
              optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.01})
    torch.manual_seed(0)
    model = loop.build_model(job)
    # shard_layers 1 with a budget that holds about half of the model's state on the "device"
    n = sum(p.numel() for p in model.parameters())
    kw = engine_kwargs(job, {"shard_layers": 1, "gpu_budget_gb": n * 16 / 2**30, **knobs})
    eng = SpillingEngine(model, "cpu", **kw)
    ds = loop.build_dataset(job, model)
    losses = [eng.train_step(*batch_for_step(ds, s, job.batch_size)) for s in range(steps)]
    eng.close()
    return losses, list(eng.device_shards)


def smooth(xs: list[float], w: int = 20) -> list[float]:
    return [statistics.fmean(xs[max(0, i - w + 1):i + 1]) for i in range(len(xs))]


def main(steps: int = 200) -> int:
    import torch

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import benchlib

    if steps < 200:
        print("error: --parity-steps must be >= 200 (the documented check)", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    out: dict[str, Any] = {}
    ref: list[float] = []
    for name, knobs in SETTINGS.items():
        t0 = time.perf_counter()
        losses, on_dev = curve(knobs, steps)
        r: dict[str, Any] = {"knobs": knobs, "device_shards": on_dev, "losses": losses,
                             "wall_s": round(time.perf_counter() - t0, 1)}
        if not ref:
            ref = losses
            r["noise_std_last50"] = statistics.pstdev(losses[-50:])
        else:
            d = [abs(a - b) for a, b in zip(losses, ref)]
            ds = [abs(a - b) for a, b in zip(smooth(losses), smooth(ref))]
            r.update(max_abs_diff=max(d), max_abs_diff_smoothed20=max(ds),
                     mean_abs_diff_last50=statistics.fmean(d[-50:]))
        r.update(first_loss=losses[0], final_loss_mean_last20=statistics.fmean(losses[-20:]))
        out[name] = r
        print(f"{name}: {json.dumps({k: v for k, v in r.items() if k != 'losses'})}", flush=True)
    report = {"benchmark": "spilling_parity", "model": MODEL, "steps": steps,
              "batch_size": 16, "seq_len": 64, "optimizer": "adamw lr 1e-3 wd 0.01",
              "results": out}
    path = benchlib.write_json("spilling_parity", report)
    md = markdown(report)
    benchlib.write_section("spilling_parity", "Spilling: loss parity of the optimizer-state knobs", md)
    print(md)
    print(f"wrote {path} and the spilling_parity section of BENCHMARKS.md")
    return 0


def markdown(r: dict[str, Any]) -> str:
    res = r["results"]
    ref = next(iter(res.values()))
    m = r["model"]
    lines = [f"{m['name']} {m['overrides']}, batch {r['batch_size']} x seq {r['seq_len']}, "
             f"{r['optimizer']}, {r['steps']} steps, same seed and batches, spilling with one "
             f"layer per shard on CPU (fp32 compute, so only the optimizer state differs). "
             f"Measured. For scale: the reference's own loss noise (std over its last 50 steps) "
             f"is {ref['noise_std_last50']:.4f}.", "",
             "| setting | shards on the \"GPU\" | first loss | mean loss, last 20 | max abs diff | "
             "max abs diff, 20-step mean | mean abs diff, last 50 |", "|---|---|---|---|---|---|---|"]
    for name, x in res.items():
        lines.append(f"| {name} | {len(x['device_shards'])} | {x['first_loss']:.4f} | "
                     f"{x['final_loss_mean_last20']:.4f} | {x.get('max_abs_diff', 0):.4f} | "
                     f"{x.get('max_abs_diff_smoothed20', 0):.4f} | "
                     f"{x.get('mean_abs_diff_last50', 0):.4f} |")
    return "\n".join(lines) + "\n"
