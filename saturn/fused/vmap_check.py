"""Does a job's model train correctly under `torch.func.vmap`? Checked before a group launches.

Why: the fused engine runs one vmapped forward/backward for all members; a module that mutates a
buffer in place (batch norm's running statistics in training mode), branches on tensor values
(data-dependent control flow), or draws random numbers (dropout: one stream for the group, so no
member's masks would be its solo run's) either fails inside vmap or would silently train something
other than its solo run. Zoo models are known to vmap (tests/fused); a user factory is built on
the CPU and one vmapped forward and backward of two stacked copies runs on one sample of its own
data, so the refusal names the real cause (the exception vmap raised) before any GPU is used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def static_refusal(model: nn.Module) -> str:
    """Refusals visible from the module tree alone ('' if none)."""
    for name, mod in model.named_modules():
        if isinstance(mod, _BATCH_NORMS) and mod.track_running_stats:
            return (f"module {name or type(mod).__name__!r} is {type(mod).__name__} with running statistics: "
                    "training updates its buffers in place, which vmap cannot do per member (use "
                    "LayerNorm/GroupNorm, or track_running_stats=False, to fuse it)")
        if isinstance(mod, nn.Dropout) and mod.p > 0:
            return (f"module {name!r} is Dropout(p={mod.p}): vmap draws one random stream for the group, "
                    "so a member's dropout masks would not be its solo run's")
    return ""


def vmap_refusal(job: Any) -> str:
    """Why `job`'s model cannot be fused ('' when it can). Zoo models only get the static check
    (their layers are known to vmap); user factories are also run under vmap once."""
    from torch.func import functional_call, stack_module_state, vmap

    from saturn.training import loop as training
    from saturn.zoo.data import batch_for_step

    model = training.build_model(job, "meta" if job.model.name else "cpu")
    why = static_refusal(model)
    if why or job.model.name:
        return why
    model.train()
    params, buffers = stack_module_state([model, model])
    dataset = training.build_dataset(job, model)
    x, y = batch_for_step(dataset, 0, 1)

    def loss(p: dict, b: dict, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return model.loss(functional_call(model, (p, b), (xb,)), yb)

    try:
        vmap(loss, randomness="error")(params, buffers, torch.stack([x, x]), torch.stack([y, y])).sum().backward()
    except Exception as exc:  # noqa: BLE001 - the reason is the refusal, reported with its type
        return (f"model {job.model.label()} does not run under torch.func.vmap: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''} (in-place buffer updates, data-dependent "
                "control flow and random ops cannot be fused)")
    return ""
