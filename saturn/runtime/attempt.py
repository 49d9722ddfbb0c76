"""One attempt of one job, typed, on its way to a process and back.

`Attempt` says "job J, attempt N, technique T, knobs K, devices D, steps S..S+n, checkpoint dir,
paths"; the executor's backends build it once (`saturn.executor.backends.attempts.attempt_for`), a
cold job runner reads it from its JSON file and a warm attempt gets the object itself (both through
`to_dict`/`from_dict`: one serialised form). What comes back is one `RunResult`, written atomically
to `result_path` by the runner and read back by the backend, which turns it into its event.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Optional


@dataclass(frozen=True)
class Attempt:
    job: dict[str, Any]  # the job's definition, `Job.model_dump(mode="json")`
    attempt: int
    technique: str
    knobs: dict[str, Any]
    gpus: list[int]  # device ids on the node (CUDA_VISIBLE_DEVICES order) or CPU slots
    start_step: int
    num_steps: int
    checkpoint_dir: str
    device_type: str  # "auto" | "cuda" | "cpu"
    log_path: str
    progress_path: str  # one JSONL line per checkpoint / metrics line
    result_path: str  # the attempt's RunResult (JSON)
    checkpoint_every: int = 0
    grace_s: float = 60.0
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the attempt
    node: Optional[str] = None  # where it runs (multi-node backends)

    @property
    def name(self) -> str:
        return str(self.job["name"])

    @property
    def end_step(self) -> int:
        return self.start_step + self.num_steps

    def with_(self, **changes: Any) -> "Attempt":
        """A copy with some fields changed (e.g. a node's local checkpoint dir, physical GPUs)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Attempt":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def write(self, path: "str | os.PathLike") -> None:
        """The attempt as JSON at `path` (write-then-rename: a runner never reads half a file)."""
        _write_json(path, self.to_dict(), indent=1)


@dataclass
class RunResult:
    """Outcome of an attempt (`Technique.run`): where training stopped and where its checkpoint is."""

    status: str  # "completed" | "interrupted" | "failed" | "oom" (device) | "host_oom" (host)
    step: int  # next step to run (== start_step + steps actually done)
    checkpoint: Optional[str] = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    reason: str = ""
    durable: bool = True  # False: `checkpoint` is still being written by a warm worker's drain
    phases: dict[str, float] = field(default_factory=dict)  # launch_s, steps_s, *_block_s (training loop)
    # the typed cause of a failure (saturn.runtime.causes): the exception's type, or the signal
    # that killed a worker, and the host memory its process tree was seen at vs the node's limit
    error_type: str = ""
    signal: Optional[int] = None
    host_peak_gb: Optional[float] = None
    host_limit_gb: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunResult":
        return cls(status=str(d.get("status", "failed")), step=int(d.get("step", 0)),
                   checkpoint=d.get("checkpoint"), losses=list(d.get("losses") or []),
                   reason=str(d.get("reason", "")), durable=bool(d.get("durable", True)),
                   phases=dict(d.get("phases") or {}), error_type=str(d.get("error_type") or ""),
                   signal=_opt_int(d.get("signal")), host_peak_gb=_opt_float(d.get("host_peak_gb")),
                   host_limit_gb=_opt_float(d.get("host_limit_gb")))

    def write(self, path: "str | os.PathLike", **extra: Any) -> None:
        """The result as JSON at `path`, atomically (`extra`: more keys, e.g. a SHARP group)."""
        _write_json(path, {**self.to_dict(), **extra})

    @classmethod
    def read(cls, path: "str | os.PathLike") -> Optional["RunResult"]:
        """The result written at `path`; None when there is none (the runner died first)."""
        try:
            with open(path) as f:
                return cls.from_dict(json.load(f))
        except (OSError, ValueError):
            return None


def _opt_int(v: Any) -> Optional[int]:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def _opt_float(v: Any) -> Optional[float]:
    try:
        f = None if v is None else float(v)
    except (TypeError, ValueError):
        return None
    return f if f is not None and f == f and abs(f) != float("inf") else None


def _write_json(path: "str | os.PathLike", obj: Any, indent: Optional[int] = None) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)
    os.replace(tmp, path)
