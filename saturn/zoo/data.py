"""Deterministic datasets, addressed by sample index so that a step number is a data position.

Step `s` of a job with global batch size `B` always reads samples `s*B .. s*B+B-1` (mod the dataset
size), whatever the technique or GPU count: that is what makes checkpoints technique-neutral (a job
resumed with another technique continues on exactly the next samples) and losses comparable across
techniques. Data-parallel ranks take contiguous slices of that global batch.

The synthetic datasets are made where they are used: `samples(index)` builds a whole batch with a
few elementwise kernels on the device of `index` (training asks for the training device), so a
ViT-base batch of 128 images costs the host a few kernel launches instead of 128 per-sample CPU
random generators (0.16 s on 16 threads, three times the GPU step: issue 25). Their randomness is
counter-based: every value is an integer hash of (seed, sample index, element position) computed
in exact int64 arithmetic, so a sample is bitwise the same on CPU and on any GPU, in any batch, at
any rank count -- the contract above holds across devices too. (Before issue 25 each sample came
from its own CPU `torch.Generator`; the data changed once, deliberately, with this scheme.)
"""

from __future__ import annotations

import importlib
import math
import os
from typing import Any, Callable, Sized, cast

import torch

# torch-free names, re-exported
from saturn.zoo.configs import DATASET_KINDS, DATASETS, FAMILY_KINDS, PIPELINE_DATASETS  # noqa: F401

DEFAULT_SIZE = 100_000

# ------------------------------------------------------------- counter-based random bits (exact)
_M32 = 0xFFFFFFFF


