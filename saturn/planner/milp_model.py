"""The time-indexed model's columns and rows (see `milp`'s docstring for the formulation).

One builder shared by the planner's rounded MILP (`milp`) and the relaxed lower-bound and export
models (`milp_bounds`), so the three models cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from saturn.planner.options import Option

MAX_NONZEROS_PER_S = 500_000  # largest model worth building per second of time limit


@dataclass
class Block:
    """Columns for one (job, option, node group): start slots 0..n_starts-1."""

    job: int
    option: Option
    group: int
    dur: int
    col0: int
    n_starts: int


@dataclass
class Model:
    lp: object
    blocks: list[Block]
    c_col: int
    n_cols: int


def okey(o: Option) -> tuple:
    return (o.job, o.technique, o.knobs, o.gpus, o.gpu_type)


def build_model(jobs, opts, groups, T, dur, endc, last_start, lb_slots, max_nonzeros, reserved=None,
           weights: Optional[Sequence[float]] = None) -> Optional[Model]:
    """Column-wise (CSC) time-indexed model; see the module docstring for the rows.

    groups: [(capacity, representative node)] (one per node, or per pool of identical nodes);
    dur/endc/last_start: per option key, slots occupied, end coefficient in the makespan row,
    and the last allowed start slot; reserved: per group, GPUs taken by fixed jobs in slot t
    (array of length T); weights: per job index, for the completion-time objective (None:
    minimize the makespan column). Returns None if the model would exceed max_nonzeros.
    """
    import highspy

    J = len(jobs)
    sym_pairs = identical_pairs(jobs, opts, weights)
    sym_row0 = 2 * J + T * len(groups)
    sym_rows_of: dict[int, list[tuple[int, int]]] = {}
    for p, (j1, j2) in enumerate(sym_pairs):
        sym_rows_of.setdefault(j1, []).append((sym_row0 + p, -1))
        sym_rows_of.setdefault(j2, []).append((sym_row0 + p, +1))
    blocks: list[Block] = []
    starts, index, value, costs = [0], [], [], []
    col = nnz = 0
    for ji, j in enumerate(jobs):
        syms = sym_rows_of.get(ji, [])
        for o in opts[j]:
            k = okey(o)
            d, ns = dur[k], last_start[k] + 1
            if ns <= 0:
                continue
            for gi, (_, rep) in enumerate(groups):
                if not o.fits(rep):
                    continue
                nnz += ns * (2 + d + len(syms))
                if nnz > max_nonzeros:
                    return None
                blocks.append(Block(ji, o, gi, d, col, ns))
                s = np.arange(ns)
                if weights is not None:  # w_j * (completion slot of this start)
                    costs.append(weights[ji] * (s + endc[k]).astype(float))
                rows = [np.full(ns, ji), np.full(ns, J + ji)]
                vals = [np.ones(ns), -(s + endc[k]).astype(float)]
                for step in range(d):
                    rows.append(2 * J + gi * T + s + step)
                    vals.append(np.full(ns, float(o.gpus)))
                for r, sign in syms:
                    rows.append(np.full(ns, r))
                    vals.append(sign * s.astype(float))
                R, V = np.stack(rows, axis=1), np.stack(vals, axis=1)
                mask = V != 0
                index.append(R[mask])  # row-major over (start, entry) = column by column
                value.append(V[mask])
                starts.extend((np.cumsum(mask.sum(axis=1)) + starts[-1]).tolist())
                col += ns
    c_col = col
    index.append(np.arange(J, 2 * J))
    value.append(np.ones(J))
    starts.append(starts[-1] + J)
    n_cols, n_rows = col + 1, sym_row0 + len(sym_pairs)
    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n_cols, n_rows
    cost = np.zeros(n_cols)
    if weights is None:
        cost[c_col] = 1.0
    elif costs:
        cost[:c_col] = np.concatenate(costs)
    lp.col_cost_ = cost
    lp.col_lower_ = np.concatenate([np.zeros(col), [float(min(lb_slots, T))]])
    lp.col_upper_ = np.concatenate([np.ones(col), [inf]])
    caps = np.repeat(np.array([c for c, _ in groups], float), T)
    if reserved is not None:
        caps = np.maximum(0.0, caps - np.concatenate([np.asarray(r, float)[:T] for r in reserved]))
    nsym = len(sym_pairs)
    lp.row_lower_ = np.concatenate([np.ones(J), np.zeros(J), np.full(T * len(groups), -inf), np.zeros(nsym)])
    lp.row_upper_ = np.concatenate([np.ones(J), np.full(J, inf), caps, np.full(nsym, inf)])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.concatenate(index).astype(np.int32)
    lp.a_matrix_.value_ = np.concatenate(value)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * col + [highspy.HighsVarType.kContinuous]
    return Model(lp, blocks, c_col, n_cols)


def identical_pairs(jobs: list[str], opts: Mapping[str, list[Option]],
                     weights: Optional[Sequence[float]] = None) -> list[tuple[int, int]]:
    """Consecutive pairs of jobs with identical option sets (and weights): interchangeable."""
    groups: dict[tuple, list[int]] = {}
    for ji, j in enumerate(jobs):
        sig: tuple = tuple(sorted((o.gpus, round(o.runtime_s, 9), o.gpu_type or "") for o in opts[j]))
        if weights is not None:
            sig = (round(float(weights[ji]), 12),) + sig
        groups.setdefault(sig, []).append(ji)
    return [(g[i], g[i + 1]) for g in groups.values() for i in range(len(g) - 1)]
