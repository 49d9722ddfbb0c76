"""The prior's view of a model: its `ModelShape` (parameters, layers, width, tokens, classes).

Zoo models are shaped from their config without torch (planning never imports torch); a user
factory's model is built on the meta device. Shapes are cached per job signature.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

from saturn.parse import num as _num
from saturn.prior.cost_model import ModelShape

log = logging.getLogger(__name__)

_shape_cache: dict[str, Optional[ModelShape]] = {}


def shape_of(model_name: Optional[str], overrides: Optional[dict], batch_size: int, seq_len: int,
             precision: str, label: str = "") -> Optional[ModelShape]:
    """The shape of a zoo model (None for names the zoo does not know)."""
    from saturn.zoo import model_config
    from saturn.zoo.configs import GPTConfig  # torch-free: planning never imports torch

    if not model_name:
        return None
    try:
        cfg = model_config(model_name, dict(overrides or {}))
    except (ValueError, TypeError):
        return None
    d, L = cfg.n_embd, cfg.n_layer
    if isinstance(cfg, GPTConfig):
        return ModelShape(cfg.params(), L * 12 * d * d + cfg.vocab_size * d, L, d, int(seq_len), int(batch_size),
                          cfg.vocab_size, True, 12 * L + 6, precision, label or model_name)
    patch = cfg.channels * cfg.patch_size ** 2 * d
    return ModelShape(cfg.params(), L * 12 * d * d + cfg.num_classes * d + patch, L, d, cfg.n_patches + 1,
                      int(batch_size), cfg.num_classes, False, 12 * L + 8, precision, label or model_name)


def _factory_shape(job: Any) -> Optional[ModelShape]:
    """A user factory's model built on the meta device: parameters and blocks, tokens = seq_len."""
    import torch

    from saturn.zoo import build_model

    with torch.device("meta"):
        model = build_model(job.model, device="meta")
    params = sum(p.numel() for p in model.parameters())
    blocks = model.blocks() or list(model.layers)
    L = max(1, len(blocks))
    d = max(1, int(math.sqrt(max(params, 1) / (12 * L))))
    return ModelShape(int(params), int(params), L, d, int(job.seq_len), int(job.batch_size), 1, True,
                      sum(1 for _ in model.parameters()), job.precision, job.model.label())


def model_shape(job: Any) -> Optional[ModelShape]:
    """The prior's view of a job (cached per signature); None when it cannot be shaped."""
    sig = str(job.signature)
    if sig not in _shape_cache:
        try:
            shape = (shape_of(job.model.name, job.model.overrides, job.batch_size, job.seq_len, job.precision)
                     if job.model.name else _factory_shape(job))
        except Exception as exc:  # noqa: BLE001 - a model the prior cannot shape just has no estimate
            log.info("the prior cannot shape %s: %s", job.model.label(), exc)
            shape = None
        _shape_cache[sig] = shape
    return _shape_cache[sig]


def row_shape(row: dict, by_signature: dict[str, ModelShape]) -> Optional[ModelShape]:
    """A stored row's shape: this workload's job with its signature, else the zoo model it names."""
    sig = str(row.get("signature"))
    if sig in by_signature:
        return by_signature[sig]
    name = row.get("model")
    if not isinstance(name, str) or not name:
        return None
    b, s = _num(row.get("batch_size"), math.nan), _num(row.get("seq_len"), 512.0)
    if not math.isfinite(b):
        return None
    prec = row.get("precision") if isinstance(row.get("precision"), str) else "bf16"
    return shape_of(name, None, int(b), int(s), str(prec))
