"""What runs on a Ray node: one attempt of one job (`JobAttempt`), in its own actor (cold) or
in the node's long-lived agent actor (`NodeAgent`, warm: one warm worker per GPU of the node).

Cold: one actor per attempt runs `python -m saturn.runtime.job_runner SPEC.json ENTRY` as a child
process, exactly as `ProcessBackend` does. Warm (the default where the technique trains through
`launch.run_workers`): the node's agent runs the attempt in a thread (`job_runner.WarmAttempt`) on
its `WarmPool`, so successive attempts and jobs on that node do not pay interpreter, imports and
CUDA context again; a worker that crashed, hung or leaked memory is replaced by the pool.
Both report the same `poll()` payloads (progress records, new log bytes, the result when done).
"""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Optional

from saturn.executor.backends.process import latest_checkpoint_step
from saturn.executor.backends.runner import ENTRY as RUNNER_ENTRY
from saturn.executor.backends.runner import is_warm_capable, run_attempt
from saturn.executor.ray_storage import download_latest, is_url, upload_checkpoint
from saturn.runtime.attempt import Attempt, RunResult
from saturn.runtime.job_runner import WarmAttempt, kill_session, spawn_runner, stop_attempt

_LOG_CHUNK = 64 * 1024  # log bytes returned per poll, per file


class JobAttempt:
    """Body of the Ray actor that runs one attempt of one job on its node (see module doc)."""

    def __init__(self, att: Attempt, store: str, scratch: str, pool: Any = None):
        self.store, self.scratch = store, scratch
        self.url = is_url(store)
        os.makedirs(scratch, exist_ok=True)
        self.offsets = {"progress": 0, "log": 0, "runner": 0}
        if self.url:  # this node's copy of the checkpoints in shared storage
            att = att.with_(checkpoint_dir=os.path.join(scratch, "ckpt"))
            download_latest(store, att.checkpoint_dir)
        else:
            os.makedirs(att.checkpoint_dir, exist_ok=True)
        self.uploaded: dict[str, str] = {}
        self.done_payload: Optional[dict] = None
        self.att_env = dict(att.env)
        self.att = att = att.with_(gpus=self._physical(att), env={})
        spec_path = os.path.join(scratch, "spec.json")
        att.write(spec_path)
        runner_log = os.path.join(scratch, "runner.txt")
        if pool is not None and is_warm_capable(att.technique):
            self.popen: Any = WarmAttempt(partial(run_attempt, att, runner_log=runner_log), pool, self.att_env,
                                          name=f"attempt-{att.attempt}")
            return
        # launch.py sets CUDA_VISIBLE_DEVICES from the (physical) device ids
        self.popen = spawn_runner(spec_path, runner_log, self.att_env, RUNNER_ENTRY, unset=("CUDA_VISIBLE_DEVICES",))

    @staticmethod
    def _physical(att: Attempt) -> list:
        vis = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        if att.device_type != "cuda" or not vis.strip():
            return [int(g) for g in att.gpus]
        ids = [v.strip() for v in vis.split(",") if v.strip()]
        return [int(ids[int(g)]) if ids[int(g)].isdigit() else int(g) for g in att.gpus]

    def info(self) -> dict:
        import ray

        return {"pid": self.popen.pid, "node_id": ray.get_runtime_context().get_node_id()}

    def _read_new(self, key: str, path: str, whole_lines: bool) -> bytes:
        try:
            with open(path, "rb") as f:
                f.seek(self.offsets[key])
                data = f.read(_LOG_CHUNK if not whole_lines else -1)
        except OSError:
            return b""
        if whole_lines:
            end = data.rfind(b"\n")
            data = data[: end + 1] if end >= 0 else b""
        self.offsets[key] += len(data)
        return data

    def _ckpt_out(self, path: Optional[str]) -> Optional[str]:
        """The shared-storage name of a checkpoint path (uploads it first in URL mode)."""
        if not path or not self.url:
            return path
        if path not in self.uploaded and os.path.isdir(path):
            self.uploaded[path] = upload_checkpoint(path, self.store)
        return self.uploaded.get(path)

    def poll(self) -> dict:
        if self.done_payload is not None:
            return self.done_payload
        code = self.popen.poll()
        recs = []
        for line in self._read_new("progress", self.att.progress_path, True).splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("attempt", self.att.attempt) != self.att.attempt:
                continue
            if rec.get("checkpoint"):
                rec["checkpoint"] = self._ckpt_out(rec["checkpoint"])
                if rec["checkpoint"] is None:
                    continue
            recs.append(rec)
        logs = {"log": self._read_new("log", self.att.log_path, False).decode("utf-8", "replace"),
                "runner": self._read_new("runner", os.path.join(self.scratch, "runner.txt"), False)
                .decode("utf-8", "replace")}
        out = {"records": recs, "logs": logs, "done": False, "code": code, "result": None, "fallback": None}
        if code is None:
            return out
        if any(len(v) >= _LOG_CHUNK for v in logs.values()):
            return out  # drain the logs first
        result = RunResult.read(self.att.result_path)
        res = result.to_dict() if result is not None else None
        if res is not None:
            res["checkpoint"] = self._ckpt_out(res.get("checkpoint"))
        else:
            step, path = latest_checkpoint_step(Path(self.att.checkpoint_dir), self.att.job, self.att.end_step)
            out["fallback"] = [step, self._ckpt_out(path)]
        out.update(done=True, result=res)
        self.done_payload = dict(out, records=[], logs={"log": "", "runner": ""})
        if self.url:
            shutil.rmtree(self.att.checkpoint_dir, ignore_errors=True)
        return out

    def stop(self) -> None:
        stop_attempt(self.popen)

    def kill(self) -> None:
        kill_session(self.popen)


