"""Per-step metrics of a run, streamed live to the experiment tracker the user already uses.

    saturn run W.yaml --log-to tensorboard:runs/tb     # one TensorBoard run per job (needs `tensorboard`)
    saturn run W.yaml --log-to mlflow                  # one MLflow run per job ($MLFLOW_TRACKING_URI)
    saturn run W.yaml --log-to mlflow:http://host:5000
    saturn run W.yaml --log-to wandb:PROJECT           # one W&B run per job

Why a follower of `jobs/<job>/metrics.jsonl` and not a hook in the executor: that file is the run's
record of every trained step (flushed once per executor poll), so following it gives the tracker
exactly what `saturn results` and the curves show, for every backend (process, Ray, simulated),
without the executor knowing trackers exist. The follower is an executor display (`update(ex)` every
poll): it reads what was appended since its last read. When settling rewrites a file (steps of an
ended attempt that the next attempt repeats move out), it reads from the start again and sends only
steps it has not sent. Each tracker's library is imported when the flag is checked: a missing one is
an exit-2 error naming the package to install, before any work.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional, Protocol, Union

from saturn.errors import SaturnError
from saturn.parse import finite_or_none

PathLike = Union[str, Path]
KINDS = ("tensorboard", "mlflow", "wandb")
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


class Tracker(Protocol):
    def log(self, job: str, step: int, loss: float, wall: float, hp: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def check_log_to(spec: Optional[str], flag: str = "--log-to") -> Optional[str]:
    """`spec` if it names a tracker whose library is installed; else a SaturnError (exit 2)."""
    if spec is None:
        return None
    kind, _, arg = spec.partition(":")
    if kind not in KINDS:
        raise SaturnError(f"{flag} {spec!r}: unknown tracker {kind!r}; use tensorboard:DIR, mlflow[:TRACKING_URI] "
                          "or wandb[:PROJECT]")
    if kind == "tensorboard" and not arg:
        raise SaturnError(f"{flag} tensorboard needs a directory: --log-to tensorboard:DIR")
    try:
        if kind == "tensorboard":
            import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        else:
            __import__(kind)
    except ImportError as e:
        raise SaturnError(f"{flag} {spec}: the {kind} library is not installed here ({e}); install it "
                          f"(pip install {PACKAGES[kind]}) or pick another tracker") from None
    if kind == "tensorboard":
        from saturn.paths import check_writable_dir

        check_writable_dir(Path(arg), flag)
    return spec


def open_tracker(spec: str, run_name: str) -> Tracker:
    """The tracker `spec` names (checked by `check_log_to`), for the run called `run_name`."""
    kind, _, arg = spec.partition(":")
    if kind == "tensorboard":
        return TensorBoardTracker(Path(arg))
    if kind == "mlflow":
        return MlflowTracker(arg or None, run_name)
    return WandbTracker(arg or None, run_name)


class TensorBoardTracker:
    """One event-file folder per job under DIR (TensorBoard shows each as a run), tag `loss`."""

    def __init__(self, root: Path):
        self.root = root
        self.writers: dict[str, Any] = {}

    def log(self, job: str, step: int, loss: float, wall: float, hp: dict[str, Any]) -> None:
        w = self.writers.get(job)
        if w is None:
            from torch.utils.tensorboard import SummaryWriter

            w = self.writers[job] = SummaryWriter(log_dir=str(self.root / job))
            if hp:
                w.add_text("hyperparameters", json.dumps(hp, default=str), 0)
        w.add_scalar("loss", loss, global_step=step, walltime=wall)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


class MlflowTracker:
    """One MLflow run per job (named after it, its swept hyperparameters as params) in the
    experiment named after the Saturn run."""

    def __init__(self, uri: Optional[str], run_name: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(run_name)
        self.exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(run_name)
        self.runs: dict[str, str] = {}

    def log(self, job: str, step: int, loss: float, wall: float, hp: dict[str, Any]) -> None:
        rid = self.runs.get(job)
        if rid is None:
            rid = self.runs[job] = self.client.create_run(self.exp_id, run_name=job).info.run_id
            for k, v in hp.items():
                self.client.log_param(rid, k, v)
        self.client.log_metric(rid, "loss", loss, timestamp=int(wall * 1000), step=step)

    def close(self) -> None:
        for rid in self.runs.values():
            self.client.set_terminated(rid)


class WandbTracker:
    """One W&B run per job (named after it, its swept hyperparameters as config), grouped under
    the Saturn run's name."""

    def __init__(self, project: Optional[str], run_name: str):
        self.project, self.group = project, run_name
        self.runs: dict[str, Any] = {}

    def log(self, job: str, step: int, loss: float, wall: float, hp: dict[str, Any]) -> None:
        r = self.runs.get(job)
        if r is None:
            import wandb

            r = self.runs[job] = wandb.init(project=self.project, group=self.group, name=job, config=hp,
                                            reinit="create_new")
        r.log({"loss": loss}, step=step)

    def close(self) -> None:
        for r in self.runs.values():
            r.finish()


class MetricsFollower:
    """Sends each job's new metrics.jsonl lines to the trackers (an executor display: `update` is
    called every poll; at most every `every_s` seconds it reads, and once more on exit)."""

    def __init__(self, run_dir: PathLike, trackers: list[Tracker], every_s: float = 2.0):
        self.run_dir, self.trackers, self.every_s = Path(run_dir), trackers, every_s
        self.offsets: dict[str, int] = {}
        self.sent: dict[str, int] = {}  # job -> highest step sent
        self.hp: dict[str, dict[str, Any]] = {}
        self._last = 0.0

    def __enter__(self) -> "MetricsFollower":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.poll()
        for t in self.trackers:
            t.close()

    def update(self, ex: Any) -> None:
        if time.monotonic() - self._last >= self.every_s:
            if ex is not None and len(self.hp) < len(ex.state.jobs):
                from saturn.analysis.table import hyperparameters

                self.hp = hyperparameters({n: js.info.spec for n, js in ex.state.jobs.items()})
            self.poll()

    def poll(self) -> int:
        """Read and send what is new; the number of records sent."""
        self._last = time.monotonic()
        n = 0
        jobs = self.run_dir / "jobs"
        for d in sorted(jobs.iterdir()) if jobs.is_dir() else []:
            n += self._follow(d.name, d / "metrics.jsonl")
        return n

    def _follow(self, job: str, path: Path) -> int:
        try:
            size = os.path.getsize(path)
        except OSError:
            return 0
        off = self.offsets.get(job, 0)
        if size < off:  # rewritten (settled): read it all again, send only new steps
            off = 0
        with open(path, "rb") as f:
            f.seek(off)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self.offsets[job] = off + end
        n, wall = 0, time.time()
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
                step, loss = int(rec["step"]), finite_or_none(rec.get("loss"))
            except (ValueError, KeyError, TypeError):
                continue  # a damaged line: `saturn report` warns about those
            if loss is None or step <= self.sent.get(job, -1):
                continue
            self.sent[job] = step
            for t in self.trackers:
                t.log(job, step + 1, loss, wall, self.hp.get(job, {}))  # steps done (1-based), as Optuna/Tune
            n += 1
        return n
