"""The one seeded initialization rule: models are built on the meta device and initialized in place.

Why: building a model in fp32 on the CPU and copying it to the GPU cost most of a job's start
(tens of seconds for GPT-2 large). A model built on the meta device costs nothing; `materialize`
then allocates its parameters directly where they live (this rank's GPU, this rank's FSDP shard,
this pipeline stage's layers, or host memory for spilling) and fills them by THE RULE below.

THE RULE. A parameter's values are a pure function of (seed, parameter FQN, element index):

    key(seed, fqn)      = first 8 bytes of sha256(f"{seed}:{fqn}") (as int64)
    h(p)                = splitmix64(key + (p + 1) * 0x9E3779B97F4A7C15)  for pair p = i // 2
    u1, u2              = (bits 40..63 of h + 0.5) / 2**24, (bits 16..39 of h + 0.5) / 2**24
    normal(i)           = sqrt(-2 ln u1) * (cos if i even else sin)(2 pi u2)  (Box-Muller, fp32)

and, by what the parameter is:

    LayerNorm weight                                   -> 1
    any bias, `cls_token`                              -> 0
    residual output projections (`c_proj.weight`,
      `out_proj.weight`, ViT `mlp.2.weight`)           -> 0.02 / sqrt(2 * n_layer) * normal
    every other parameter (linear, conv, embeddings,
      position tables)                                 -> 0.02 * normal

(GPT-2 / ViT practice: N(0, 0.02), residual projections scaled down with depth.) FQNs are those of
the plain `SequentialModel` (`layers.3.attn.c_attn.weight`), which DDP, FSDP2, pipeline stages,
ZeRO and spilling all keep. Because the value of element i does not depend on which process makes
it, on what device, or which other elements it makes, every technique and GPU count starts from
the same weights: an FSDP rank computes only its shard's indices, a pipeline stage only its
layers, and a checkpoint written by any of them is interchangeable with the others'. Integer
hashing is exact on every device; CPU and GPU agree up to the rounding of float32 log/cos
(~1 ulp), so CPU test slots and GPU slots agree closely but not bit-for-bit.

User models from a factory string are the exception: they are built by the user's code on the CPU
under `torch.manual_seed(seed)` and moved (the factory may load weights or use its own init).
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Optional

import torch
from torch import nn

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_RESIDUAL = re.compile(r"(c_proj|out_proj|mlp\.2)\.weight$")
_CHUNK = 1 << 24  # elements hashed at once (bounds temporary memory to ~0.5 GB)


def _i64(x: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


def _lsr(z: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> n) & ((1 << (64 - n)) - 1)


def param_key(seed: int, fqn: str) -> int:
    return _i64(int.from_bytes(hashlib.sha256(f"{seed}:{fqn}".encode()).digest()[:8], "little"))


def _mix(pair: torch.Tensor, key: int) -> torch.Tensor:
    """splitmix64 of int64 pair indices under `key`, in place where possible."""
    z = pair.to(torch.int64).add_(1).mul_(_i64(_GOLDEN)).add_(key)
    z.bitwise_xor_(_lsr(z, 30)).mul_(_i64(_MIX1))
    z.bitwise_xor_(_lsr(z, 27)).mul_(_i64(_MIX2))
    return z.bitwise_xor_(_lsr(z, 31))


def _polar(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(radius, angle) of Box-Muller from the hashed bits."""
    u1 = _lsr(z, 40).to(torch.float32).add_(0.5).mul_(1.0 / (1 << 24))
    u2 = (_lsr(z, 16) & 0xFFFFFF).to(torch.float32).add_(0.5).mul_(2.0 * math.pi / (1 << 24))
    return u1.log_().mul_(-2.0).sqrt_(), u2


def standard_normal(key: int, index: torch.Tensor) -> torch.Tensor:
    """float32 N(0, 1) values for int64 global indices `index` under `key` (the rule above):
    element i is r cos(theta) (even i) or r sin(theta) (odd i) of pair i // 2."""
    r, theta = _polar(_mix(index >> 1, key))
    odd = (index & 1).bool()
    return torch.where(odd, theta.sin(), theta.cos()).mul_(r)