def _mul32(x: Any, c: int) -> Any:
    """x * c mod 2**32 for x in [0, 2**32) (int64 tensor or int), split in 16-bit halves of c so
    no product leaves int64: exact and identical on every device."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x: Any) -> Any:
    """A bijective 32-bit integer hash (Wellons' lowbias32) of values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def sample_keys(seed: int, index: torch.Tensor, stream: int) -> torch.Tensor:
    """One 32-bit key per sample index (int64 tensor, any device); `stream` separates datasets."""
    base = _mix32((int(seed) * 0x9E3779B1 + int(stream) * 0x85EBCA77) & _M32)
    index = index.long()
    return _mix32(_mix32((index & _M32) ^ base) ^ (index >> 32))


def random_bits(keys: torch.Tensor, lanes: int) -> torch.Tensor:
    """[len(keys), lanes] uniform 32-bit values (int64): a hash of (sample key, element position)."""
    pos = torch.arange(lanes, device=keys.device, dtype=torch.int64)
    lane = _mix32(_mul32(pos, 0x9E3779B1) ^ 0x5BD1E995)
    return _mix32_(keys[:, None] ^ lane[None, :])


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """`_mix32` in place on a fresh int64 tensor (the big per-element pass: no temporaries but one)."""
    for shift, c in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x ^= x >> shift
        hi = x * (c >> 16)
        hi &= 0xFFFF
        hi <<= 16
        x *= c & 0xFFFF
        x += hi
        x &= _M32
    x ^= x >> 16
    return x


def uniform_noise(keys: torch.Tensor, lanes: int, std: float) -> torch.Tensor:
    """[len(keys), lanes] float32 noise, uniform with mean 0 and standard deviation `std`. Each
    32-bit hash gives two 16-bit values (half the hashing of one per element); they convert to
    float32 exactly and one multiply rounds the same on every IEEE device."""
    bits = random_bits(keys, (lanes + 1) // 2)
    halves = torch.stack((bits & 0xFFFF, bits >> 16), dim=-1).view(len(keys), -1)[:, :lanes]
    flat = halves.to(torch.float32)  # 16-bit integers: exact, as are *2 and -65535 below
    return flat.mul_(2).sub_(0xFFFF).mul_(float(std * math.sqrt(12.0) / 2**17))


class SyntheticTokens(torch.utils.data.Dataset):
    """Token sequences with learnable structure: arithmetic progressions (a per-sample start and
    stride) with a fraction of positions replaced by noise, so the loss really falls."""

    STREAM = 1
    makes_batches_on_device = True  # see made_on_device

    def __init__(self, vocab_size: int, seq_len: int, size: int = DEFAULT_SIZE, seed: int = 0,
                 noise: float = 0.1):
        self.vocab, self.seq_len, self.size, self.seed, self.noise = vocab_size, seq_len, size, seed, noise

    def __len__(self) -> int:
        return self.size

    def samples(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the samples at `index` ([B] int64), made on index's device."""
        keys = sample_keys(self.seed, index, self.STREAM)
        n = self.seq_len + 1
        start = _mix32(keys ^ 0x68E31DA4) % self.vocab
        stride = _mix32(keys ^ 0xB5297A4D) % 7 + 1
        seq = (start[:, None] + stride[:, None] * torch.arange(n, device=index.device)) % self.vocab
        bits = random_bits(keys, 2 * n)
        noisy = bits[:, :n] < int(self.noise * 2**32)
        seq = torch.where(noisy, bits[:, n:] % self.vocab, seq)
        return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.samples(torch.tensor([int(i)]))
        return x[0], y[0]


class SyntheticImages(torch.utils.data.Dataset):
    """Images = a fixed random prototype per class + noise, so a classifier can learn them. The
    prototypes are coarse (PROTO x PROTO per channel, upsampled by nearest neighbour): one per
    class costs 3 KB on the device however large the images are (full-size ones for ViT-base's
    1000 classes would hold 600 MB on every GPU)."""

    STREAM, PROTO, NOISE = 2, 16, 0.5
    makes_batches_on_device = True  # see made_on_device

    def __init__(self, image_size: int, channels: int, num_classes: int, size: int = DEFAULT_SIZE,
                 seed: int = 0):
        self.shape = (channels, image_size, image_size)
        self.num_classes, self.size, self.seed = num_classes, size, seed
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.size

    def _prototypes(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class coarse prototypes [classes, C*P*P] and, per output pixel, its source position."""
        key = str(device)
        if key not in self._cache:
            c, h, w = self.shape
            p = min(self.PROTO, h)
            classes = torch.arange(self.num_classes, device=device)
            protos = uniform_noise(sample_keys(self.seed, classes, self.STREAM + 100), c * p * p, 1.0)
            rows = torch.arange(h, device=device) * p // h
            cols = torch.arange(w, device=device) * p // w
            src = (torch.arange(c, device=device)[:, None, None] * p * p + rows[None, :, None] * p
                   + cols[None, None, :]).reshape(-1)
            self._cache[key] = (protos, src)
        return self._cache[key]

    def samples(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, H, W] float32 and labels [B] int64 of the samples at `index`, on its device."""
        keys = sample_keys(self.seed, index, self.STREAM)
        labels = _mix32(keys ^ 0x1B873593) % self.num_classes
        protos, src = self._prototypes(index.device)
        c, h, w = self.shape
        noise = uniform_noise(keys, c * h * w, self.NOISE)
        images = protos[labels[:, None], src[None, :]] + noise
        return images.view(len(index), c, h, w), labels

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.samples(torch.tensor([int(i)]))
        return x[0], y[0]


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


def made_on_device(dataset: Any) -> bool:
    """Whether `dataset` builds whole batches on a given device (`samples(index)` on index's
    device: the synthetic ones declare it with `makes_batches_on_device`), so training asks for
    them on its device instead of building on the host and copying. A declared flag, not a
    duck-typed `samples`: torchvision's datasets, for one, have a `samples` list."""
    return bool(getattr(dataset, "makes_batches_on_device", False))


def batch_for_step(dataset: torch.utils.data.Dataset, step: int, batch_size: int,
                   rank: int = 0, world: int = 1,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of the global batch of `step` (see module docstring). Datasets that make
    batches on a device (`made_on_device`) make it on `device` (default CPU); the others build it
    on the host whatever `device` says (the caller copies)."""
    if hasattr(dataset, "batch_for_step"):  # a staged pipeline (saturn.data) serves whole batches
        return dataset.batch_for_step(step, batch_size, rank, world)
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by {world} data-parallel ranks")
    per = batch_size // world
    n = len(cast(Sized, dataset))  # map-style datasets of the zoo all have a length
    start = step * batch_size + rank * per
    if made_on_device(dataset):
        index = (start + torch.arange(per, device=device or "cpu", dtype=torch.int64)) % n
        return cast(Any, dataset).samples(index)
    samples = [dataset[(start + k) % n] for k in range(per)]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def _import(path: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
