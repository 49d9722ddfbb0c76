"""The prior's host-memory column on profile rows (issue 33): `host_mem_gb`, calibrated.

Why a module of its own: the host-memory estimate (saturn.profiles.host_memory) is per option,
but the planner reads it per row; here every row without a measured peak gets the calibrated
estimate, and the calibration (measured peak / estimate per technique) is fitted from the rows
that have one. `rows.py` calls `fill_host_memory` for the table and `host_gb_of` for the rows it
estimates.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import pandas as pd

from saturn.parse import num as _num
from saturn.planner.provenance import is_measured
from saturn.prior.calibration import row_knobs
from saturn.prior.cost_model import ModelShape
from saturn.prior.shapes import model_shape, row_shape
from saturn.profiles.host_memory import HostCalibration, host_bytes, measured_peak_gb


def device_of(gpu_type: str) -> str:
    return "cpu" if str(gpu_type).lower() == "cpu" else "cuda"


def host_ratios(rows: Iterable[dict], shapes: dict[str, ModelShape]) -> list[tuple[str, float]]:
    """(technique, measured host peak / uncalibrated host estimate) per row with a measured peak."""
    out = []
    for r in rows:
        peak = measured_peak_gb(r)
        shape = row_shape(r, shapes) if peak is not None and is_measured(r) else None
        if shape is None:
            continue
        dev = device_of(str(r.get("gpu_type") or ""))
        est = host_bytes(shape, str(r["technique"]), row_knobs(r), int(r["gpus"]), dev)
        if est.gb > 0:
            out.append((str(r["technique"]), peak / est.gb))
    return out


def host_gb_of(shape: ModelShape, technique: str, gpus: int, gpu_type: str,
               calib: HostCalibration) -> Callable[[dict], float]:
    """knobs -> the calibrated host-memory estimate (GB) of that option."""
    def gb(knobs: dict) -> float:
        return round(host_bytes(shape, technique, knobs, gpus, device_of(gpu_type)).gb * calib.factor(technique), 3)

    return gb


def fill_host_memory(table: pd.DataFrame, workload: Any) -> pd.DataFrame:
    """Rows without a measured host peak or an estimate get the prior's (calibrated) host memory
    estimate in `host_mem_gb`, so that the planner sees every option's host memory."""
    if not len(table):
        return table
    records = table.to_dict("records")
    shapes = {str(j.signature): s for j in workload.jobs if (s := model_shape(j)) is not None}
    calib = HostCalibration.fit(host_ratios(records, shapes))
    values, changed = [], False
    for r in records:
        have = measured_peak_gb(r) or _num(r.get("host_mem_gb"), math.nan) > 0
        shape = None if have else row_shape(r, shapes)
        if shape is None or r.get("technique") is None or not math.isfinite(_num(r.get("gpus"), math.nan)):
            values.append(r.get("host_mem_gb"))
            continue
        tech = str(r["technique"])
        values.append(host_gb_of(shape, tech, int(r["gpus"]), str(r.get("gpu_type") or ""), calib)(row_knobs(r)))
        changed = True
    if not changed:
        return table
    out = table.copy()
    out["host_mem_gb"] = values
    return out
