"""Profile signatures: one profile serves every job that would run at the same speed and memory.

The signature hashes what decides step time and memory — the resolved model architecture, batch
size, sequence length, precision, optimizer *type* and the input kind — and nothing else: jobs that
differ only in learning rate, seed or step count share a signature, so a sweep over 8 learning
rates is profiled once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


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
