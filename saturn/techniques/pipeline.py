"""Pipeline parallelism with `torch.distributed.pipelining`: the layer sequence is cut into one
contiguous stage per device; micro-batches flow through the stages (GPipe or 1F1B schedule).

For models too large for one device when sharding's all-gathers cost more than the pipeline
bubble: only activations at stage boundaries cross devices. Each rank builds the full seeded model
(identical init to every other technique), keeps its stage's layers and replaces the others with
`nn.Identity`, so parameter names stay canonical (`layers.N.…`) and checkpoints are neutral.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import torch
from torch import nn

from saturn.techniques.base import Feasibility
from saturn.techniques.common import LaunchedTechnique
from saturn.techniques.knobs import knob, knob_dataclass
from saturn.techniques.registry import register
from saturn.training import loop

if TYPE_CHECKING:
    from saturn.zoo.models import SequentialModel


@knob_dataclass
class PipelineKnobs:
    schedule: Literal["gpipe", "1f1b"] = knob("1f1b", "gpipe (all forwards, then all backwards) | 1f1b (less "
                                                      "activation memory)")
    n_microbatches: Optional[int] = knob(None, "micro-batches per step (more: smaller bubble, smaller matmuls); "
                                               "None: the first divisor candidate for the batch", ge=1)
    activation_checkpointing: bool = knob(False, "recompute each block's activations in backward")
    split: Union[Literal["auto"], list[int]] = knob("auto", "auto (balance per-layer matmul parameters) or a list "
                                                            "of each stage's first layer")


@register
class Pipeline(LaunchedTechnique):
    name = "pipeline"
    builder = "saturn.techniques.pipeline:build"
    requires = "torch>=2.4 (torch.distributed.pipelining); 2+ devices, one stage each"
    knob_type = PipelineKnobs

    def feasible(self, job: Any, gpus: int) -> Feasibility:
        if gpus < 2:
            return Feasibility(False, "pipeline needs at least 2 devices (one stage each)")
        n_layers = _layer_count(job)
        if n_layers is not None and gpus > n_layers:
            return Feasibility(False, f"{gpus} stages but the model has only {n_layers} layers")
        if job.precision == "fp16":
            return Feasibility(False, "fp16 needs loss scaling, which the pipelining schedules "
                                      "do not do; use bf16")
        if not _micro_choices(job.batch_size, gpus):
            return Feasibility(False, f"batch_size {job.batch_size} has no divisor >= 2 for "
                                      "micro-batches")
        return Feasibility(True)

    def candidates(self, job: Any, gpus: int) -> list[dict[str, Any]]:
        base = {"schedule": "1f1b", "activation_checkpointing": False, "split": "auto"}
        out = [{**base, "n_microbatches": m} for m in _micro_choices(job.batch_size, gpus)]
        if out:
            out.insert(1, {**out[0], "schedule": "gpipe"})
            out.append({**out[0], "activation_checkpointing": True})
        return out


def _micro_choices(batch_size: int, stages: int) -> list[int]:
    """Micro-batch counts dividing the batch: ~2x and ~4x the stages first (a small bubble)."""
    divs = [m for m in range(2, batch_size + 1) if batch_size % m == 0]
    prefs = sorted(divs, key=lambda m: (abs(m - 2 * stages), m))
    return prefs[:2]


def _layer_count(job: Any) -> Optional[int]:
    if not job.model.name:
        return None
    from saturn.zoo import model_config

    cfg = model_config(job.model.name, job.model.overrides)
    return getattr(cfg, "n_layer", None) and cfg.n_layer + 2


def layer_weights(model: nn.Module) -> list[float]:
    """Per-layer cost proxy: parameters outside embedding tables (a lookup costs ~nothing, a
    matmul's FLOPs grow with its weights), plus 1 so empty layers still count."""
    out = []
    for layer in model.layers:
        emb = sum(p.numel() for m in layer.modules() if isinstance(m, nn.Embedding)
                  for p in m.parameters(recurse=False))
        out.append(float(sum(p.numel() for p in layer.parameters()) - emb + 1))
    return out


def balanced_split(weights: list[float], stages: int) -> list[int]:
    """First layer of each stage for contiguous stages minimizing the heaviest stage (exact DP)."""
    n = len(weights)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot cut {n} layers into {stages} stages")
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                cost = max(best[k - 1][i], prefix[j] - prefix[i])
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    starts, j = [], n
    for k in range(stages, 0, -1):
        j = cut[k][j]
        starts.append(j)
    return starts[::-1]


def _stage_range(model: SequentialModel, knobs: dict[str, Any], rank: int, world: int) -> range:
    split = knobs.get("split", "auto")
    starts = balanced_split(layer_weights(model), world) if split in (None, "auto") else list(split)
    if len(starts) != world or starts[0] != 0 or sorted(set(starts)) != starts:
        raise ValueError(f"split {split!r} must list {world} increasing first layers from 0")
    ends = starts[1:] + [len(model.layers)]
    return range(starts[rank], ends[rank])


def build(job: Any, knobs: dict[str, Any], ctx: Any) -> loop.Trainable:
    """Worker side: this rank's stage of the seeded model, a PipelineStage and its schedule."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    rank, world, device = ctx.rank, ctx.world_size, ctx.device
    from saturn.zoo.init import materialize

    model = loop.build_model(job, "meta")  # allocate only this stage's layers
    dataset = loop.build_dataset(job, model)
    mine = _stage_range(model, knobs, rank, world)
    for i in range(len(model.layers)):
        if i not in mine:
            model.layers[i] = nn.Identity()
    materialize(model, device, job.seed)
    if knobs.get("activation_checkpointing"):
        loop.apply_activation_checkpointing(model)
    stage = PipelineStage(model, stage_index=rank, num_stages=world, device=device)
    sched_cls = Schedule1F1B if knobs.get("schedule", "1f1b") == "1f1b" else ScheduleGPipe
    n_micro = int(knobs.get("n_microbatches") or _micro_choices(job.batch_size, world)[0])
    schedule = sched_cls(stage, n_microbatches=n_micro, loss_fn=model.loss)
    optimizer = loop.build_optimizer(job, model.parameters())
    first, last = rank == 0, rank == world - 1

    def step(x: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        losses: list[torch.Tensor] = []
        with loop.autocast(job, ctx.device_type):
            args = (x,) if first else ()
            kwargs: dict[str, Any] = {"target": y, "losses": losses} if last else {}
            schedule.step(*args, **kwargs)
        optimizer.step()
        return torch.stack(losses).mean().detach() if last else None

    return loop.Trainable.for_module(model, optimizer, step, device, dp_rank=0, dp_world=1,
                                         loss_weight=1.0 if last else 0.0, dataset=dataset)