class NodeAgent:
    """Body of the long-lived Ray actor of one node in warm mode: a `WarmPool` of the node's
    devices, and the attempts running on it by key (the driver's `AgentAttempt` handles)."""

    def __init__(self, device_type: str, env: Optional[dict] = None):
        from saturn.runtime.warm import WarmPool
        from saturn.techniques.registry import WARM_PRELOAD

        # final saves are written before an attempt returns: the driver uploads and reports a
        # checkpoint as soon as the attempt ends (no "finishing" state on Ray yet)
        self.pool = WarmPool(device_type, env=env, drain_behind=False, preload=WARM_PRELOAD)
        self.atts: dict[str, JobAttempt] = {}

    def start(self, key: str, att: Attempt, store: str, scratch: str) -> None:
        self.atts[key] = JobAttempt(att, store, scratch, pool=self.pool)

    def poll(self, key: str) -> dict:
        return self.atts[key].poll()

    def stop(self, key: str) -> None:
        if key in self.atts:
            self.atts[key].stop()

    def kill(self, key: str) -> None:
        att = self.atts.pop(key, None)
        if att is not None:
            att.kill()

    def pids(self) -> dict:
        """Warm worker pids by device slot, and how many workers were replaced (tests, reports)."""
        return {"pids": self.pool.pids(), "replaced": self.pool.replaced}

    def shutdown(self) -> None:
        for key in list(self.atts):
            self.kill(key)
        self.pool.shutdown()


class _Remote:
    """`handle.method.remote(*args)` of an agent method bound to one attempt key."""

    def __init__(self, method: Any, key: str):
        self.method, self.key = method, key

    def remote(self, *args: Any) -> Any:
        return self.method.remote(self.key, *args)


class AgentAttempt:
    """Driver-side handle of a warm attempt: looks like a `JobAttempt` actor handle (poll, stop,
    kill), but the attempt lives in its node's agent, which a kill must not end."""

    def __init__(self, agent: Any, key: str):
        self.agent, self.key = agent, key
        self.poll, self.stop, self.kill = (_Remote(agent.poll, key), _Remote(agent.stop, key),
                                           _Remote(agent.kill, key))


_ACTOR_CLS: dict[str, Any] = {}


def actor_cls(kind: str = "attempt"):
    """The Ray actor class of `JobAttempt` ("attempt") or `NodeAgent` ("agent")."""
    if kind not in _ACTOR_CLS:
        import ray

        body = JobAttempt if kind == "attempt" else NodeAgent
        _ACTOR_CLS[kind] = ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)(body)
    return _ACTOR_CLS[kind]
