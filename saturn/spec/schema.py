"""The workload spec: what the user writes in YAML, as validated Python objects.

Pydantic models with `extra="forbid"` everywhere, because a typo in a key (`bach_size`) must be an
error, never a silently ignored setting. Raw YAML is expanded (defaults merged, sweeps multiplied)
by `saturn.spec.load` before it reaches these models, so each `Job` here is complete.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from saturn.spec import limits as L


def _number_not_bool(v: Any) -> Any:
    """`steps: true` would be read as 1 step (pydantic's lax mode casts booleans to numbers)."""
    if isinstance(v, bool):
        raise ValueError(f"must be a number, not the boolean {str(v).lower()}")
    return v


NotBool = BeforeValidator(_number_not_bool)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


class ModelSpec(_Strict):
    """A zoo model by `name` with architecture overrides, or a user factory `pkg.module:function`."""

    name: Optional[str] = None
    factory: Optional[str] = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    overrides: dict[str, Any] = Field(default_factory=dict)
    weights: Optional[str] = None  # local directory or file with a state dict

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return name_or_factory(v)

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if (self.name is None) == (self.factory is None):
            raise ValueError("give exactly one of `name` (a zoo model, see `saturn validate --zoo`) "
                             "or `factory` (an import path 'pkg.module:function')")
        if self.name is not None:
            from saturn.zoo import check_model_name

            L.check_overrides(self.overrides)
            check_model_name(self.name, self.overrides)
        if self.factory is not None:
            _check_import_path(self.factory)
            L.check_callable(self.factory, "model factory")
        return self

    def label(self) -> str:
        return self.name or self.factory or "?"


class DataSpec(_Strict):
    """A built-in dataset by `name` (synthetic streams or a local text file), or a user factory."""

    name: Optional[str] = None
    factory: Optional[str] = None
    path: Optional[str] = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return name_or_factory(v)

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        from saturn.zoo.configs import DATASETS

        if (self.name is None) == (self.factory is None):
            raise ValueError(f"give exactly one of `name` (one of {sorted(DATASETS)}) or `factory` "
                             "(an import path 'pkg.module:function')")
        if self.name is not None and self.name not in DATASETS:
            raise ValueError(f"unknown dataset {self.name!r}; allowed: {sorted(DATASETS)}")
        if self.name == "text-file" and not self.path:
            raise ValueError("dataset 'text-file' needs `path: path/to/file.txt`")
        if self.factory is not None:
            _check_import_path(self.factory)
            L.check_callable(self.factory, "data factory")
        return self


class OptimizerSpec(_Strict):
    """Optimizer name plus its keyword arguments (lr, betas, weight_decay...)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: Annotated[float, NotBool] = 3e-4

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError("must be a finite number > 0, e.g. 3e-4")
        if v > L.MAX_LR:
            raise ValueError(f"is over MAX_LR = {L.MAX_LR:g}")
        return v

    @model_validator(mode="after")
    def _finite_kwargs(self) -> "OptimizerSpec":
        for k, v in (self.model_extra or {}).items():
            for x in (v if isinstance(v, (list, tuple)) else [v]):
                L.check_finite_number(x, f"optimizer.{k}")
        return self

    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if k != "name"}


class Job(_Strict):
    """One training job: a model, its data and hyperparameters, and what Saturn may choose from."""

    name: str = Field(pattern=L.NAME_PATTERN, max_length=L.MAX_NAME_LEN)
    model: ModelSpec
    data: DataSpec = Field(default_factory=lambda: DataSpec(name="synthetic-tokens"))
    batch_size: Annotated[int, NotBool] = Field(gt=0, le=L.MAX_BATCH_SIZE)
    seq_len: Annotated[int, NotBool] = Field(default=512, gt=0, le=L.MAX_SEQ_LEN)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    steps: Annotated[Optional[int], NotBool] = Field(default=None, gt=0, le=L.MAX_STEPS)
    epochs: Annotated[Optional[float], NotBool] = Field(default=None, gt=0, le=L.MAX_EPOCHS, allow_inf_nan=False)
    # None: every registered technique. Names and pinned knobs are checked against the registry
    # where a workload comes in (saturn.techniques.checks): the spec imports no plug-in.
    techniques: Optional[list[str]] = None
    gpus: Optional[list[Annotated[int, NotBool]]] = None  # None: 1, 2, 4, ... up to the largest node
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    # exact: fp32 master weights + moments (plain AdamW) | low-memory: options that round them (saturn.numerics)
    numerics: Literal["exact", "low-memory"] = "exact"
    seed: Annotated[int, NotBool] = Field(default=0, ge=0, le=L.MAX_SEED)
    knobs: Optional[dict[str, dict[str, Any]]] = None  # technique -> knob values to pin (saturn techniques)
    # priority under `objective: weighted_completion`
    weight: Annotated[float, NotBool] = Field(default=1.0, gt=0, le=L.MAX_WEIGHT, allow_inf_nan=False)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_count_list(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):  # `gpus: 3`: say what the field holds
            raise ValueError(f"must be a list of the GPU counts Saturn may give the job (not GPU ids): "
                             f"`gpus: [{v}]` for exactly {v}, or e.g. `gpus: [1, 2, 4]` to let the planner choose")
        return v

    @field_validator("gpus")
    @classmethod
    def _gpu_counts(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        if v is None:
            return v
        if not v or any((not isinstance(g, int)) or g < 1 for g in v):
            raise ValueError("must be a non-empty list of positive GPU counts, e.g. [1, 2, 4]")
        if max(v) > 1024:
            raise ValueError("GPU counts above 1024 per job are over the planner's limit (1024)")
        return sorted(set(v))

    @model_validator(mode="after")
    def _numerics(self) -> "Job":
        if self.numerics == "low-memory" and self.precision == "fp32":
            raise ValueError("numerics: low-memory lets Saturn round optimizer state and gradients to bf16, which "
                             "precision: fp32 forbids; use numerics: exact or precision: bf16")
        return self

    @model_validator(mode="after")
    def _length(self) -> "Job":
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of `steps` (optimizer steps) or `epochs`")
        return self

    @model_validator(mode="after")
    def _fits_model(self) -> "Job":
        """Optimizer kwargs, betas, seq_len vs positions, data kind vs model kind (saturn.spec.checks)."""
        from saturn.spec.checks import check_job

        check_job(self)
        return self

    @property
    def total_steps(self) -> int:
        """Steps to train; epochs are turned into steps with the dataset's size."""
        if self.steps is not None:
            return self.steps
        from saturn.zoo.data import dataset_size

        assert self.epochs is not None  # the validator demands exactly one of steps / epochs
        size = dataset_size(self.data, self.seq_len)
        return max(1, math.ceil(size / self.batch_size * float(self.epochs)))

    @property
    def signature(self) -> str:
        from saturn.spec.signature import profile_signature

        return profile_signature(self)


class Node(_Strict):
    name: str = Field(min_length=1, max_length=L.MAX_NAME_LEN)
    gpus: Annotated[int, NotBool] = Field(gt=0, le=L.MAX_NODE_GPUS)
    gpu_memory_gb: Annotated[float, NotBool] = Field(default=80.0, gt=0, le=1e5, allow_inf_nan=False)
    gpu_type: str = "H200"
    cpu_cores: Annotated[Optional[int], NotBool] = Field(default=None, gt=0)  # input pipelines (saturn.data)
    # host RAM its jobs share (saturn.profiles.host_memory); None = not planned (local nodes: probed)
    host_memory_gb: Annotated[Optional[float], NotBool] = Field(default=None, gt=0, le=1e6, allow_inf_nan=False)


class RaySpec(_Strict):
    """A Ray cluster: nodes and GPUs are discovered from it at execution time (see
    saturn.executor.build.resolve_cluster and saturn.executor.ray_cluster).

    checkpoint_root: storage every node can read and write (a shared filesystem path, or an fsspec
    URL such as s3://bucket/saturn); default: the run directory, which must then be shared.
    devices: cpu plans on each node's custom `saturn_slots` resource (tests/CI); auto = GPUs if any.
    """

    address: str = "auto"
    checkpoint_root: Optional[str] = None
    devices: Literal["auto", "cuda", "cpu"] = "auto"
    slots: Annotated[Optional[int], NotBool] = Field(default=None, gt=0, le=L.MAX_NODE_GPUS)  # cpu: per node
    gpu_memory_gb: Annotated[Optional[float], NotBool] = Field(default=None, gt=0, le=1e5, allow_inf_nan=False)


class Cluster(_Strict):
    """Where jobs run: explicit nodes (plan for a cluster you are not on), local devices, or Ray.

    `devices: cpu` makes `slots` CPU "GPUs" so that everything runs on a laptop or CI machine.
    """

    nodes: Optional[list[Node]] = None
    devices: Literal["auto", "cuda", "cpu"] = "auto"
    slots: Annotated[Optional[int], NotBool] = Field(default=None, gt=0, le=L.MAX_NODE_GPUS)
    ray: Optional[RaySpec] = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        if v == "local":
            return {"devices": "auto"}
        if isinstance(v, str):
            raise ValueError(f"{v!r} is not a cluster; write `local`, `{{devices: cpu, slots: 4}}` "
                             "or `{nodes: [{name: node0, gpus: 4, gpu_memory_gb: 141}]}`")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Cluster":
        if self.nodes is not None:
            if not self.nodes:
                raise ValueError("`nodes` is empty; give at least one {name, gpus}")
            names = [n.name for n in self.nodes]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"node names must be unique; repeated: {sorted(dup)}")
        if self.slots is not None and self.devices != "cpu":
            raise ValueError("`slots` applies to `devices: cpu` only")
        return self

    @classmethod
    def local(cls) -> "Cluster":
        return cls(devices="auto")

    def resolved(self) -> "Cluster":
        """Explicit nodes for this cluster: detects local GPUs (or CPU slots) when not given.

        Never connects anywhere: a Ray cluster's nodes are discovered by the execution layer
        (`saturn.executor.build.resolve_cluster`), which every front door calls first."""
        if self.nodes is not None:
            return self
        if self.ray is not None:
            from saturn.errors import SaturnError

            raise SaturnError("cluster.ray: a Ray cluster's nodes are discovered when it is used; resolve it "
                              "with saturn.executor.build.resolve_cluster(cluster) (saturn plan/run/profile "
                              "and the Python API do this)")
        return Cluster(nodes=[_detect_local_node(self.devices, self.slots)],
                       devices=self.devices if self.devices != "auto" else _auto_devices())

    @property
    def is_cpu(self) -> bool:
        nodes = self.resolved().nodes or []
        return all(n.gpu_type == "cpu" for n in nodes)

    @property
    def max_gpus(self) -> int:
        return max(n.gpus for n in self.resolved().nodes or [])


