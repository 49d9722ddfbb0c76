"""Input pipelines that cost CPU like users' do, run as tunable stage chains (see pipeline.py).

`build(data, seq_len, model_config, seed)` is what `saturn.zoo.data` calls for the `image-files`
and `token-files` dataset names; `make_image_files` writes a synthetic JPEG set for tests and
benchmarks.
"""

from __future__ import annotations

import os
from typing import Any

from saturn.data.images import ImageFiles, make_image_files
from saturn.data.pipeline import Pipeline, Stage
from saturn.data.text import TokenFiles
from saturn.data.tuner import PipelineTuner

DATASETS = ("image-files", "token-files")

__all__ = ["DATASETS", "DEFAULT_PREFETCH", "ImageFiles", "Pipeline", "PipelineDataset", "PipelineTuner", "Stage",
           "TokenFiles",
           "build", "default_cores", "host_gpus", "make_image_files", "size", "with_defaults"]


def __getattr__(name: str) -> Any:  # torch-backed pieces load on first use: worker processes stay light
    if name == "PipelineDataset":
        from saturn.data.dataset import PipelineDataset

        return PipelineDataset
    raise AttributeError(f"module 'saturn.data' has no attribute {name!r}")


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from saturn.data.dataset import PIPELINE_KWARGS

    pipe = {k: v for k, v in kwargs.items() if k in PIPELINE_KWARGS}
    return pipe, {k: v for k, v in kwargs.items() if k not in PIPELINE_KWARGS}


def _path(data: Any) -> str:
    if not data.path:
        raise ValueError(f"dataset {data.name!r} needs `path:` (a directory of images / text files)")
    return os.path.expanduser(data.path)


def _source(data: Any, seq_len: int, model_config: Any, seed: int) -> tuple[Any, dict[str, Any]]:
    pipe, rest = _split(dict(data.kwargs))
    if data.name == "image-files":
        size = getattr(model_config, "image_size", None) or rest.pop("out_size", 32)
        rest.pop("out_size", None)
        gen = rest.pop("generate", None)
        if gen:
            make_image_files(_path(data), int(gen), size=max(int(size) * 2, 16),
                             num_classes=getattr(model_config, "num_classes", None) or 10, seed=seed)
        return ImageFiles(_path(data), out_size=int(size), seed=seed, **rest), pipe
    if data.name == "token-files":
        vocab = getattr(model_config, "vocab_size", None) or rest.pop("vocab_size", None)
        if vocab is None:
            raise ValueError("token-files needs a language model (with vocab_size)")
        rest.pop("vocab_size", None)
        return TokenFiles(_path(data), seq_len=seq_len, vocab_size=int(vocab), **rest), pipe
    raise ValueError(f"unknown pipeline dataset {data.name!r}; allowed: {list(DATASETS)}")


DEFAULT_PREFETCH = 4  # batches in flight ahead of the step when the workload does not say


def host_gpus() -> int:
    """GPUs on this host (not only the ones this process sees: a job's workers see their own)."""
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_cores() -> int:
    """One training process's share of the host's cores for its input pipeline when the workload
    gives no `cores:`: the cores this process may run on, split evenly over the host's GPUs (one
    training process each at most), less one for the training loop itself."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable // max(1, host_gpus()) - 1)


def with_defaults(source: Any, pipe: dict[str, Any]) -> dict[str, Any]:
    """The pipeline settings of a workload's `data.kwargs`, with what it leaves out filled in so
    the input runs ahead of the step from the first batch: the tuner on, this process's share of
    the cores (`default_cores`) split over the stages from the start, a prefetch depth of 4, and
    the stages in worker processes when that share is 2 cores or more (GIL-holding decode and
    augment code scales over processes, not threads; one core gains nothing from the hop)."""
    from saturn.data.tuner import initial_workers

    out = dict(pipe)
    out.setdefault("tune", True)
    out.setdefault("prefetch", DEFAULT_PREFETCH)
    out["cores"] = int(out.get("cores") or default_cores())
    out.setdefault("processes", out["cores"] >= 2)
    if not out.get("workers"):
        out["workers"] = initial_workers(source, out["cores"])
    return out


def build(data: Any, seq_len: int, model_config: Any, seed: int = 0) -> Any:
    from saturn.data.dataset import PipelineDataset

    source, pipe = _source(data, seq_len, model_config, seed)
    return PipelineDataset(source, **with_defaults(source, pipe))


def size(data: Any, seq_len: int) -> int:
    """Samples in the dataset without decoding anything (for epochs -> steps)."""
    import json

    if data.name == "image-files":
        index = os.path.join(_path(data), "index.json")
        if os.path.exists(index):
            with open(index) as f:
                return len(json.load(f)["files"])
        return int(data.kwargs.get("generate") or 0)
    vocab = int(data.kwargs.get("vocab_size") or 65536)
    return len(TokenFiles(_path(data), seq_len=seq_len, vocab_size=vocab))
