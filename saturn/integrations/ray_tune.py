"""Ray Tune trials planned and executed by Saturn.

Tune owns trial *execution*: each trial is an actor that holds the resources it asked for and
trains inside itself. Saturn must own execution (it chooses technique, GPUs and start time for all
jobs together, and switches them between techniques from checkpoints), so the two cannot both
place the training work. The clean split used here keeps Tune for what it is good at — search
algorithms, schedulers (ASHA, median stopping, HyperBand), stoppers, result bookkeeping — and
makes every Tune trial a thin *proxy* of a Saturn job:

* `OrchestratorActor`: one named, detached Ray actor that owns a `saturn.Orchestrator` (on the
  node whose GPUs Saturn manages). `start_orchestrator(...)` starts it (dropping the returned
  handle is fine: the actor lives until `stop_orchestrator()` or the end of the Ray cluster);
  trials find it by name, and a trial that finds none fails with a Saturn error saying to call
  `start_orchestrator` before `tuner.fit()`.
* `SaturnTrainable`: a `tune.Trainable` that requests almost no resources. `setup(config)` turns
  the config into a Saturn job (`make_job(config)`) and submits it; each `step()` waits for new
  intermediate values and returns {"loss", "saturn_step", "saturn_status", ...} (`done` at the
  end); `cleanup()` — called when a scheduler or stopper stops the trial — cancels the job, so its
  GPUs are re-planned at once. Use `time_attr="saturn_step"` in schedulers. `saturn_step` counts
  steps done (1-based, as everywhere in Saturn). The result at the job's last step waits for the
  job's end, so it says `saturn_status: "completed"` with the final `loss` (also when a scheduler's
  `max_t` equals the job's steps). A failed job raises in the trial with Saturn's reason (OOM
  text, exit code, last log lines): it becomes the trial's error in Tune.
* A burst of trials that start together is planned together through the orchestrator's
  `batch_window_s`; `TuneConfig(max_concurrent_trials=N)` is the batch size.

Limits (documented, not hidden): Tune's PAUSE (HyperBand/PBT) stops the proxy and thus cancels the
job; on resume the trial re-submits the same job name and Saturn resumes it from its own newest
checkpoint (the trial's Tune checkpoint is empty: Saturn keeps the model checkpoints under its
run directory). PBT's exploit (copying another trial's weights) is therefore not supported. The
orchestrator runs jobs on its own node only (Saturn's process backend is single-node).

    from ray import tune
    from saturn.integrations.ray_tune import SaturnTrainable, start_orchestrator

    orch = start_orchestrator(saturn.Cluster(devices="cpu", slots=2), run_dir="/tmp/tune-run")
    trainable = SaturnTrainable.with_job(make_job)          # make_job(config) -> saturn.Job
    tuner = tune.Tuner(trainable, param_space={"lr": tune.loguniform(1e-4, 1e-1)},
                       tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=8,
                           scheduler=ASHAScheduler(time_attr="saturn_step", max_t=100, grace_period=10)))
    results = tuner.fit()
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

DEFAULT_ACTOR = "saturn-orchestrator"

__all__ = ["DEFAULT_ACTOR", "OrchestratorActor", "SaturnTrainable", "start_orchestrator", "stop_orchestrator"]


def _ray() -> Any:
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without ray
        raise ImportError("saturn.integrations.ray_tune needs Ray Tune: pip install 'ray[tune]'") from exc
    return ray


class OrchestratorActor:
    """A `saturn.Orchestrator` behind a Ray actor: plain-data methods (jobs and reports as dicts)."""

    def __init__(self, cluster: Any = None, **kwargs: Any):
        from saturn.api import Orchestrator

        self.orch = Orchestrator(cluster, **kwargs)

    def submit(self, job: dict) -> str:
        from saturn.spec import Job

        j = Job.model_validate(job)
        if j.name in self.orch and not self.orch.future(j.name).done():
            return j.name  # a restarted trial actor re-submitting its running job
        self.orch.submit(j)
        return j.name

    def report(self, name: str) -> dict:
        return self.orch.report(name).to_dict()

    def cancel(self, name: str) -> None:
        if name in self.orch and not self.orch.future(name).done():
            self.orch.cancel(name)

    def reports(self) -> dict:
        return {n: self.orch.report(n).to_dict() for n in self.orch.jobs}

    def executor_summary(self) -> dict:
        """Per job: its segments as (launched_at, ended_at, gpus, status) - for tests and reports."""
        with self.orch.lock:
            return {n: [(s.launched_at, s.ended_at, list(s.gpus), s.status) for s in js.segments]
                    for n, js in self.orch.executor.state.jobs.items()}

    def shutdown(self, cancel_jobs: bool = True) -> None:
        self.orch.shutdown(wait=True, cancel_jobs=cancel_jobs)


def start_orchestrator(cluster: Any = None, *, name: str = DEFAULT_ACTOR, batch_window_s: float = 1.0,
                       **kwargs: Any) -> Any:
    """Start (or get) the named orchestrator actor; kwargs go to `saturn.Orchestrator`.

    The actor is threaded (its loop runs beside the method calls) and asks for no CPU of Ray's,
    so trial proxies and the jobs' own processes are not starved. It is detached: it does not
    die with the returned handle (the README's snippet drops it); `stop_orchestrator(name)` ends it."""
    ray = _ray()
    try:
        return ray.get_actor(name)
    except ValueError:
        pass
    cls = ray.remote(num_cpus=0, max_concurrency=32)(OrchestratorActor)
    actor = cls.options(name=name, lifetime="detached").remote(cluster, batch_window_s=batch_window_s, **kwargs)
    ray.get(actor.__ray_ready__.remote())  # constructor errors surface here, not in every trial
    return actor


def stop_orchestrator(name: str = DEFAULT_ACTOR, cancel_jobs: bool = True) -> bool:
    """Shut the named orchestrator actor down (its jobs are cancelled) and kill it; False if none."""
    ray = _ray()
    try:
        actor = ray.get_actor(name)
    except ValueError:
        return False
    try:
        ray.get(actor.shutdown.remote(cancel_jobs))
    finally:
        ray.kill(actor)
    return True


def _get_actor(name: str) -> Any:
    import ray

    from saturn.errors import SaturnError

    try:
        return ray.get_actor(name)
    except ValueError:
        raise SaturnError(f"no Saturn orchestrator actor named {name!r} in this Ray cluster: call "
                          f"saturn.integrations.ray_tune.start_orchestrator(cluster, name={name!r}, ...) "
                          "before tuner.fit()") from None


class _Missing:  # placeholder base when Ray is not installed, so the module imports
    pass


try:  # pragma: no cover - the branch depends on the environment
    from ray.tune import Trainable as _TrainableBase
except ImportError:  # pragma: no cover
    _TrainableBase = _Missing  # type: ignore[misc,assignment]  # Ray absent: a plain base so the module imports


class SaturnTrainable(_TrainableBase):  # type: ignore[misc, valid-type]
    """A Tune trial that is a proxy of one Saturn job (see the module docstring).

    Subclass with `make_job` set (or use `SaturnTrainable.with_job(make_job)`). Class attributes:
    make_job(config) -> saturn.Job | dict; actor_name; report_every (steps between two results);
    poll_s; resources (what each proxy asks of Ray; default a sliver of a CPU)."""

    make_job: Optional[Callable[[dict], Any]] = None
    actor_name: str = DEFAULT_ACTOR
    report_every: int = 1
    poll_s: float = 0.2
    resources: dict = {"CPU": 0.01}

    @classmethod
    def with_job(cls, make_job: Callable[[dict], Any], **attrs: Any) -> type:
        return type("SaturnTrainable_" + getattr(make_job, "__name__", "job"), (cls,),
                    {"make_job": staticmethod(make_job), **attrs})

    @classmethod
    def default_resource_request(cls, config: dict) -> Any:
        from ray.tune import PlacementGroupFactory

        return PlacementGroupFactory([dict(cls.resources)])

    # ------------------------------------------------------------------------------ Tune hooks
    def setup(self, config: dict) -> None:
        import ray

        from saturn.spec import Job

        make_job = type(self).make_job
        if make_job is None:
            raise ValueError("SaturnTrainable needs make_job: use SaturnTrainable.with_job(make_job)")
        made = make_job(dict(config))
        job = Job.model_validate(made) if isinstance(made, dict) else made
        name = f"{job.name}-{self.trial_id}" if self.trial_id and self.trial_id != "default" else job.name
        job = Job.model_validate({**job.model_dump(), "name": _safe(name)})
        self._actor = _get_actor(type(self).actor_name)
        self.job_name = ray.get(self._actor.submit.remote(job.model_dump(mode="json")))
        self._total = int(job.total_steps)
        self._last = 0
        self._finished = False

    def step(self) -> dict:
        import ray

        while True:
            rep = ray.get(self._actor.report.remote(self.job_name))
            metrics = rep["metrics"]
            newest = metrics[-1][0] if metrics else 0
            done = rep["status"] in ("completed", "failed", "cancelled")
            # the last step's result waits for the job's end: it is final (status, loss)
            if done or (newest - self._last >= type(self).report_every and newest < self._total):
                break
            time.sleep(type(self).poll_s)
        if rep["status"] == "failed":
            from saturn.errors import SaturnError

            raise SaturnError(f"Saturn job {self.job_name} failed: {rep['reason'][-2000:]}")
        self._last = newest
        loss = rep["loss"] if done and rep["loss"] is not None else (metrics[-1][1] if metrics else rep["loss"])
        self._finished = done
        out = {"loss": loss, "saturn_step": newest, "saturn_status": rep["status"], "saturn_job": self.job_name,
               "saturn_technique": rep["technique"], "saturn_gpus": len(rep["gpus"])}
        if done:
            out.update(done=True, saturn_checkpoint=rep["checkpoint"], final_loss=rep["loss"])
        return out

    def cleanup(self) -> None:
        """Tune stopped the trial (scheduler, stopper, end of experiment): free its GPUs."""
        if not getattr(self, "_finished", True):
            import ray

            ray.get(self._actor.cancel.remote(self.job_name))

    def save_checkpoint(self, checkpoint_dir: str) -> dict:
        return {"saturn_job": getattr(self, "job_name", None), "saturn_step": getattr(self, "_last", 0)}

    def load_checkpoint(self, checkpoint: Any) -> None:
        # Saturn resumes the job from its own checkpoints when the same job name is re-submitted.
        pass


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", name)
