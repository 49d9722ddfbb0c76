"""The zoo's model configs and dataset names, without torch.

Spec validation, profile signatures and the planner need a model's configuration (names,
overrides, parameter count) but never its layers; keeping them here lets `saturn validate` and
`saturn plan` run without importing torch (about 1.5 s of a 2-core machine's start-up). The layer
code (gpt.py, vit.py, models.py) imports these configs from here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Optional

DATASETS = ("synthetic-tokens", "synthetic-images", "text-file", "image-files", "token-files")
PIPELINE_DATASETS = ("image-files", "token-files")  # file-backed staged pipelines (saturn.data)
# what each dataset yields, and what each zoo model family eats (checked at `saturn validate`)
DATASET_KINDS = {"synthetic-tokens": "tokens", "text-file": "tokens", "token-files": "tokens",
                 "synthetic-images": "images", "image-files": "images"}
FAMILY_KINDS = {"gpt": "tokens", "vit": "images"}


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 12
    n_embd: int = 768
    n_head: int = 12
    vocab_size: int = 50304  # 50257 padded to a multiple of 64 for fast matmuls
    n_positions: int = 1024
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    def params(self) -> int:
        """Parameter count, without building the model (for planning huge configs)."""
        d, L = self.n_embd, self.n_layer
        block = 12 * d * d + 13 * d
        return self.vocab_size * d * 2 + self.n_positions * d + L * block + 2 * d

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # flat scalars: asdict's deep copy is slow


GPT_CONFIGS = {
    "gpt2-tiny": GPTConfig(n_layer=2, n_embd=64, n_head=2, vocab_size=256, n_positions=256),
    "gpt2-small": GPTConfig(n_layer=12, n_embd=768, n_head=12),
    "gpt2-medium": GPTConfig(n_layer=24, n_embd=1024, n_head=16),
    "gpt2-large": GPTConfig(n_layer=36, n_embd=1280, n_head=20),
    "gpt2-xl": GPTConfig(n_layer=48, n_embd=1600, n_head=25),
    "gpt-2.7b": GPTConfig(n_layer=32, n_embd=2560, n_head=32, n_positions=2048),
    "gpt-6.7b": GPTConfig(n_layer=32, n_embd=4096, n_head=32, n_positions=2048),
    "gpt-13b": GPTConfig(n_layer=40, n_embd=5120, n_head=40, n_positions=2048),
}


def gpt_config(name: str, overrides: dict[str, Any]) -> GPTConfig:
    return replace(GPT_CONFIGS[name], **overrides)


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    n_layer: int = 12
    n_embd: int = 768
    n_head: int = 12
    num_classes: int = 1000

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size "
                             f"({self.patch_size})")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def params(self) -> int:
        d = self.n_embd
        patch = self.channels * self.patch_size**2 * d + d
        return patch + (self.n_patches + 1) * d + d + self.n_layer * (12 * d * d + 13 * d) \
            + 2 * d + d * self.num_classes + self.num_classes

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # flat scalars: asdict's deep copy is slow


VIT_CONFIGS = {
    "vit-tiny": ViTConfig(image_size=32, patch_size=8, n_layer=2, n_embd=64, n_head=2,
                          num_classes=10),
    "vit-base": ViTConfig(),
    "vit-large": ViTConfig(n_layer=24, n_embd=1024, n_head=16),
    "vit-huge": ViTConfig(patch_size=14, n_layer=32, n_embd=1280, n_head=16),
}


def vit_config(name: str, overrides: dict[str, Any]) -> ViTConfig:
    return replace(VIT_CONFIGS[name], **overrides)


def _config_for(name: str) -> tuple[str, dict[str, Any]]:
    """(family, default fields) of a zoo name; the dict is shared: read it, never change it."""
    if name in _FIELDS:
        return _FIELDS[name]
    if name in GPT_CONFIGS:
        return _FIELDS.setdefault(name, ("gpt", GPT_CONFIGS[name].to_dict()))
    if name in VIT_CONFIGS:
        return _FIELDS.setdefault(name, ("vit", VIT_CONFIGS[name].to_dict()))
    raise ValueError(f"unknown model {name!r}; zoo models: {model_names()}")


_FIELDS: dict[str, tuple[str, dict[str, Any]]] = {}  # 10,000 jobs validate the same few names


def model_names() -> list[str]:
    return [*GPT_CONFIGS, *VIT_CONFIGS]


def check_model_name(name: str, overrides: dict[str, Any]) -> None:
    """Validate a zoo name and its overrides without building anything (spec validation)."""
    family, fields = _config_for(name)
    bad = sorted(set(overrides) - set(fields))
    if bad:
        raise ValueError(f"unknown override(s) {bad} for {name}; allowed: {sorted(fields)}")
    for k, v in overrides.items():  # the config's own field types: `n_layer: "4"` is text, not a count
        default = fields[k]
        whole = isinstance(default, int) and not isinstance(default, bool)
        ok = not isinstance(v, bool) and (isinstance(v, int) if whole else isinstance(v, (int, float)))
        if not ok:
            kind = "a whole number" if whole else "a number"
            raise ValueError(f"override {k} = {v!r} ({type(v).__name__}) must be {kind}, like {name}'s "
                             f"default {default!r}")
    try:
        model_config(name, overrides)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"overrides for {name}: {exc}") from None


def model_config(name: str, overrides: Optional[dict[str, Any]] = None) -> Any:
    family, _ = _config_for(name)
    build = gpt_config if family == "gpt" else vit_config
    return build(name, dict(overrides or {}))


def architecture(spec: Any) -> dict[str, Any]:
    """What decides speed and memory of a model spec: its resolved config (for signatures)."""
    if spec.name:
        family, _ = _config_for(spec.name)
        return {"family": family, **model_config(spec.name, spec.overrides).to_dict()}
    return {"factory": spec.factory, "kwargs": spec.kwargs}


def param_count(spec: Any) -> Optional[int]:
    """Parameters of a zoo model without building it; None for user factories."""
    return model_config(spec.name, spec.overrides).params() if spec.name else None