def known_max_gpus(cluster: Cluster) -> Optional[int]:
    """The largest node's GPU count when the spec states it (nodes, or CPU slots); None when it is
    only known after detection (local GPUs, Ray)."""
    if cluster.nodes:
        return max(n.gpus for n in cluster.nodes)
    if cluster.devices == "cpu" and cluster.slots:
        return cluster.slots
    return None


def _auto_devices() -> Literal["cuda", "cpu"]:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # planning-only installs may lack torch
        return "cpu"


def _detect_local_node(devices: str, slots: Optional[int]) -> Node:
    import socket

    from saturn.profiles.host_memory import node_host_memory_gb

    devices = _auto_devices() if devices == "auto" else devices
    if devices == "cuda":
        import torch

        if not torch.cuda.is_available():
            from saturn.errors import SpecError

            raise SpecError("cluster.devices: cuda, but torch sees no CUDA device on this machine; write "
                            "`devices: cpu` (CPU slots) or `auto`, list the cluster's `nodes` to plan for GPUs "
                            "elsewhere, or run where the GPUs are")

        props = torch.cuda.get_device_properties(0)
        return Node(name=socket.gethostname(), gpus=torch.cuda.device_count(),
                    gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    gpu_type=short_gpu_name(props.name), host_memory_gb=node_host_memory_gb())
    n = slots or max(1, min(4, (os.cpu_count() or 2) // 2))
    return Node(name="localhost", gpus=n, gpu_memory_gb=4.0, gpu_type="cpu", host_memory_gb=node_host_memory_gb())


def short_gpu_name(name: str) -> str:
    """'NVIDIA H200' -> 'H200', so profiles match across driver naming variants."""
    for token in name.replace("-", " ").split():
        if any(c.isdigit() for c in token) and token[0].isalpha():
            return token.upper()
    return name


def name_or_factory(v: Any) -> Any:
    """`gpt2-small` means {name: gpt2-small}; `pkg.mod:fn` means {factory: pkg.mod:fn}."""
    if isinstance(v, str):
        return {"factory": v} if ":" in v else {"name": v}
    return v


def _check_import_path(path: str) -> None:
    if ":" not in path or not all(path.split(":", 1)):
        raise ValueError(f"{path!r} is not an import path; write it as 'pkg.module:function'")


class Workload(_Strict):
    """A named set of jobs and the cluster they run on."""

    name: str = Field(default="workload", pattern=L.NAME_PATTERN, max_length=L.MAX_NAME_LEN)
    cluster: Cluster = Field(default_factory=Cluster.local)
    jobs: list[Job] = Field(max_length=L.MAX_JOBS)
    # what the planner minimizes (saturn/planner/objectives.py)
    objective: Literal["makespan", "mean_completion", "weighted_completion"] = "makespan"

    @model_validator(mode="after")
    def _unique_names(self) -> "Workload":
        if not self.jobs:
            raise ValueError("`jobs` is empty: give at least one job (or a `sweep`)")
        from collections import Counter

        dup = sorted(n for n, k in Counter(j.name for j in self.jobs).items() if k > 1)  # O(n): 10,000 jobs
        if dup:
            raise ValueError(f"job names must be unique; repeated: {dup} (rename them, or let the "
                             "sweep name them)")
        cap = known_max_gpus(self.cluster)
        over = [f"{j.name} (gpus {j.gpus})" for j in self.jobs if cap is not None and j.gpus and max(j.gpus) > cap]
        if over:
            raise ValueError(f"job(s) {', '.join(over)} need more GPUs than the cluster's largest node has "
                             f"({cap}); lower `gpus` or add a larger node")
        return self

    def job(self, name: str) -> Job:
        for j in self.jobs:
            if j.name == name:
                return j
        raise KeyError(name)
