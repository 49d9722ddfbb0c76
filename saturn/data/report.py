"""What a run directory says about input pipelines: data-wait per job and the tuner's decisions.

Read from the files the job writes into its directory (RUN/jobs/JOB/): `metrics.jsonl` (one line
per step with `step_time_s` and `data_wait_s`, see saturn.training.loop) and
`data_tuner.jsonl` (one line per tuner decision, see saturn.data.tuner). `saturn report` prints it;
the goodput breakdown can take `data_wait_s` as the data-wait phase.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saturn.data.tuner import LOG_FILE, summarize_log
from saturn.parse import jsonl_records, num


def data_wait(metrics_path: str | Path) -> dict[str, float] | None:
    """Total step time and data-wait seconds over the steps logged (torn lines skipped)."""
    step = wait = 0.0
    n = 0
    recs, _ = jsonl_records(metrics_path)  # undecodable lines skipped (the run's summary warns)
    for r in recs:
        st, w = num(r.get("step_time_s"), math.nan), num(r.get("data_wait_s"), math.nan)
        if math.isfinite(st) and math.isfinite(w):
            step += st
            wait += w
            n += 1
    if not n:
        return None
    return {"steps": n, "step_time_s": step, "data_wait_s": wait, "data_wait_frac": wait / step if step > 0 else 0.0}


def data_summary(run_dir: str | Path) -> dict[str, Any]:
    """job -> {"wait": data_wait(...), "tuner": summarize_log(...)} for jobs that have either."""
    out: dict[str, Any] = {}
    jobs = Path(run_dir) / "jobs"
    if not jobs.is_dir():
        return out
    for d in sorted(p for p in jobs.iterdir() if p.is_dir()):
        wait, tuner = data_wait(d / "metrics.jsonl"), summarize_log(d / LOG_FILE)
        if wait or tuner:
            out[d.name] = {"wait": wait, "tuner": tuner}
    return out


def format_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for job, s in summary.items():
        parts = []
        if s.get("wait"):
            w = s["wait"]
            parts.append(f"data wait {100 * w['data_wait_frac']:.1f}% of step time ({w['data_wait_s']:.1f}s "
                         f"over {w['steps']} steps, measured)")
        if s.get("tuner"):
            t = s["tuner"]
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(t["by_action"].items()))
            cores = ", ".join(f"{k} {v:.2f}" for k, v in t.get("cores", {}).items())
            parts.append(f"tuner: {t['decisions']} decisions ({kinds}), {t.get('moves', 0)} core moves kept; "
                         f"now workers {t['workers']}, prefetch {t['prefetch']}, "
                         f"{t['throughput_samples_s']:.0f} samples/s"
                         + (f"; cores held per stage {cores} (measured)" if cores else ""))
        lines.append(f"{job}: " + "; ".join(parts))
    return lines
