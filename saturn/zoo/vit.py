"""Vision Transformer (ViT) in plain torch, as a layer sequence.

Plain torch because there is no CPU torchvision build to rely on, and because, like the GPT models,
it must be an explicit sequence (patch embedding, blocks, classifier head) for pipelining/spilling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from saturn.zoo.configs import VIT_CONFIGS, ViTConfig, vit_config  # noqa: F401 (re-exported)


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
