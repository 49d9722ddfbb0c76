"""Vision Transformer (ViT) in plain torch, as a layer sequence.

Plain torch because there is no CPU torchvision build to rely on, and because, like the GPT models,
it must be an explicit sequence (patch embedding, blocks, classifier head) for pipelining/spilling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


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
        return asdict(self)


VIT_CONFIGS = {
    "vit-tiny": ViTConfig(image_size=32, patch_size=8, n_layer=2, n_embd=64, n_head=2,
                          num_classes=10),
    "vit-base": ViTConfig(),
    "vit-large": ViTConfig(n_layer=24, n_embd=1024, n_head=16),
    "vit-huge": ViTConfig(patch_size=14, n_layer=32, n_embd=1280, n_head=16),
}


class PatchEmbedding(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.channels, cfg.n_embd, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.n_embd))
        self.pos = nn.Parameter(torch.zeros(1, cfg.n_patches + 1, cfg.n_embd))  # saturn.zoo.init

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos


class ViTBlock(nn.Module):
    """Pre-norm encoder block (bidirectional attention)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = nn.MultiheadAttention(cfg.n_embd, cfg.n_head, batch_first=True)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ClassifierHead(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x[:, 0]))


def vit_layers(cfg: ViTConfig) -> list[nn.Module]:
    return [PatchEmbedding(cfg), *[ViTBlock(cfg) for _ in range(cfg.n_layer)], ClassifierHead(cfg)]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def vit_config(name: str, overrides: dict[str, Any]) -> ViTConfig:
    return replace(VIT_CONFIGS[name], **overrides)
