#!/usr/bin/env python
"""How good is the prior? Its step-time error and option ranking against measured rows.

Probes this machine (`saturn.prior.machine.probe`; a GPU type that is not here gets its
datasheet figures, labelled), then estimates every measured, successful row of the profile tables
(default: the repository's `profiles/profiles.csv`, plus every `--table`) and reports:

* median |error| of step time (target <= 25%), uncalibrated and leave-one-out calibrated: the row
  being predicted is never part of its own calibration (the other rows give the anchor to the same
  model's rows of the same technique, same knobs first, else the per-(technique, device) median
  factor, exactly as `saturn.prior` uses them);
* pairwise ranking accuracy: over every pair of one job's options (same signature and GPU type)
  with different measured step times, how often the estimates order them the same way;
* median |error| of peak memory, where the row has one.

Writes benchmarks/prior.json (or --out) and the `prior` section of BENCHMARKS.md. No network.

    python scripts/bench_prior.py                                  # the shipped H200 rows
    python scripts/bench_prior.py --table STORE/profiles.csv --workload W.yaml --out benchmarks/prior.json

Rows a run measured in its own steps (`source` run:...) carry no model column: give the workload
(`--workload`) so their signatures can be shaped; rows that cannot be shaped are counted and left out.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import benchlib  # noqa: E402

from saturn.parse import num  # noqa: E402
from saturn.prior.calibration import anchor, calibration_ratios, measured_ok  # noqa: E402
from saturn.prior.cost_model import Calibration, MachineRates, datasheet_rates, estimate  # noqa: E402
from saturn.prior.shapes import row_shape  # noqa: E402
from saturn.profiles.store import read_table  # noqa: E402

DEFAULT_TABLE = ROOT / "profiles" / "profiles.csv"
KEY = ("signature", "technique", "knobs", "gpus", "gpu_type", "gpu_memory_gb", "torch_version")


def measured_rows(tables: list[Path]) -> list[dict[str, Any]]:
    """Measured rows with a step time, de-duplicated on the store key (later tables win)."""
    rows: dict[tuple, dict] = {}
    for path in tables:
        for r in read_table(path).to_dict("records"):
            if measured_ok(r):
                r["table"] = str(path)
                rows[tuple(str(r.get(k)) for k in KEY)] = r
    return list(rows.values())


def rates_by_type(types: set[str], store: Path) -> dict[str, MachineRates]:
    """Probed rates for the GPU type this machine has (cached in `store`), datasheet otherwise."""
    from saturn.prior.machine import load_or_probe
    from saturn.profiler.hardware import local_hardware

    out: dict[str, MachineRates] = {}
    here = local_hardware()
    for t in sorted(types):
        if t.lower() == here.gpu_type.lower():
            out[t] = load_or_probe(here, store, cpu_threads=None)
        else:
            out[t] = datasheet_rates(t)
    return out


def _knobs(r: dict) -> dict:
    import json

    from saturn.parse import canonical_knobs

    return json.loads(canonical_knobs(r.get("knobs")))


def evaluate(rows: list[dict[str, Any]], rates: dict[str, MachineRates],
             shapes: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Per-row estimates (uncalibrated, leave-one-out calibrated) and the summary figures.
    `shapes`: signature -> ModelShape for rows that do not name their model (in-run rows)."""
    shapes = shapes or {}
    shaped = [(r, s) for r in rows if (s := row_shape(r, shapes)) is not None]
    out = []
    for i, (r, shape) in enumerate(shaped):
        kind = str(r["gpu_type"])
        rt = rates[kind]
        mem = num(r.get("gpu_memory_gb"), 1e9)
        raw = estimate(shape, str(r["technique"]), _knobs(r), int(r["gpus"]), rt, mem)
        others = [o for j, (o, _) in enumerate(shaped) if j != i]
        calib = Calibration.fit((t, k, x) for t, k, x, _ in calibration_ratios(others, shapes, lambda t: rates[t]))
        f_anchor = (anchor(others, str(r["signature"]), str(r["technique"]), kind, shape, rt, _knobs(r))
                    or anchor(others, str(r["signature"]), str(r["technique"]), kind, shape, rt))
        f_calib = calib.factor(str(r["technique"]), kind)
        f, why = f_anchor or f_calib
        meas = float(r["step_time_s"])
        out.append({"model": shape.label, "batch_size": shape.batch_size, "seq_len": shape.tokens_per_sample,
                    "technique": r["technique"], "knobs": r.get("knobs"), "gpus": int(r["gpus"]),
                    "gpu_type": kind, "signature": r["signature"], "measured_s": meas,
                    "uncalibrated_s": raw.step_time_s,
                    "loo_s": estimate(shape, str(r["technique"]), _knobs(r), int(r["gpus"]), rt, mem, f,
                                      calib.compute_factor(kind)).step_time_s,
                    "loo_technique_device_s": raw.step_time_s * f_calib[0], "loo_factor": f, "loo_basis": why,
                    "measured_mem_gb": num(r.get("peak_mem_gb"), math.nan), "estimated_mem_gb": raw.peak_mem_gb,
                    "table": r.get("table")})

    def med_err(col: str) -> Optional[float]:
        errs = [abs(x[col] - x["measured_s"]) / x["measured_s"] for x in out]
        return statistics.median(errs) if errs else None

    def ranking(col: str) -> tuple[Optional[float], int]:
        right = total = 0
        groups: dict[tuple, list[dict]] = {}
        for x in out:
            groups.setdefault((x["signature"], x["gpu_type"]), []).append(x)
        for opts in groups.values():
            for a, b in itertools.combinations(opts, 2):
                if a["measured_s"] == b["measured_s"]:
                    continue
                total += 1
                right += (a[col] < b[col]) == (a["measured_s"] < b["measured_s"])
        return (right / total if total else None), total

    mem_errs = [abs(x["estimated_mem_gb"] - x["measured_mem_gb"]) / x["measured_mem_gb"] for x in out
                if x["measured_mem_gb"] > 0]
    summary = {"rows": len(out), "skipped_unshaped": len(rows) - len(shaped),
               "median_abs_err_uncalibrated": med_err("uncalibrated_s"),
               "median_abs_err_loo": med_err("loo_s"),
               "median_abs_err_loo_technique_device_only": med_err("loo_technique_device_s"),
               "ranking_uncalibrated": ranking("uncalibrated_s")[0], "ranking_loo": ranking("loo_s")[0],
               "ranking_pairs": ranking("loo_s")[1],
               "median_abs_err_peak_mem": statistics.median(mem_errs) if mem_errs else None,
               "target_median_abs_err": 0.25}
    return {"summary": summary, "rows": out}


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def section(result: dict[str, Any], rates: dict[str, MachineRates], tables: list[Path]) -> str:
    s = result["summary"]
    ok = s["median_abs_err_loo"] is not None and s["median_abs_err_loo"] <= s["target_median_abs_err"]
    lines = [
        "The prior cost model (`saturn/prior/cost_model.py`) against measured profile rows "
        f"({', '.join(str(Path(t).relative_to(ROOT)) if Path(t).is_relative_to(ROOT) else str(t) for t in tables)}). "
        "Leave-one-out: each row's calibration (the anchor to the same model's rows of that technique, "
        "same knobs first, else the per technique × device median) comes from the other rows only. "
        "The prior's structural constants (saturn/prior/cost_model.py) were chosen while looking at the "
        "shipped H200 rows, so for those rows the uncalibrated figure is in-sample.",
        "",
        "Machine rates used: " + "; ".join(f"{t}: {r.source}" for t, r in rates.items())
        + (" — **no GPU of that type here: datasheet figures, not probed**"
           if any(r.source.startswith("datasheet") for r in rates.values()) else "") + ".",
        "",
        f"- rows: {s['rows']} measured ({s['skipped_unshaped']} without a zoo model left out)",
        f"- median |error| of step time, leave-one-out calibrated: **{_pct(s['median_abs_err_loo'])}** "
        f"(target ≤ 25%: {'met' if ok else 'missed'}); per technique × device only: "
        f"{_pct(s['median_abs_err_loo_technique_device_only'])}; uncalibrated: "
        f"{_pct(s['median_abs_err_uncalibrated'])}",
        f"- pairwise ranking of a job's options ({s['ranking_pairs']} pairs): leave-one-out "
        f"**{_pct(s['ranking_loo'])}**, uncalibrated {_pct(s['ranking_uncalibrated'])}",
        f"- median |error| of peak memory (uncalibrated): {_pct(s['median_abs_err_peak_mem'])}",
        "",
        benchlib.md_table([{**r, "err_loo": f"{100 * (r['loo_s'] / r['measured_s'] - 1):+.0f}%",
                            "err_raw": f"{100 * (r['uncalibrated_s'] / r['measured_s'] - 1):+.0f}%"}
                           for r in result["rows"]],
                          ["model", "technique", "knobs", "gpus", "gpu_type", "measured_s", "uncalibrated_s", "err_raw",
                           "loo_s", "err_loo", "measured_mem_gb", "estimated_mem_gb"]),
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", action="append", default=[], help="more profile tables (CSV/parquet)")
    ap.add_argument("--no-default", action="store_true", help="leave out profiles/profiles.csv")
    ap.add_argument("--workload", action="append", default=[],
                    help="workload YAML(s) whose jobs shape rows that do not name their model (rows a "
                         "run measured in its own steps)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "prior.json"))
    ap.add_argument("--store", default=None, help="where the machine probe is cached (default: a temp dir)")
    ap.add_argument("--no-section", action="store_true", help="do not write the BENCHMARKS.md section")
    a = ap.parse_args(argv)
    tables = ([] if a.no_default else [DEFAULT_TABLE]) + [Path(t) for t in a.table]
    rows = measured_rows(tables)
    if not rows:
        print("no measured rows with a step time in", ", ".join(map(str, tables)))
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        rates = rates_by_type({str(r["gpu_type"]) for r in rows}, Path(a.store or tmp))
    shapes = {}
    for w in a.workload:
        from saturn.prior.shapes import model_shape
        from saturn.spec import load_workload

        for job in load_workload(w).jobs:
            if (shape := model_shape(job)) is not None:
                shapes[str(job.signature)] = shape
    result = evaluate(rows, rates, shapes)
    data = {**result, "rates": {t: r.to_dict() for t, r in rates.items()}, "tables": [str(t) for t in tables]}
    benchlib.write_json_at(Path(a.out), data)
    if not a.no_section:
        benchlib.write_section("prior", "Prior cost model accuracy", section(result, rates, tables))
    s = result["summary"]
    print(f"{s['rows']} rows: median |err| LOO {_pct(s['median_abs_err_loo'])}, uncalibrated "
          f"{_pct(s['median_abs_err_uncalibrated'])}; ranking LOO {_pct(s['ranking_loo'])}, uncalibrated "
          f"{_pct(s['ranking_uncalibrated'])} ({s['ranking_pairs']} pairs); wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
