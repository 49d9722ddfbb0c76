"""Calibration of the prior by measured rows: per-row ratios (measured / uncalibrated estimate)
for `cost_model.Calibration.fit`, and the anchor that makes an estimate agree with this model's
own rows of the same technique and knobs (an estimate never contradicts its neighbours).
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Callable, Iterable, Optional

from saturn.parse import canonical_knobs
from saturn.parse import num as _num
from saturn.planner.provenance import is_measured
from saturn.prior.cost_model import MachineRates, ModelShape, estimate
from saturn.prior.shapes import row_shape


def measured_ok(row: dict) -> bool:
    """A measured row with a usable step time (the rows that calibrate the prior)."""
    return is_measured(row) and usable_row(row)


def usable_row(row: dict) -> bool:
    st = row.get("status")
    feasible = row.get("feasible")
    if isinstance(feasible, str):
        feasible = feasible.strip().lower() in ("true", "1", "yes")
    good = (st is None or (isinstance(st, float) and st != st) or str(st) == "ok") and bool(feasible)
    return good and _num(row.get("step_time_s"), math.nan) > 0


def row_knobs(row: dict) -> dict:
    try:
        return json.loads(canonical_knobs(row.get("knobs")))
    except ValueError:
        return {}


def calibration_ratios(rows: Iterable[dict], shapes: dict[str, ModelShape],
                       rates_for_type: Callable[[str], MachineRates]) -> list[tuple[str, str, float, dict]]:
    """(technique, device kind, measured / uncalibrated estimate, row) for each usable measured row."""
    out = []
    for r in rows:
        if not measured_ok(r):
            continue
        shape = row_shape(r, shapes)
        kind = str(r.get("gpu_type") or "")
        if shape is None or not kind:
            continue
        est = estimate(shape, str(r["technique"]), row_knobs(r), int(r["gpus"]), rates_for_type(kind),
                       _num(r.get("gpu_memory_gb"), 1e9))
        if est.step_time_s > 0:
            out.append((str(r["technique"]), kind, float(r["step_time_s"]) / est.step_time_s, r))
    return out


def knobs_agree(row_knobs: dict, knobs: Optional[dict]) -> bool:
    """The row's knob setting agrees with `knobs` on every knob both name (None: any)."""
    return knobs is None or all(str(knobs[k]).lower() == str(v).lower() for k, v in row_knobs.items() if k in knobs)


def anchor(rows: list[dict], sig: str, technique: str, gpu_type: str, shape: ModelShape,
           rates: MachineRates, knobs: Optional[dict] = None) -> Optional[tuple[float, str]]:
    """The factor that makes the prior agree with this signature's own rows of this technique and
    knob setting (`knobs`; rows that name fewer knobs match on those) on this GPU type, measured or
    sample, e.g. at another GPU count: an estimate never contradicts its neighbours. None when
    there are none."""
    ratios = []
    for r in rows:
        if (str(r.get("signature")) == sig and str(r.get("technique")) == technique
                and str(r.get("gpu_type") or "").lower() == gpu_type.lower() and usable_row(r)
                and knobs_agree(row_knobs(r), knobs)):
            est = estimate(shape, technique, row_knobs(r), int(r["gpus"]), rates, _num(r.get("gpu_memory_gb"), 1e9))
            if est.step_time_s > 0:
                ratios.append(float(r["step_time_s"]) / est.step_time_s)
    if not ratios:
        return None
    f = float(statistics.median(ratios))
    return f, f"x{f:.3g} anchored to {len(ratios)} row(s) of this model with {technique} and these knobs"
