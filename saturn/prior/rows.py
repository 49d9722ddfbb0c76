"""Profile rows from the prior: every option of a workload that no row covers gets an estimate.

Why: a job must always have a plan (issue 24). `with_prior(workload, table)` returns the table
plus one `estimated` row per (signature, technique, GPU count, GPU type) that no row of the table
covers (measured, failed, sample or static): the fastest candidate knob setting the prior finds
feasible, or, when none fits, an infeasible row naming the estimated peak memory. Estimated rows
are never written to the store (a measurement replaces them simply by existing).

The prior is calibrated by every measured row of the table whose model it can shape (this
workload's jobs by signature, or zoo models named in the row's `model` column).
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import replace
from typing import Any, Callable, Iterable, Optional, Union

import pandas as pd

from saturn.parse import canonical_knobs
from saturn.parse import num as _num
from saturn.planner.provenance import is_measured
from saturn.prior.calibration import anchor, calibration_ratios
from saturn.prior.cost_model import (
    Calibration,
    Estimate,
    MachineRates,
    ModelShape,
    datasheet_rates,
    estimate,
    launch_extra_s,
)
from saturn.prior.host_rows import fill_host_memory, host_gb_of, host_ratios
from saturn.prior.shapes import model_shape
from saturn.profiler.cells import allowed_techniques, cell_for, gpu_counts
from saturn.profiler.table import checkpoint_cost_s
from saturn.profiler.value import PriorGuess
from saturn.profiles.host_memory import HostCalibration

log = logging.getLogger(__name__)

MODELLED_TECHNIQUES = ("ddp", "fsdp", "zero", "pipeline", "spilling")  # what saturn.prior.cost_model models
ESTIMATED_SOURCE = "estimated"  # the row's `source` starts with it (saturn.planner.provenance)
DEFAULT_LAUNCH_S = {"cpu": 1.0}
DEFAULT_GPU_LAUNCH_S = 10.0


def _cells(job: Any, max_gpus: int, needed: Callable[[str], bool] = lambda name: True) -> list[tuple[str, Any]]:
    """(technique name, technique) for the job's allowed techniques the prior models (the
    built-ins: what a user technique does per step is unknown, so it gets no estimate) and that
    are `needed` (a technique object is loaded only then: loading one imports torch)."""
    from saturn.techniques.registry import get_technique

    out = []
    for name in allowed_techniques(job):
        if name not in MODELLED_TECHNIQUES or not needed(name):
            continue
        try:
            out.append((name, get_technique(name)))
        except Exception:  # noqa: BLE001 - a user class that cannot be loaded gets no estimate
            continue
    return out


def _launch_s(records: list[dict], technique: str, gpu_type: str) -> float:
    """Median measured launch cost of this technique (else any) on this GPU type."""
    if records:
        rows = [r for r in records if is_measured(r)
                and str(r.get("gpu_type") or "").lower() == gpu_type.lower() and _num(r.get("launch_s"), -1) >= 0]
        for pick in ([r for r in rows if r["technique"] == technique], rows):
            vals = [_num(r["launch_s"]) for r in pick]
            if vals:
                return float(statistics.median(vals))
    return DEFAULT_LAUNCH_S.get(gpu_type.lower(), DEFAULT_GPU_LAUNCH_S)


def best_estimate(shape: ModelShape, technique: str, candidates: list[dict], gpus: int, rates: MachineRates,
                  gpu_memory_gb: float, factor_for: Callable[[dict], tuple[float, str]], steps: float = 1.0,
                  compute_factor: Optional[float] = None, host_gb: Optional[Callable[[dict], float]] = None,
                  host_memory_gb: Optional[float] = None) -> tuple[dict, Estimate, str]:
    """The candidate the prior expects to finish `steps` steps soonest (its start-up included)
    among those that fit (else the leanest one), its estimate and what its calibration rests on.
    With `host_gb` (a candidate's host memory) and the node's `host_memory_gb`, a candidate over
    the node's host memory does not fit either (its reason says so)."""
    ests = []
    for c in candidates:
        f, why = factor_for(c)
        est = estimate(shape, technique, c, gpus, rates, gpu_memory_gb, f, compute_factor)
        if est.feasible and host_gb is not None and host_memory_gb and host_gb(c) > host_memory_gb:
            est = replace(est, feasible=False, reason=f"estimated host memory {host_gb(c):.1f} GB > the node's "
                                                      f"{host_memory_gb:g} GB (host_memory_gb)")
        ests.append((c, est, why))
    fits = [e for e in ests if e[1].feasible]
    if fits:
        return min(fits, key=lambda e: steps * e[1].step_time_s + launch_extra_s(e[0]))
    hosts = [e for e in ests if e[1].reason.startswith("estimated host memory")]
    if hosts and host_gb is not None:  # every one that fits the GPU is over the host: the leanest there
        return min(hosts, key=lambda e: host_gb(e[0]))
    return min(ests, key=lambda e: e[1].peak_mem_gb)


def estimated_options(workload: Any, table: pd.DataFrame, rates: dict[str, MachineRates],
                      *, covered_only_missing: bool = True) -> list[dict[str, Any]]:
    """Store-format rows (`source` = 'estimated: ...') for every (signature, technique, GPU count,
    GPU type) of `workload` that `table` has no row for; every candidate knob setting is
    estimated and the best one kept (see `best_estimate`)."""

    nodes = list(workload.cluster.resolved().nodes or [])
    max_node = max(n.gpus for n in nodes)
    types: dict[str, float] = {}
    host_cap: dict[str, Optional[float]] = {}  # largest host memory per GPU type (None: not planned)
    for n in nodes:
        types[str(n.gpu_type)] = max(types.get(str(n.gpu_type), 0.0), float(n.gpu_memory_gb))
        h, prev = getattr(n, "host_memory_gb", None), host_cap.get(str(n.gpu_type), 0.0)
        host_cap[str(n.gpu_type)] = None if (not h or prev is None) else max(prev, float(h))
    records = table.to_dict("records") if len(table) else []
    covered = {(str(r.get("signature")), str(r.get("technique")), int(r.get("gpus") or 0),
                str(r.get("gpu_type") or "").lower()) for r in records}
    shapes = {str(j.signature): s for j in workload.jobs if (s := model_shape(j)) is not None}
    calib = Calibration.fit((t, k, r) for t, k, r, _ in calibration_ratios(
        records, shapes, lambda t: rates.get(t) or _rates_any(rates, t)))
    host_calib = HostCalibration.fit(host_ratios(records, shapes))
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for job in workload.jobs:
        sig = str(job.signature)
        if sig in seen:
            continue
        seen.add(sig)
        shape = shapes.get(sig)
        if shape is None:
            continue
        sig_jobs = [j for j in workload.jobs if str(j.signature) == sig]
        counts = sorted(set().union(*(gpu_counts(j, max_node) for j in sig_jobs)))
        for gtype, mem in types.items():
            r8 = rates.get(gtype) or _rates_any(rates, gtype)

            def uncovered(name: str, sig: str = sig, gtype: str = gtype, counts: list = counts) -> bool:
                return any((sig, name, g, gtype.lower()) not in covered for g in counts)

            for name, tech in _cells(job, max_node, uncovered):
                def factor_for(knobs: dict, name: str = name, gtype: str = gtype, r8: MachineRates = r8,
                               sig: str = sig, shape: ModelShape = shape) -> tuple[float, str]:
                    return (anchor(records, sig, name, gtype, shape, r8, knobs)
                            or anchor(records, sig, name, gtype, shape, r8) or calib.factor(name, gtype))

                launch = _launch_s(records, name, gtype)
                ckpt = checkpoint_cost_s(job, gtype)
                for g in counts:
                    if (sig, name, g, gtype.lower()) in covered:
                        continue
                    cell = cell_for(tech, name, job, sig, g)
                    base = {"signature": sig, "technique": name, "gpus": int(g), "gpu_type": gtype,
                            "gpu_memory_gb": mem, "interconnect": None, "torch_version": None,
                            "model": job.model.label(), "batch_size": job.batch_size, "seq_len": job.seq_len,
                            "precision": job.precision}
                    if cell.infeasible_reason is not None or not cell.candidates:
                        out.append({**base, "knobs": "{}", "status": "infeasible", "feasible": False,
                                    "reason": cell.infeasible_reason or "the technique proposed no knob settings",
                                    "source": f"{ESTIMATED_SOURCE}: not measured; the technique rules it out"})
                        continue
                    host_gb = host_gb_of(shape, name, g, gtype, host_calib)
                    knobs, est, why = best_estimate(shape, name, cell.candidates, g, r8, mem, factor_for,
                                                    steps=max(j.total_steps for j in sig_jobs),
                                                    compute_factor=calib.compute_factor(gtype), host_gb=host_gb,
                                                    host_memory_gb=host_cap.get(gtype))
                    start = launch + launch_extra_s(knobs)
                    why += " (floored at the device's own work)" if est.floored else ""
                    src = (f"{ESTIMATED_SOURCE}: prior cost model, {why}; rates {r8.source}"
                           + (f", interconnect {r8.interconnect_source}" if g > 1 else ""))
                    out.append({**base, "knobs": canonical_knobs(knobs),
                                "status": "ok" if est.feasible else "infeasible", "feasible": est.feasible,
                                "step_time_s": est.step_time_s if est.feasible else None,
                                "peak_mem_gb": est.peak_mem_gb, "reason": est.reason,
                                "host_mem_gb": host_gb(knobs),
                                "launch_s": round(start, 3), "checkpoint_s": ckpt,
                                "checkpoint_source": "estimated",
                                "startup_s": round(start + ckpt, 3) if est.feasible else None,
                                "source": src})
    return out


def _rates_any(rates: dict[str, MachineRates], gpu_type: str) -> MachineRates:
    for k, v in rates.items():
        if k.lower() == gpu_type.lower():
            return v
    return datasheet_rates(gpu_type)


def rates_for_workload(workload: Any, store_dir: Union[str, os.PathLike, None]) -> dict[str, MachineRates]:
    """Machine rates per GPU type of the workload's cluster: probed once here when this machine
    is that hardware (CPU slots included), else cached or datasheet figures."""
    from saturn.prior.machine import rates_for
    from saturn.profiler.hardware import gpu_device_visible, hardware_for_cluster, local_hardware

    nodes = list(workload.cluster.resolved().nodes or [])
    types = sorted({str(n.gpu_type) for n in nodes})
    local = None
    threads = None
    try:
        if types == ["cpu"]:
            local = hardware_for_cluster(workload.cluster)
            threads = max(1, (os.cpu_count() or 1) // max(1, local.gpus))
        elif gpu_device_visible():  # probed only when this machine has that GPU type (rates_for checks)
            local = local_hardware()
    except Exception:  # noqa: BLE001 - no local hardware: cached or datasheet rates
        local = None
    return {t: rates_for(t, store_dir, local=local, cpu_threads=threads) for t in types}


def with_prior(workload: Any, table: pd.DataFrame, store_dir: Union[str, os.PathLike, None] = None,
               rates: Optional[dict[str, MachineRates]] = None) -> pd.DataFrame:
    """`table` (store format, keyed by signature) plus estimated rows for what it does not cover."""
    from saturn.profiles.store import default_dir

    if rates is None:
        rates = rates_for_workload(workload, store_dir if store_dir is not None else default_dir())
    table = fill_host_memory(table, workload)  # every row's host memory (issue 33)
    rows = estimated_options(workload, table, rates)
    if not rows:
        return table
    extra = pd.DataFrame(rows)
    return pd.concat([table, extra], ignore_index=True) if len(table) else extra


def trial_priors(workload: Any, cells: Iterable[Any], rep_jobs: dict[str, Any], table: pd.DataFrame,
                 rates: MachineRates, gpu_type: str, gpu_memory_gb: float, *, steps: int,
                 warmup_steps: int) -> dict[tuple, Any]:
    """The prior's guess for every trial of `cells` (`saturn.profiler.search.CellInput`), keyed
    like `TrialSpec.key`, for the profiler's value rule (`saturn.profiler.value`). Cells of
    techniques the prior does not model get none (they are searched the old way)."""
    shapes = {sig: s for sig, j in rep_jobs.items() if (s := model_shape(j)) is not None}
    records = table.to_dict("records") if len(table) else []
    calib = Calibration.fit((t, k, r) for t, k, r, _ in calibration_ratios(records, shapes, lambda _t: rates))
    out: dict[tuple, Any] = {}
    for c in cells:
        shape = shapes.get(c.signature)
        if shape is None or c.technique not in MODELLED_TECHNIQUES or not c.candidates:
            continue
        fixed = _launch_s(records, c.technique, gpu_type) + checkpoint_cost_s(rep_jobs[c.signature], gpu_type)
        for k in c.candidates:
            factor, _why = (anchor(records, c.signature, c.technique, gpu_type, shape, rates, k)
                            or calib.factor(c.technique, gpu_type))
            est = estimate(shape, c.technique, k, c.gpus, rates, gpu_memory_gb, factor,
                           calib.compute_factor(gpu_type))
            extra = launch_extra_s(k)
            trial = fixed + extra + (warmup_steps + steps) * est.step_time_s
            out[(c.signature, c.technique, canonical_knobs(k), c.gpus)] = PriorGuess(
                est.step_time_s, est.feasible, round(trial, 3), est.reason,
                round(fixed + extra - checkpoint_cost_s(rep_jobs[c.signature], gpu_type), 3))
    return out
