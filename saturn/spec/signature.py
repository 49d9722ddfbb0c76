"""Profile signatures: one profile serves every job that would run at the same speed and memory.

The signature hashes what decides step time and memory — the resolved model architecture, batch
size, sequence length, precision, optimizer *type* and the input kind — and nothing else: jobs that
differ only in learning rate, seed or step count share a signature, so a sweep over 8 learning
rates is profiled once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional


def signature_fields(job: Any) -> dict[str, Any]:
    from saturn.zoo import architecture

    data = job.data.name or job.data.factory
    return {
        "model": architecture(job.model),
        "batch_size": job.batch_size,
        "seq_len": job.seq_len,
        "precision": job.precision,
        "optimizer": job.optimizer.name,
        "data": data,
        # pinned knobs change what is measured; absent (None) keeps older signatures unchanged
        **({"knobs": job.knobs} if getattr(job, "knobs", None) else {}),
    }


def profile_signature(job: Any) -> str:
    """12 hex characters, stable across runs, machines and Python versions."""
    blob = json.dumps(signature_fields(job), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# What a job trains: a checkpoint of another definition is not this job's to resume (#28). Not
# its length (a job may be extended and resumed), nor where and how it may run.
DEFINITION_FIELDS = ("model", "data", "batch_size", "seq_len", "optimizer", "precision", "seed")


def definition_hash(job: Any) -> str:
    """12 hex characters over DEFINITION_FIELDS of a Job or of its `model_dump(mode="json")`."""
    d = job.model_dump(mode="json") if hasattr(job, "model_dump") else dict(job)
    blob = json.dumps({k: d.get(k) for k in DEFINITION_FIELDS}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _shape(v: Any) -> Any:
    """`v` with its numbers masked: keys, strings, types and list lengths stay."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return "<number>"
    if isinstance(v, dict):
        return {str(k): _shape(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_shape(x) for x in v]
    return type(v).__name__


def factory_digest(path: Optional[str]) -> Optional[str]:
    """sha256 (12 hex) of the source file of the module a 'pkg.module:function' path names
    (None: no factory; "unreadable" when it cannot be found)."""
    if not path:
        return None
    import importlib.util

    module = path.partition(":")[0]
    try:
        spec = importlib.util.find_spec(module)
        origin = spec.origin if spec is not None else None
        with open(origin or "", "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:12]
    except (ImportError, OSError, ValueError, AttributeError):
        return "unreadable"


def inputs_hash(job: Any) -> str:
    """What a *failed* profile trial depended on beyond its signature (#28): the structure of the
    job's model, data and optimizer spec (numbers masked, so an lr sweep shares one hash, while an
    added kwarg or a list of another length does not) and the contents of the factory modules it
    names. A stored failure is trusted only while this is unchanged; fixing the factory or the
    spec makes Saturn try the option again."""
    d = job.model_dump(mode="json") if hasattr(job, "model_dump") else dict(job)
    model, data = d.get("model") or {}, d.get("data") or {}
    blob = json.dumps({"spec": {k: _shape(d.get(k)) for k in ("model", "data", "optimizer")},
                       "model_factory": factory_digest(model.get("factory") if isinstance(model, dict) else None),
                       "data_factory": factory_digest(data.get("factory") if isinstance(data, dict) else None)},
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
