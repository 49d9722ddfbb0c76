"""Model zoo: build any job's model as a `SequentialModel` (an ordered layer sequence).

Models are built on the meta device and initialized where they live by one seeded rule (see
`saturn.zoo.init`): every technique and GPU count starts from the same weights.

Every technique relies on the same three facts about a model: its ordered layers (pipeline stages
and spilling shards cut between them), its repeated block class (FSDP wraps and activation-
checkpoints per block) and its loss. Built-ins come from configs with random init; user models
come from `pkg.module:factory` and may return a `SequentialModel` or an `nn.Sequential`.
"""

from __future__ import annotations

import collections
import importlib
from typing import Any, Callable, Optional, cast

import torch
from torch import nn

from saturn.zoo import gpt, vit
from saturn.zoo.configs import (  # noqa: F401 (re-exported)
    architecture,
    check_model_name,
    model_config,
    model_names,
    param_count,
)
from saturn.zoo.init import materialize


class SequentialModel(nn.Module):
    """`forward` = the layers applied in order; `loss` and `metrics` are per model family."""

    def __init__(self, layers: list[nn.Module], block_class: Optional[type],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 config: Any = None, family: str = "custom",
                 metric_fns: Optional[dict[str, Callable[..., float]]] = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.block_class = block_class
        self.loss_fn = loss_fn
        self.config = config
        self.family = family
        self.metric_fns = metric_fns or {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(output, target)

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        return {name: fn(output, target) for name, fn in self.metric_fns.items()}

    def blocks(self) -> list[nn.Module]:
        return [m for m in self.layers if self.block_class and isinstance(m, self.block_class)]


def build_model(spec: Any, device: Optional[Any] = None, seed: int = 0,
                gen_device: Optional[Any] = None) -> SequentialModel:
    """Build a spec's model on `device` (default CPU) with the seeded init rule of
    `saturn.zoo.init` (or the spec's local weights).

    Zoo models are built on the meta device and allocated directly on `device` (no CPU build and
    copy); `device="meta"` returns them unallocated, for techniques that shard or cut first and
    then call `saturn.zoo.init.materialize`. Factory models are built by the user's code on the
    CPU under `torch.manual_seed(seed)`, then moved."""
    device = torch.device(device or "cpu")
    if spec.factory:
        torch.manual_seed(seed)
        model = _build(spec)
        if spec.weights:
            load_weights(model, spec.weights)
        return model if device.type == "meta" else cast(SequentialModel, model.to(device))
    with torch.device("meta"):
        model = _build(spec)
    if device.type == "meta":
        return model
    if spec.weights:
        model.to_empty(device=device)
        load_weights(model, spec.weights)
        return model
    return cast(SequentialModel, materialize(model, device, seed, gen_device))


def _build(spec: Any) -> SequentialModel:
    if spec.factory:
        module, _, attr = spec.factory.partition(":")
        made = getattr(importlib.import_module(module), attr)(**spec.kwargs)
        return _as_sequential(made, spec.factory)
    cfg = model_config(spec.name, spec.overrides)
    if isinstance(cfg, gpt.GPTConfig):
        return SequentialModel(gpt.gpt_layers(cfg), gpt.Block, gpt.lm_loss, cfg, "lm")
    return SequentialModel(vit.vit_layers(cfg), vit.ViTBlock, vit.classification_loss, cfg,
                           "vision", {"accuracy": vit.accuracy})


def _as_sequential(made: Any, where: str) -> SequentialModel:
    if isinstance(made, SequentialModel):
        return made
    if isinstance(made, nn.Sequential):
        layers = list(made)
        counts = collections.Counter(type(m) for m in layers)
        block = counts.most_common(1)[0][0] if counts else None
        return SequentialModel(layers, block, torch.nn.functional.cross_entropy)
    raise TypeError(f"model factory {where} returned {type(made).__name__}; return a "
                    "saturn.zoo.SequentialModel or an nn.Sequential")


def load_weights(model: SequentialModel, path: str) -> None:
    """Load a state dict from a local file or directory (ours, or HF GPT-2 naming). A file that
    is not a checkpoint of a state dict is a ValueError naming it (saturn.zoo.weights)."""
    from saturn.zoo.weights import weights_file

    path = weights_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler fails in many ways on a foreign file
        raise ValueError(f"model.weights {path}: not a PyTorch checkpoint ({type(exc).__name__}: "
                         f"{str(exc)[:200]}); save a state dict with torch.save") from None
    if not isinstance(state, dict):
        raise ValueError(f"model.weights {path}: holds a {type(state).__name__}, not a state dict; save "
                         "model.state_dict() with torch.save")
    if isinstance(model.config, gpt.GPTConfig) and not any(k.startswith("layers.") for k in state):
        state = gpt.load_hf_gpt2_state_dict(state, model.config)
    model.load_state_dict(state)
