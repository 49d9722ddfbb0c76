"""User model factories for the fused tests: ones that vmap, and ones the engine must refuse."""

from types import SimpleNamespace

import torch
from torch import nn

from saturn.zoo import SequentialModel


class _Branchy(nn.Module):
    """Data-dependent control flow: a Python `if` on a tensor value."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x.float().mean(-1, keepdim=True).expand(-1, 8))
        return h * 2 if h.sum() > 0 else h


def batch_norm_net() -> nn.Sequential:
    return nn.Sequential(nn.Embedding(256, 8), nn.Flatten(), nn.Linear(8 * 16, 8), nn.BatchNorm1d(8),
                         nn.Linear(8, 256))


def branchy_net() -> SequentialModel:
    return SequentialModel([_Branchy(), nn.Linear(8, 256)], None,
                           lambda out, y: nn.functional.cross_entropy(out, y[:, 0]),
                           SimpleNamespace(vocab_size=256))


def mlp_net() -> SequentialModel:
    return SequentialModel([nn.Embedding(256, 16), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 256)], None,
                           lambda out, y: nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()),
                           SimpleNamespace(vocab_size=256))


class _Scaled(nn.Module):
    """A module with a constant buffer (read, never written): fuses fine."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.register_buffer("scale", torch.full((16,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale


def buffered_net() -> SequentialModel:
    return SequentialModel([nn.Embedding(256, 16), _Scaled(), nn.Linear(16, 256)], None,
                           lambda out, y: nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()),
                           SimpleNamespace(vocab_size=256))
