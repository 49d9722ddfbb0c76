#!/usr/bin/env python
"""Generate the SAMPLE profile tables shipped in profiles/ (not measurements!).

Until `saturn profile` has been run on real hardware, `saturn plan configs/examples/*.yaml` needs
some profile rows. This script extrapolates them from the few step times measured on 4xH200 and
published in the SPASE paper (350M GPT, 8 samples/GPU, seq 512: 1 GPU 0.048 s; DDPx4 0.074 s for 4x the
samples; FSDP2x2 0.16 s; FSDP2x4 0.19 s; ZeRO-3x4 0.43 s; 2-stage pipeline 0.13 s; an offloaded
200M model 0.53 s), scaled by parameter count and tokens per step, with a rough memory model
(16 bytes/parameter for AdamW training + activations) deciding feasibility. Every row says
source = "sample: extrapolated from the SPASE paper's published 4xH200 step times, not measured".

    python scripts/make_sample_profiles.py            # rewrites profiles/sample-*.csv

Where measured rows exist (profiles/profiles.csv, written by `saturn profile`), the samples are
anchored to them: every sample row of a (signature, GPU type) is scaled by measured / sample
1-GPU DDP step time, and the store prefers any measured row over a sample for the same option.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path

import pandas as pd

from saturn.profiles.store import COLUMNS
from saturn.spec import load_workload
from saturn.zoo.models import param_count

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "sample: extrapolated from the SPASE paper's published 4xH200 step times, not measured"
REF_PARAMS, REF_TOKENS, REF_STEP = 350e6, 8 * 512, 0.048  # SPASE paper: 1 GPU, 350M GPT


def _layers_width(job) -> tuple[int, int]:
    from saturn.zoo.models import model_config

    cfg = model_config(job.model.name, job.model.overrides)
    return int(getattr(cfg, "n_layer", 12)), int(getattr(cfg, "n_embd", 768))


def _rows_for(job, gpu_type: str, mem_gb: float, counts) -> list[dict]:
    P = float(param_count(job.model) or 1e6)
    tokens = job.batch_size * job.seq_len
    t1 = REF_STEP * (P / REF_PARAMS) * (tokens / REF_TOKENS)
    if gpu_type == "cpu":
        t1 = max(0.01, 300 * t1)
    layers, width = _layers_width(job)
    act_gb = lambda samples: samples * job.seq_len * layers * width * 34 / 1e9  # noqa: E731
    small = (REF_PARAMS / P) ** 0.5  # communication matters less for bigger models
    budget = 0.9 * mem_gb
    rows = []

    def add(tech, g, knobs, step, mem, startup):
        ok = mem <= budget
        rows.append(dict(signature=job.signature, technique=tech, knobs=knobs, gpus=g,
                         step_time_s=round(step, 5) if ok else None, peak_mem_gb=round(mem, 2),
                         startup_s=round(startup, 1), feasible=ok, reason="" if ok else "OOM (estimated)",
                         gpu_type=gpu_type, gpu_memory_gb=mem_gb, torch_version="", source=SOURCE,
                         measured_at=""))

    load_s = 10 + P / 1e9 * 5
    for g in counts:
        b = job.batch_size / g
        eff = 0.806 ** math.log2(g)  # DDPx4: 2.6x speed-up at 350M
        add("ddp", g, '{"activation_checkpointing": false}', t1 / g / eff, 16 * P / 1e9 + act_gb(b),
            load_s + 5 * (g > 1))
        if g > 1:
            over = 1 + {2: 2.33, 4: 2.96}.get(g, 3.5) * small  # FSDP2x2 0.16 s, x4 0.19 s at 350M
            add("fsdp", g, '{"activation_checkpointing": false, "reshard_after_forward": true}',
                t1 / g * over, 16 * P / g / 1e9 + act_gb(b), load_s + 10)
            add("zero", g, '{"stage": 3}', t1 / g * (1 + 7.96 * small), 16 * P / g / 1e9 + act_gb(b), load_s + 20)
            add("pipeline", g, '{"n_microbatches": 4, "schedule": "1f1b"}', t1 * 2 / g * (1 + 1.7 * small),
                16 * P / g / 1e9 + act_gb(job.batch_size) / 2, load_s + 8)
        else:
            spill = t1 + 6 * P / 40e9 + 12 * P / 30e9  # 3 bf16 crossings of the host link + CPU Adam
            add("spilling", 1, '{"prefetch": 1}', spill, act_gb(job.batch_size) + 2 * 2 * P / layers / 1e9, load_s + 20)
    return rows


def _anchor(rows: dict, measured: pd.DataFrame) -> None:
    """Scale each (signature, GPU type)'s sample step times by its measured 1-GPU DDP speed."""
    if measured.empty:
        return
    ok = measured[(measured["feasible"]) & (measured["technique"] == "ddp") & (measured["gpus"] == 1)]
    real = {(s, str(t).lower()): v for s, t, v in ok.groupby(["signature", "gpu_type"])["step_time_s"]
            .min().reset_index().itertuples(index=False)}
    for gtype, table in rows.items():
        for sig in {k[0] for k in table}:
            sample = table.get((sig, "ddp", 1))
            if (sig, gtype) in real and sample and sample["step_time_s"]:
                ratio = real[(sig, gtype)] / sample["step_time_s"]
                for key, r in table.items():
                    if key[0] == sig and r["step_time_s"]:
                        r["step_time_s"] = round(r["step_time_s"] * ratio, 5)


def main() -> None:
    from saturn.profiles.store import load_store

    per_type: dict[str, dict[str, dict]] = {}
    for path in sorted(glob.glob(str(ROOT / "configs/examples/*.yaml"))):
        wl = load_workload(path)
        if wl.cluster.ray is not None:  # nodes come from a live Ray cluster; not plannable offline
            continue
        nodes = wl.cluster.resolved().nodes
        for job in wl.jobs:
            for n in nodes:
                counts = [1, 2, 4, 8] if n.gpu_type != "cpu" else [1, 2]
                for r in _rows_for(job, n.gpu_type, n.gpu_memory_gb, counts):
                    per_type.setdefault(n.gpu_type.lower(), {})[(r["signature"], r["technique"], r["gpus"])] = r
    store = load_store(ROOT / "profiles")
    _anchor(per_type, store[~store["source"].astype(str).str.startswith("sample")])
    for gtype, rows in per_type.items():
        df = pd.DataFrame(list(rows.values()))[list(COLUMNS)]
        out = ROOT / "profiles" / f"sample-{gtype}.csv"
        with open(out, "w") as f:
            f.write(f"# {SOURCE}; step times anchored to measured 1-GPU DDP rows where there "
                    "are any. Generated by scripts/make_sample_profiles.py; replaced, option by "
                    "option, by `saturn profile` output.\n")
            df.to_csv(f, index=False)
        print(f"wrote {len(df)} rows to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