def normal_range(key: int, start: int, n: int, device: Any) -> torch.Tensor:
    """`standard_normal(key, arange(start, start + n))`, hashing each pair once (2x faster)."""
    p0, p1 = start >> 1, (start + n + 1) >> 1
    r, theta = _polar(_mix(torch.arange(p0, p1, dtype=torch.int64, device=device), key))
    both = torch.stack([theta.cos().mul_(r), theta.sin().mul_(r)], dim=1).view(-1)
    lo = start - 2 * p0
    return both[lo:lo + n]


def init_kind(model: nn.Module, fqn: str) -> tuple[str, float]:
    """("ones" | "zeros" | "normal", std) for the parameter `fqn` of `model`, by the rule."""
    owner_name, _, leaf = fqn.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if isinstance(owner, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
        return ("ones", 0.0) if leaf == "weight" else ("zeros", 0.0)
    if leaf.endswith("bias") or leaf == "cls_token":
        return "zeros", 0.0
    cfg = getattr(model, "config", None)
    n_layer = int(getattr(cfg, "n_layer", 0) or 0)
    if _RESIDUAL.search(fqn) and n_layer:
        return "normal", 0.02 / math.sqrt(2 * n_layer)
    return "normal", 0.02


def _global_indices(global_shape: tuple[int, ...], local_shape: tuple[int, ...],
                    offset: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Flat global indices of the local block [offset, offset + local_shape) of a tensor."""
    strides = [1] * len(global_shape)
    for d in range(len(global_shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * global_shape[d + 1]
    idx = torch.zeros((), dtype=torch.int64, device=device)
    for d, (n, off, st) in enumerate(zip(local_shape, offset, strides)):
        shape = [1] * len(local_shape)
        shape[d] = n
        idx = idx + ((torch.arange(n, device=device, dtype=torch.int64) + off) * st).view(shape)
    return idx.expand(local_shape) if local_shape else idx


def fill_by_rule(model: nn.Module, fqn: str, param: torch.Tensor, seed: int,
                 gen_device: Optional[torch.device] = None) -> None:
    """Overwrite `param` (plain tensor or DTensor shard) with its values under the rule."""
    kind, std = init_kind(model, fqn)
    local, global_shape, offset = param, tuple(param.shape), (0,) * param.dim()
    if _is_dtensor(param):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        dt: Any = param
        local = dt.to_local()
        _, offset = compute_local_shape_and_global_offset(dt.shape, dt.device_mesh, dt.placements)
        offset = tuple(offset)
    with torch.no_grad():
        if kind != "normal" or local.numel() == 0:
            local.fill_(1.0 if kind == "ones" else 0.0)
            return
        dev = gen_device or local.device
        key = param_key(seed, fqn)
        contiguous_rows = all(o == 0 for o in offset[1:]) and tuple(local.shape[1:]) == global_shape[1:]
        if contiguous_rows:  # the common case (unsharded, or sharded on dim 0): chunked ranges
            start = offset[0] * math.prod(global_shape[1:]) if local.dim() else 0
            flat = local.view(-1) if local.is_contiguous() else None
            n = local.numel()
            out = flat if flat is not None else torch.empty(n, dtype=local.dtype, device=local.device)
            for lo in range(0, n, _CHUNK):
                hi = min(n, lo + _CHUNK)
                out[lo:hi].copy_(normal_range(key, start + lo, hi - lo, dev).mul_(std))
            if flat is None:
                local.copy_(out.view(local.shape))
            return
        idx = _global_indices(global_shape, tuple(local.shape), offset, dev)
        local.copy_(standard_normal(key, idx).mul_(std))


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def is_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def materialize(model: nn.Module, device: Any, seed: int,
                gen_device: Optional[Any] = None) -> nn.Module:
    """Allocate a meta-built model on `device` (uninitialized) and fill it by the rule; values are
    computed on `gen_device` (default: `device`). A model that is already real is only moved."""
    device = torch.device(device)
    if not is_meta(model):
        return model if device.type == "meta" else model.to(device)
    if device.type == "meta":
        return model
    model.to_empty(device=device)
    gen = torch.device(gen_device) if gen_device is not None else None
    for fqn, p in model.named_parameters():
        fill_by_rule(model, fqn, p, seed, gen)
    for _, b in model.named_buffers():
        with torch.no_grad():
            b.zero_()
    return model
