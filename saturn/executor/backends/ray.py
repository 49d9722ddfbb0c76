"""Run a plan across the nodes of a Ray cluster: `RayBackend` + `RayExecutor`.

    from saturn.executor.backends.ray import RayBackend, RayExecutor
    cluster = resolve_cluster(workload.cluster)      # saturn.executor.build: nodes from Ray
    backend = RayBackend(run_dir, cluster.ray, checkpoint_every=200)
    ex = RayExecutor(workload.jobs, cluster, profiles, backend, run_dir=run_dir)
    ex.run_until_done()

How it works
* Warm (default; `warm=False` or SATURN_WARM=0 for cold): one long-lived agent actor per node
  (`ray_actor.NodeAgent`, `num_cpus=0`, pinned with `NodeAffinitySchedulingStrategy(node_id,
  soft=False)`) holds a warm worker per device of that node and runs each attempt there in a thread
  (`job_runner.WarmAttempt`), as `ProcessBackend` does locally. Cold: one actor per attempt
  (`ray_actor.JobAttempt`) runs the very same `python -m saturn.runtime.job_runner SPEC.json`
  child as `ProcessBackend`. Either way the attempt runs on the plan's device ids of that node
  (mapped through the node's `CUDA_VISIBLE_DEVICES` if the raylet has one). Ray does not allocate
  the GPUs: Saturn's plan does (the actor asks for 0 GPUs so that Ray leaves `CUDA_VISIBLE_DEVICES`
  alone); do not run other GPU work on the same Ray nodes.
* The driver polls every actor (`poll()` returns new progress/checkpoint records, new log bytes,
  and the result when the child exited) with non-blocking `ray.wait`. Records become the same
  `BackendEvent`s as `ProcessBackend`'s, so progress, checkpoints and metrics reach the journal and
  the live display unchanged; log bytes are appended to `RUN_DIR/jobs/<job>/log.txt` on the driver.
* Checkpoints live on storage every node can read (`cluster.ray.checkpoint_root`): a shared
  filesystem path (used directly), or an fsspec URL (`s3://`, `gs://`, `file://`...): the actor
  downloads the newest checkpoint into node-local staging before the child starts, and uploads each
  new checkpoint (files, then `meta.json`, then the `latest` pointer, so a half-uploaded checkpoint
  is never "latest") before it reports it. Default root: the run directory (it must then be shared).
* Node loss: when a node disappears from `ray.nodes()` (or an actor dies because its node died),
  every attempt on it ends as `finished(status="lost")` at the newest checkpoint on the shared
  storage (a lost attempt is not a failure: it does not count against `max_retries`), with the
  per-step losses streamed so far, so `metrics.jsonl` keeps every step up to that checkpoint.
  `RayExecutor` then removes the node from its cluster, journals `node_lost` (and `node_joined` for
  new nodes), and re-plans with `force=True` before launching anything, so lost jobs resume from
  their checkpoints on the remaining nodes. A joining node is used at the next re-plan.

`RayExecutor` is `Executor` plus one hook (`sync_cluster`, called right before launching) that
applies cluster changes reported by the backend; `Executor.resume` works through it unchanged
(nodes are re-discovered on the first step).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Union

from saturn.executor.backends.attempts import attempt_for
from saturn.executor.backends.base import BackendEvent, with_log_context
from saturn.executor.backends.process import WallClock
from saturn.executor.backends.ray_actor import AgentAttempt, actor_cls
from saturn.executor.loop import Executor
from saturn.executor.ray_storage import is_url, join_url, latest_in_store
from saturn.executor.state import ACTIVE, JobState
from saturn.runtime.attempt import RunResult

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ the backend
@dataclass
class _Att:
    job: str
    attempt: int
    node: str
    node_id: str
    ckpt: str  # checkpoint location on shared storage (path or URL)
    start_step: int
    actor: Any
    log_path: Path
    ref: Any = None
    losses: dict = field(default_factory=dict)  # step -> loss, streamed per-step lines
    log_tail: str = ""


class RayBackend(WallClock):
    """Runs each job attempt in a Ray actor on the node its plan assignment names.

    ray: a `RaySpec` (address, checkpoint_root, devices, slots) or an address string.
    checkpoint_every: periodic checkpoints (steps); they bound what a lost node costs.
    refresh_s: how often `ray.nodes()` is read (node loss / joins)."""

    def __init__(self, run_dir: Union[str, Path], ray: Any = "auto", *, checkpoint_root: Optional[str] = None,
                 checkpoint_every: int = 0, device_type: Optional[str] = None, clock_offset: float = 0.0,
                 grace_s: float = 60.0, extra_env: Optional[dict] = None, refresh_s: float = 1.0,
                 scratch_dir: Optional[str] = None, warm: Optional[bool] = None):
        from saturn.executor.ray_cluster import connect, devices_of
        from saturn.runtime.warm import warm_enabled

        spec = SimpleNamespace(address=ray, checkpoint_root=None, devices="auto", slots=None,
                               gpu_memory_gb=None) if isinstance(ray, (str, type(None))) else ray
        self.spec = spec
        self.run_dir = Path(run_dir)
        self.ray = connect(spec.address)
        root = checkpoint_root or getattr(spec, "checkpoint_root", None)
        self.store_root = join_url(root, self.run_dir.name) if root else str(self.run_dir.resolve())
        self.checkpoint_every = checkpoint_every
        self.grace_s = grace_s
        self.extra_env = dict(extra_env or {})
        self.refresh_s = refresh_s
        self.scratch = scratch_dir or os.path.join(tempfile.gettempdir(), "saturn-ray",
                                                   f"{self.run_dir.name}-{uuid.uuid4().hex[:6]}")
        self._t0 = time.monotonic()
        self._offset = clock_offset
        self.warm = warm if warm is not None else warm_enabled()
        self.agents: dict[str, Any] = {}  # Ray node id -> its warm agent actor (warm mode)
        self.atts: dict[str, _Att] = {}
        self._queued: list[BackendEvent] = []
        self._next_refresh = 0.0
        self.lost_nodes: list[tuple[float, str, list[str]]] = []  # (t, node, jobs) for tests/reports
        entries = self.ray.nodes()
        self.device_type = device_type or devices_of(entries, getattr(spec, "devices", "auto"))
        self._nodes = self._planable(entries)
        self._alive_ids = {e["NodeID"] for e in entries if e.get("Alive")}

    # ------------------------------------------------------------------------- cluster view
    def _planable(self, entries):
        from saturn.executor.ray_cluster import nodes_from_entries

        return nodes_from_entries(entries, self.device_type, getattr(self.spec, "slots", None),
                                  getattr(self.spec, "gpu_memory_gb", None))

    def nodes(self) -> list:
        """The planable alive nodes as of the last poll (RayNode: name, node_id, gpus, gpu_type...)."""
        return list(self._nodes)

    def node_ids(self) -> dict[str, str]:
        return {n.name: n.node_id for n in self._nodes}

    def _refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() < self._next_refresh:
            return
        self._next_refresh = time.monotonic() + self.refresh_s
        try:
            entries = self.ray.nodes()
        except Exception as exc:  # noqa: BLE001 - a GCS hiccup: keep the last view
            log.warning("ray.nodes() failed: %s", exc)
            return
        self._alive_ids = {e["NodeID"] for e in entries if e.get("Alive")}
        self._nodes = self._planable(entries)
        for att in list(self.atts.values()):
            if att.node_id not in self._alive_ids:
                self._lose(att, f"node {att.node} was lost (Ray node {att.node_id[:12]} is dead)")

    # ---------------------------------------------------------------------------- Backend API
    def checkpoint_location(self, job: str) -> str:
        return join_url(self.store_root, "jobs", job, "ckpt") if is_url(self.store_root) else \
            str(Path(self.store_root) / "jobs" / job / "ckpt")

    def launch(self, job: JobState, assignment: dict, start_step: int, attempt: int) -> Optional[int]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        d = self.job_dir(job.name)
        d.mkdir(parents=True, exist_ok=True)
        node = assignment["node"]
        ckpt = self.checkpoint_location(job.name)
        scratch = os.path.join(self.scratch, job.name, f"attempt-{attempt}")
        att = attempt_for(job, assignment, start_step, attempt, files_dir=scratch, checkpoint_dir=ckpt,
                          device_type=self.device_type, checkpoint_every=self.checkpoint_every,
                          grace_s=self.grace_s, env=self.extra_env)
        att.write(d / f"attempt-{attempt}.json")
        node_id = self.node_ids().get(node)
        placeholder = _Att(job.name, attempt, node, node_id or "", ckpt, int(start_step), None, d / "log.txt")
        if node_id is None or node_id not in self._alive_ids:
            self._lose(placeholder, f"node {node} is not (or no longer) in the Ray cluster")
            return None
        with open(placeholder.log_path, "a") as f:
            f.write(f"\n=== attempt {attempt} on {node} (Ray node {node_id[:12]}), from step {start_step} ===\n")
        affinity = NodeAffinitySchedulingStrategy(node_id, soft=False)
        if self.warm:
            if node_id not in self.agents:  # one long-lived agent per node: warm workers per device
                self.agents[node_id] = actor_cls("agent").options(scheduling_strategy=affinity).remote(
                    self.device_type, self.extra_env)
            key = f"{job.name}#{attempt}"
            self.agents[node_id].start.remote(key, att, ckpt, scratch)
            placeholder.actor = AgentAttempt(self.agents[node_id], key)
        else:
            placeholder.actor = actor_cls().options(scheduling_strategy=affinity, name=None).remote(
                att, ckpt, scratch)
        self.atts[job.name] = placeholder
        return None

    def stop(self, job: str) -> None:
        att = self.atts.get(job)
        if att is not None and att.actor is not None:
            att.actor.stop.remote()

    def poll(self) -> list[BackendEvent]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayError

        self._refresh()
        for att in self.atts.values():
            if att.ref is None:
                att.ref = att.actor.poll.remote()
        refs = [a.ref for a in self.atts.values()]
        if refs:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0.05)
            ready = set(done)
            for att in list(self.atts.values()):
                if att.ref not in ready:
                    continue
                ref, att.ref = att.ref, None
                try:
                    payload = ray.get(ref, timeout=10)
                except (RayActorError, GetTimeoutError, RayError) as exc:
                    self._actor_error(att, exc)
                    continue
                self._handle(att, payload)
        out, self._queued = self._queued, []
        return sorted(out, key=lambda e: e.t)

    def _actor_error(self, att: _Att, exc: Exception) -> None:
        from ray.exceptions import RayActorError

        if isinstance(att.actor, AgentAttempt) and isinstance(exc, RayActorError):
            self.agents.pop(att.node_id, None)  # the node's agent died: the next launch starts one
        self._refresh(force=True)  # is its node gone?
        if att.job not in self.atts:
            return  # _refresh found the node dead: already reported as lost
        reason = f"Ray actor of {att.job} died on node {att.node}: {type(exc).__name__}: {str(exc)[:1500]}"
        self._end(att, "failed", reason)

    def _handle(self, att: _Att, p: dict) -> None:
        for rec in p.get("records") or []:
            t = self._from_wall(float(rec.get("wall", time.time())))
            if rec.get("checkpoint"):
                self._queued.append(BackendEvent("checkpoint", att.job, t, step=int(rec["step"]), loss=rec.get("loss"),
                                                 checkpoint=rec["checkpoint"]))
            else:
                if rec.get("loss") is not None:
                    att.losses[int(rec["step"]) - 1] = float(rec["loss"])  # per-step lines: "next step"
                self._queued.append(BackendEvent("progress", att.job, t, step=int(rec["step"]), loss=rec.get("loss")))
        logs = p.get("logs") or {}
        text = (logs.get("log") or "") + (logs.get("runner") or "")
        if text:
            with open(att.log_path, "a") as f:
                f.write(text)
            att.log_tail = (att.log_tail + text)[-4000:]
        if not p.get("done"):
            return
        res = p.get("result")
        self.atts.pop(att.job, None)
        self._kill_actor(att, graceful=False)
        now = self.now()
        if res is None:
            step, ckpt = (p.get("fallback") or [None, None])
            self._queued.append(BackendEvent(
                "finished", att.job, now, step=step if step is not None else -1, status="failed", checkpoint=ckpt,
                reason=f"job runner exited with code {p.get('code')} on node {att.node}: {att.log_tail[-1500:]}"))
            return
        result = RunResult.from_dict(res)
        if result.status in ("failed", "oom", "host_oom"):
            result.reason = with_log_context(result.reason, att.log_tail[-1500:])
        self._queued.append(BackendEvent.finished(att.job, now, result))

    def _end(self, att: _Att, status: str, reason: str) -> None:
        """The attempt is gone without a result: report the newest checkpoint on shared storage."""
        self.atts.pop(att.job, None)
        if att.actor is not None:
            self._kill_actor(att, graceful=False)
        step, ckpt = latest_in_store(att.ckpt)
        if step is not None and step < att.start_step:
            step, ckpt = None, None
        end = step if step is not None else att.start_step
        losses = sorted([s, loss] for s, loss in att.losses.items() if att.start_step <= s < end)
        self._queued.append(BackendEvent("finished", att.job, self.now(), step=step if step is not None else -1,
                                         status=status, checkpoint=ckpt, reason=reason, losses=losses,
                                         loss=losses[-1][1] if losses else None))
        with open(att.log_path, "a") as f:
            f.write(f"\n=== attempt {att.attempt}: {status}: {reason[:300]} ===\n")

    def _lose(self, att: _Att, reason: str) -> None:
        if att.node and att.node_id:
            self.lost_nodes.append((self.now(), att.node, [att.job]))
        self._end(att, "lost", reason)

    def _kill_actor(self, att: _Att, graceful: bool = True) -> None:
        import ray

        if isinstance(att.actor, AgentAttempt):  # the attempt only: the agent keeps its warm workers
            try:
                ray.get(att.actor.kill.remote(), timeout=20 if graceful else 5)
            except Exception:  # noqa: BLE001 - the agent or its node may be gone
                pass
            return
        try:
            if graceful:
                ray.get(att.actor.kill.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - the actor or its node may be gone
            pass
        try:
            ray.kill(att.actor, no_restart=True)
        except Exception:  # noqa: BLE001
            pass

    def wait(self, timeout_s: float) -> None:
        time.sleep(max(0.0, min(timeout_s, 1.0)))

    def shutdown(self) -> None:
        import ray

        for att in list(self.atts.values()):
            if att.actor is not None:
                self._kill_actor(att, graceful=True)
        self.atts.clear()
        for agent in self.agents.values():
            try:
                ray.get(agent.shutdown.remote(), timeout=20)
            except Exception:  # noqa: BLE001 - the agent or its node may be gone
                pass
            try:
                ray.kill(agent, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self.agents.clear()


# ------------------------------------------------------------------------------------ the executor
class RayExecutor(Executor):
    """`Executor` whose cluster follows the Ray cluster: before launching, `sync_cluster` applies
    node losses/joins seen by the backend (journal: `node_lost` / `node_joined`; meta `nodes`).
    The Ray settings are kept in the journal's meta `ray` so `--resume` can rebuild the backend
    (`resume_backend_factory`)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        spec = getattr(self.backend, "spec", None)
        if self.run_dir is not None and spec is not None and kwargs.get("_state") is None:
            self.journal.set_meta("ray", {k: getattr(spec, k, None) for k in
                                          ("address", "checkpoint_root", "devices", "slots", "gpu_memory_gb")})

    def emit(self, kind: str, **data: Any) -> None:
        # `Executor.resume` reports attempts that died with the previous driver as "lost" at the
        # newest checkpoint under RUN_DIR/jobs/<job>/ckpt; with a checkpoint_root elsewhere (another
        # path, a URL) the newest one is on that storage: take it, so the next attempt's segment
        # starts where its job_runner will really resume.
        be = getattr(self, "backend", None)
        if kind == "finished" and data.get("status") == "lost" and isinstance(be, RayBackend) \
                and data.get("job") not in be.atts:
            step, ckpt = latest_in_store(be.checkpoint_location(data["job"]))
            if step is not None and step >= int(data.get("step") or 0):
                data.update(step=step, checkpoint=ckpt)
        super().emit(kind, **data)

    def _launch_ready(self) -> None:
        self.sync_cluster()
        super()._launch_ready()

    def sync_cluster(self) -> bool:
        nodes_fn = getattr(self.backend, "nodes", None)
        if nodes_fn is None:
            return False
        nodes = nodes_fn()
        new = {n.name: int(n.gpus) for n in nodes}
        if not new or new == self.node_gpus:
            return False  # an empty view (GCS hiccup, every node gone) changes nothing: jobs wait
        old = dict(self.node_gpus)
        lost = [n for n in old if n not in new or new[n] < old[n]]
        joined = [n for n in new if n not in old or new[n] > old[n]]
        for n in lost:
            jobs = sorted(js.name for js in self.state.jobs.values()
                          if js.segments and js.segments[-1].node == n and js.segments[-1].status == "lost")
            self.emit("node_lost", node=n, gpus=old[n], remaining_gpus=new.get(n, 0), jobs=jobs)
        for n in joined:
            self.emit("node_joined", node=n, gpus=new[n])
        self.nodes = [SimpleNamespace(name=n.name, gpus=int(n.gpus), gpu_type=n.gpu_type,
                                      gpu_memory_gb=n.gpu_memory_gb) for n in nodes]
        self.node_gpus = new
        if self.run_dir is not None:
            self.journal.set_meta("nodes", [vars(n) for n in self.nodes])
        if self.state.done():
            return True
        if lost or self._plan_uses_missing_gpus():
            self.replan("node_lost" if lost else "cluster", force=True)
        else:
            self.replan_needed = True  # a joined node: used by the next re-plan (adopted if it pays)
        return True

    def _plan_uses_missing_gpus(self) -> bool:
        for a in (self.state.plan or {}).get("assignments", []):
            js = self.state.jobs.get(a["job"])
            if js is None or js.status not in ("pending",) + ACTIVE:
                continue
            if a["node"] not in self.node_gpus or any(int(g) >= self.node_gpus[a["node"]] for g in a["gpus"]):
                return True
        return False


def ray_run_settings(run_dir: Union[str, Path]) -> Optional[dict]:
    """The Ray settings a run was started with (None: not a Ray run)."""
    from saturn.executor.journal import Journal

    path = Path(run_dir) / "journal.sqlite"
    if not path.exists():
        return None
    j = Journal(path)
    try:
        return j.get_meta("ray")
    finally:
        j.close()


def resume_backend_factory(run_dir: Union[str, Path], **backend_kwargs: Any):
    """For `RayExecutor.resume(run_dir, factory)`: a RayBackend with the run's Ray settings."""
    settings = ray_run_settings(run_dir)
    if settings is None:
        return None
    spec = SimpleNamespace(**{"address": "auto", "checkpoint_root": None, "devices": "auto", "slots": None,
                              "gpu_memory_gb": None, **settings})
    return lambda offset: RayBackend(run_dir, spec, clock_offset=offset, **backend_kwargs)
