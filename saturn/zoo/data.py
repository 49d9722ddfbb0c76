"""Deterministic datasets, addressed by sample index so that a step number is a data position.

Step `s` of a job with global batch size `B` always reads samples `s*B .. s*B+B-1` (mod the dataset
size), whatever the technique or GPU count: that is what makes checkpoints technique-neutral (a job
resumed with another technique continues on exactly the next samples) and losses comparable across
techniques. Data-parallel ranks take contiguous slices of that global batch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Sized, cast

import torch

# torch-free names, re-exported
from saturn.zoo.configs import DATASET_KINDS, DATASETS, FAMILY_KINDS, PIPELINE_DATASETS  # noqa: F401

DEFAULT_SIZE = 100_000


class SyntheticTokens(torch.utils.data.Dataset):
    """Token sequences with learnable structure: arithmetic progressions (a per-sample start and
    stride) with a fraction of positions replaced by noise, so the loss really falls. Vectorized,
    so data never bottlenecks a GPU step."""

    def __init__(self, vocab_size: int, seq_len: int, size: int = DEFAULT_SIZE, seed: int = 0,
                 noise: float = 0.1):
        self.vocab, self.seq_len, self.size, self.seed, self.noise = vocab_size, seq_len, size, seed, noise

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        n = self.seq_len + 1
        start, stride = torch.randint(0, self.vocab, (2,), generator=g).tolist()
        stride = stride % 7 + 1
        seq = (start + stride * torch.arange(n)) % self.vocab
        noisy = torch.rand(n, generator=g) < self.noise
        seq = torch.where(noisy, torch.randint(0, self.vocab, (n,), generator=g), seq)
        return seq[:-1], seq[1:]


class SyntheticImages(torch.utils.data.Dataset):
    """Images = a fixed random prototype per class + noise, so a classifier can learn them."""

    def __init__(self, image_size: int, channels: int, num_classes: int, size: int = DEFAULT_SIZE,
                 seed: int = 0):
        self.shape = (channels, image_size, image_size)
        self.num_classes, self.size, self.seed = num_classes, size, seed
        g = torch.Generator().manual_seed(seed)
        self.prototypes = torch.randn(num_classes, *self.shape, generator=g)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i) + 1)
        label = int(torch.randint(0, self.num_classes, (1,), generator=g))
        image = self.prototypes[label] + 0.5 * torch.randn(*self.shape, generator=g)
        return image, torch.tensor(label)


class TextFile(torch.utils.data.Dataset):
    """A local text file as byte-level tokens (vocab 256), cut into non-overlapping windows."""

    def __init__(self, path: str, seq_len: int):
        with open(path, "rb") as f:
            self.data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
        self.seq_len = seq_len
        if len(self) < 1:
            raise ValueError(f"{path} has {len(self.data)} bytes; it needs more than seq_len "
                             f"({seq_len}) for one sample")

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.seq_len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(i) * self.seq_len
        chunk = self.data[start:start + self.seq_len + 1]
        return chunk[:-1], chunk[1:]


def build_dataset(data: Any, seq_len: int, model_config: Any, seed: int = 0) -> torch.utils.data.Dataset:
    """The dataset for a job's `data` spec, shaped to fit its model (vocab, image size, classes)."""
    kw = dict(data.kwargs)
    if data.factory:
        return _import(data.factory)(seq_len=seq_len, **kw)
    if data.name in PIPELINE_DATASETS:
        from saturn import data as pipelines

        return pipelines.build(data, seq_len, model_config, seed=seed)
    if data.name == "synthetic-tokens":
        vocab = getattr(model_config, "vocab_size", None)
        if vocab is None:
            raise ValueError("synthetic-tokens needs a language model (with vocab_size)")
        return SyntheticTokens(vocab, seq_len, seed=seed, **kw)
    if data.name == "synthetic-images":
        if not hasattr(model_config, "image_size"):
            raise ValueError("synthetic-images needs a vision model (with image_size)")
        return SyntheticImages(model_config.image_size, model_config.channels,
                               model_config.num_classes, seed=seed, **kw)
    if data.name == "text-file":
        if getattr(model_config, "vocab_size", 0) < 256:
            raise ValueError("text-file uses byte tokens: the model's vocab_size must be >= 256")
        return TextFile(os.path.expanduser(data.path), seq_len)
    raise ValueError(f"unknown dataset {data.name!r}")


def dataset_size(data: Any, seq_len: int) -> int:
    """Number of samples, without materializing synthetic data (for epochs -> steps)."""
    if data.name in ("synthetic-tokens", "synthetic-images"):
        return int(data.kwargs.get("size", DEFAULT_SIZE))
    if data.name in PIPELINE_DATASETS:
        from saturn import data as pipelines

        return pipelines.size(data, seq_len)
    if data.name == "text-file":
        return max(0, (os.path.getsize(os.path.expanduser(data.path)) - 1) // seq_len)
    return len(_import(data.factory)(seq_len=seq_len, **data.kwargs))


def batch_for_step(dataset: torch.utils.data.Dataset, step: int, batch_size: int,
                   rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of the global batch of `step` (see module docstring)."""
    if hasattr(dataset, "batch_for_step"):  # a staged pipeline (saturn.data) serves whole batches
        return dataset.batch_for_step(step, batch_size, rank, world)
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by {world} data-parallel ranks")
    per = batch_size // world
    n = len(cast(Sized, dataset))  # map-style datasets of the zoo all have a length
    start = step * batch_size + rank * per
    samples = [dataset[(start + k) % n] for k in range(per)]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def _import(path: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
