"""Which jobs may train as one fused group, decided from their specs alone (no torch).

Why a module of its own: the planner and `saturn plan` must refuse a bad grouping before anything
is built or launched, and they never import torch. A fused group stacks its members' parameters
and runs one batched forward/backward for all of them (`saturn.fused.engine`), so everything that
shapes a step's tensors must be equal across members: the model architecture (resolved zoo config
or factory + kwargs), local weights file, batch size, sequence length, dataset spec (each
member still reads its own samples: synthetic data is seeded by the job's seed) and precision.
The optimizer *class* must be equal too (each member steps its own optimizer of that class: see
the engine); everything else the optimizer takes (lr, weight decay, betas, eps, momentum...)
and the seed may differ -- that is what a sweep varies.

Refused with a reason (`FusionRefusal`, a `SpecError`: the CLI's exit 2):
* members whose shapes differ, as above (the first differing field is named, with both values);
* zoo GPT models with dropout > 0: vmap draws one random stream for the whole group, so a
  member's dropout masks could not be its solo run's;
* staged file pipelines (`image-files`, `token-files`): their tuner and prefetch workers are
  per job (saturn.data) and are not shared by a group;
* fewer than one member or duplicate names.
User factories are further checked by building them (`saturn.fused.vmap_check`): in-place
buffer updates, data-dependent control flow and random ops do not vmap.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from saturn.errors import SpecError

PREFIX = "fused:"
TECHNIQUE = "fused"


class FusionRefusal(SpecError):
    """These jobs cannot train as one fused group; the message says which field differs."""


def group_name(members: Sequence[str]) -> str:
    """The planner's pseudo-job name of a fused group (members in the given order)."""
    if not members:
        raise FusionRefusal("a fused group needs at least one job")
    return PREFIX + "+".join(members)


def members_of(name: str) -> list[str]:
    return name[len(PREFIX):].split("+") if str(name).startswith(PREFIX) else []


def is_group(name: str) -> bool:
    return str(name).startswith(PREFIX)


def shape_key(job: Any) -> dict[str, Any]:
    """What must be equal across a fused group's members (module docstring), as plain values."""
    from saturn.zoo.configs import architecture

    return {"model": architecture(job.model), "weights": job.model.weights,
            "batch_size": job.batch_size, "seq_len": job.seq_len,
            "data": job.data.model_dump(mode="json"),
            "precision": job.precision, "optimizer": job.optimizer.name}


def _own_refusal(job: Any) -> str:
    """Why `job` cannot be a fused member whatever its group ('' if it can)."""
    from saturn.zoo.configs import PIPELINE_DATASETS

    if job.data.name in PIPELINE_DATASETS:
        return (f"job {job.name!r}: dataset {job.data.name!r} is a staged file pipeline with a per-job "
                "tuner (saturn.data); fused groups read synthetic-* or text-file data")
    arch = shape_key(job)["model"]
    if arch.get("family") == "gpt" and float(arch.get("dropout") or 0) > 0:
        return (f"job {job.name!r}: model.overrides.dropout = {arch['dropout']} -- vmap draws one random "
                "stream for the whole group, so a member's dropout masks would not be its solo run's; "
                "use dropout 0 to fuse it")
    return ""


def refusal(jobs: Sequence[Any]) -> str:
    """Why `jobs` cannot train as one fused group ('' when they can)."""
    if not jobs:
        return "a fused group needs at least one job"
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        return f"a fused group lists a job twice: {names}"
    for job in jobs:
        own = _own_refusal(job)
        if own:
            return own
    first, key0 = jobs[0], shape_key(jobs[0])
    for job in jobs[1:]:
        key = shape_key(job)
        for field, v0 in key0.items():
            if key[field] != v0:
                return (f"jobs {first.name!r} and {job.name!r} differ in {_label(field)} "
                        f"({_short(v0)} vs {_short(key[field])}); a fused group stacks its members' "
                        "tensors, so only optimizer hyperparameters and the seed may differ")
    return ""


def check_group(jobs: Sequence[Any]) -> None:
    """Raise `FusionRefusal` naming the reason if `jobs` cannot be fused (see `refusal`)."""
    why = refusal(jobs)
    if why:
        raise FusionRefusal(why)


def _label(field: str) -> str:
    return {"model": "model architecture", "weights": "model.weights", "batch_size": "batch_size",
            "seq_len": "seq_len", "data": "data", "precision": "precision",
            "optimizer": "optimizer.name"}[field]


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def shapes(jobs: Sequence[Any]) -> list[list[Any]]:
    """`jobs` partitioned into fusable shapes (equal `shape_key`, no own refusal), in order; a job
    that cannot be fused at all is left out."""
    out: dict[str, list[Any]] = {}
    for job in jobs:
        if not _own_refusal(job):
            out.setdefault(json.dumps(shape_key(job), sort_keys=True, default=str), []).append(job)
    return list(out.values())
