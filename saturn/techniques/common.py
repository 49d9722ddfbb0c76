"""`LaunchedTechnique`: trial/run for any technique whose steps run in `launch.run_workers`.

A technique module then only provides `feasible`, `candidates`, and a worker-side builder
`build(job, knobs, ctx) -> training.Trainable` named by `builder` ("pkg.module:function"). Trials
and runs go through the same launcher and loop, so their measurements and failure handling
(OOM/failed/timeout as outcomes, never exceptions) are identical across techniques.

Keyword arguments understood by `trial` and `run` (all optional):
    device_type  "auto" | "cuda" | "cpu" (CPU slots: device ids are ranks, gloo)
    log_path     append all ranks' output here
    warmup       untimed steps before the timed ones (trial; default 2)
    timeout_s    wall-clock limit (run; default: none in practice, 30 days)
    stop_event   threading.Event: set it to stop a run gracefully (checkpoint, "interrupted")
    checkpoint_every  also checkpoint every N steps during a run (default 0: only at the end)
    grace_s      seconds between SIGTERM and SIGKILL on stop (default 60)
    readback_every  steps between the loop's read-back boundaries (default 10; see
                 training.train: losses, metrics flush and stop checks happen there, so a stop
                 takes effect, and a kill loses metrics, within this many steps; fewer when
                 steps are slow, a boundary comes at least every ~2 s)
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

from saturn.runtime.attempt import RunResult
from saturn.runtime.launch import resolve_device_type, run_workers
from saturn.techniques.base import Devices, Feasibility, Technique, TrialResult, device_ids

_RUN_FOREVER_S = 30 * 24 * 3600.0


class LaunchedTechnique(Technique):
    builder: ClassVar[str]  # "saturn.techniques.ddp:build"

    def worker_env(self, device_type: str, knobs: dict[str, Any]) -> dict[str, str]:
        """Extra environment for the workers (e.g. DS_ACCELERATOR=cpu for DeepSpeed on CPU)."""
        return {}

    def resolve_knobs(self, job: Any, gpus: int, knobs: Optional[dict[str, Any]]) -> dict[str, Any]:
        """Defaults (the first candidate) overlaid with the given knobs."""
        cands = self.candidates(job, gpus)
        return {**(cands[0] if cands else {}), **(knobs or {})}

    def _payload(self, job: Any, knobs: dict[str, Any], mode: str, **kw: Any) -> dict[str, Any]:
        return {"job": job.model_dump(mode="json"), "builder": self.builder, "knobs": knobs,
                "mode": mode, "technique": self.name, **kw}

    def _launch(self, job: Any, gpus: Devices, knobs: Optional[dict[str, Any]], mode: str,
                timeout_s: float, kwargs: dict[str, Any], **payload_kw: Any) -> tuple[dict, dict]:
        ids = device_ids(gpus)
        knobs = self.resolve_knobs(job, len(ids), knobs)
        dtype = resolve_device_type(kwargs.get("device_type", "auto"))
        payload = self._payload(job, knobs, mode, **payload_kw)
        if kwargs.get("readback_every"):
            payload["readback_every"] = int(kwargs["readback_every"])
        res = run_workers("saturn.training.loop:worker_entry", payload, ids,
                          device_type=dtype, timeout_s=timeout_s, log_path=kwargs.get("log_path"),
                          env=self.worker_env(dtype, knobs), grace_s=kwargs.get("grace_s", 60.0),
                          stop_event=kwargs.get("stop_event"))
        return res, knobs

    def trial(self, job: Any, gpus: Devices, knobs: dict[str, Any], steps: int,
              timeout_s: float = 600.0, **kwargs: Any) -> TrialResult:
        feas = self.feasible(job, len(device_ids(gpus)))
        if not feas:
            return TrialResult(status="failed", reason=f"infeasible: {feas.reason}")
        res, _ = self._launch(job, gpus, knobs, "trial", timeout_s, kwargs, num_steps=steps,
                              warmup=kwargs.get("warmup", 2))
        return trial_result(res)

    def run(self, job: Any, gpus: Devices, knobs: dict[str, Any], start_step: int,
            num_steps: int, checkpoint_dir: str, **kwargs: Any) -> RunResult:
        feas = self.feasible(job, len(device_ids(gpus)))
        if not feas:
            return RunResult(status="failed", step=start_step, reason=f"infeasible: {feas.reason}")
        res, _ = self._launch(job, gpus, knobs, "run", kwargs.get("timeout_s", _RUN_FOREVER_S),
                              kwargs, start_step=start_step, num_steps=num_steps,
                              checkpoint_dir=checkpoint_dir,
                              checkpoint_every=kwargs.get("checkpoint_every", 0),
                              metrics_path=kwargs.get("metrics_path"))
        return run_result(res, start_step, checkpoint_dir, owner=(job, start_step + num_steps))


def trial_result(res: dict[str, Any]) -> TrialResult:
    """A launch result as a TrialResult (an 'interrupted' trial counts as failed)."""
    status = res.get("status", "failed")
    if status not in ("ok", "oom", "host_oom", "failed", "timeout"):
        status = "failed"
    return TrialResult(status=status, step_time_s=res.get("step_time_s"),
                       peak_mem_gb=res.get("peak_mem_gb"), startup_s=res.get("startup_s"),
                       reason=res.get("reason", ""), step_times=list(res.get("step_times") or []),
                       checkpoint_s=res.get("checkpoint_s"),
                       checkpoint_stage_s=res.get("checkpoint_stage_s"),
                       worker_start_s=res.get("worker_start_s"), checkpoint_gb=res.get("checkpoint_gb"),
                       host_peak_gb=res.get("host_peak_gb"), host_limit_gb=res.get("host_limit_gb"))


def run_result(res: dict[str, Any], start_step: int, checkpoint_dir: str,
               owner: Optional[tuple[Any, int]] = None) -> RunResult:
    """A launch result as a RunResult; after a failure, `step`/`checkpoint` point at the newest
    checkpoint on disk of the job (owner: (job, total steps)) -- what a relaunch would resume from."""
    from saturn.training.catalog import Owner, latest_checkpoint, read_meta

    status = res.get("status", "failed")
    if status in ("completed", "interrupted"):
        return RunResult(status=status, step=int(res["step"]), checkpoint=res.get("checkpoint"),
                         losses=[(int(s), float(v)) for s, v in res.get("losses") or []],
                         reason=res.get("reason", ""), durable=bool(res.get("durable", True)),
                         phases=dict(res.get("phases") or {}))
    path = latest_checkpoint(checkpoint_dir, Owner.of(*owner) if owner is not None else None)
    step = int(read_meta(path)["step"]) if path else start_step
    status = {"timeout": "failed"}.get(status, status)
    if status not in ("oom", "host_oom", "failed", "interrupted"):
        status = "failed"
    return RunResult(status=status, step=step, checkpoint=path,
                     reason=res.get("reason", "") or res.get("log_tail", "")[-500:],
                     error_type=str(res.get("error_type") or ""), signal=res.get("signal"),
                     host_peak_gb=res.get("host_peak_gb"), host_limit_gb=res.get("host_limit_gb"))


def dp_feasible(job: Any, dp_world: int) -> Feasibility:
    """Data parallelism needs the global batch to split evenly over the ranks."""
    if job.batch_size % dp_world:
        return Feasibility(False, f"batch_size {job.batch_size} is not divisible by {dp_world} "
                                  "data-parallel ranks")
    return Feasibility(True)


class DataParallelTechnique(LaunchedTechnique):
    """A launched technique over data-parallel ranks only (ddp, fsdp): feasible on `gpus` devices
    wherever the batch splits over them (`dp_feasible`); the plug-in adds its knobs and candidates."""

    def feasible(self, job: Any, gpus: int) -> Feasibility:
        return dp_feasible(job, gpus)


def has_blocks(job: Any) -> bool:
    """Whether the model has a repeated block class (needed for per-block wrapping/checkpointing).
    Zoo models always do; user factories are checked when built."""
    return bool(job.model.name)
