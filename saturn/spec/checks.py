"""Static checks of a job against its model, data and optimizer: what fails at run time but can be
seen from the spec alone, refused at `saturn validate` with the field path.

Why here and not at run time: a job that cannot start (AdamW given `momentum`, betas of length 1,
sequences longer than the model's position table, a ViT fed token data) used to fail every
profiling trial, and the cause surfaced only as "no feasible option". Each check needs nothing but
the spec, the zoo's configs and the optimizer's signature; user factories are not built here.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

OPTIMIZER_CLASSES = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}  # torch.optim.<class>
# Arguments every torch 2.x release of these classes takes: a spec using only these is accepted
# without importing torch (1.5 s of `saturn validate` / `saturn plan`); any other argument is
# checked against the installed torch's real signature. tests/planner/test_speed.py checks that
# these are a subset of it.
KNOWN_ARGUMENTS = {
    "adamw": ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "capturable",
              "differentiable", "fused"),
    "adam": ("lr", "betas", "eps", "weight_decay", "amsgrad", "foreach", "maximize", "capturable",
             "differentiable", "fused"),
    "sgd": ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable",
            "fused"),
}

# their types, checked at validation (torch would raise only when the job's optimizer is built, or
# treat a string such as "maybe" as true); foreach/fused also take None (torch decides)
FLAG_ARGUMENTS = ("amsgrad", "maximize", "capturable", "differentiable", "nesterov", "foreach", "fused")
NUMBER_ARGUMENTS = ("eps", "weight_decay", "momentum", "dampening")


def optimizer_arguments(name: str) -> list[str]:
    """Keyword arguments torch.optim.<class> accepts (besides `params`)."""
    import torch.optim

    cls = getattr(torch.optim, OPTIMIZER_CLASSES[name])
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params")]


def check_job(job: Any) -> None:
    """Raise ValueError naming the field for what would fail when the job starts."""
    _check_optimizer(job.optimizer)
    if job.model.name is None:  # a user factory: its shapes are known only once built
        return
    from saturn.zoo import architecture
    from saturn.zoo.configs import DATASET_KINDS, FAMILY_KINDS

    arch = architecture(job.model)
    family = arch.get("family")
    positions = arch.get("n_positions")
    # only a seq_len the user wrote: the default (512) predates this check and Python callers rely on it
    if positions is not None and job.seq_len > positions and "seq_len" in job.model_fields_set:
        raise ValueError(f"seq_len: {job.seq_len} is above {job.model.name}'s {positions} positions "
                         f"(n_positions); lower seq_len or set model.overrides.n_positions >= {job.seq_len}")
    want = FAMILY_KINDS.get(str(family))
    data = job.data
    have = DATASET_KINDS.get(data.name) if data.name else None
    if want and have and want != have:
        fits = sorted(n for n, k in DATASET_KINDS.items() if k == want)
        raise ValueError(f"data: {data.name} yields {have}, but {job.model.name} is a {family} model that takes "
                         f"{want}; use one of {fits}")


def _check_optimizer(opt: Any) -> None:
    extra = dict(opt.model_extra or {})
    known = KNOWN_ARGUMENTS.get(opt.name, ())
    allowed = list(known) if all(k in known for k in extra) else optimizer_arguments(opt.name)
    unknown = sorted(k for k in extra if k not in allowed)
    if unknown:
        cls = OPTIMIZER_CLASSES[opt.name]
        raise ValueError(f"optimizer.{unknown[0]}: torch.optim.{cls} takes no argument {unknown[0]!r}; its "
                         f"arguments: {', '.join(a for a in allowed if a != 'lr')} (or pick another optimizer "
                         "`name`: adamw, adam, sgd)")
    for k, v in extra.items():
        if k in FLAG_ARGUMENTS and not (isinstance(v, bool) or (v is None and k in ("foreach", "fused"))):
            raise ValueError(f"optimizer.{k}: {v!r} must be true or false")
        if k in NUMBER_ARGUMENTS and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf):
            raise ValueError(f"optimizer.{k}: {v!r} must be a finite number >= 0")
    if "betas" in extra:
        b = extra["betas"]
        ok = (isinstance(b, (list, tuple)) and len(b) == 2
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x < 1
                      for x in b))
        if not ok:
            raise ValueError(f"optimizer.betas: {b!r} must be two numbers in [0, 1), e.g. [0.9, 0.95]")
