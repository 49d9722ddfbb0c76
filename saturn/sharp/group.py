"""A SHARP group: several spilled models trained by one pool of workers, task by task.

Why a module of its own: this is the execution half of SHARP, separate from the policy
(`scheduler`) and from the per-model mechanics (`saturn.techniques.spilling`). Each member is a
`SpillingEngine` (master parameters + optimizer state in host memory) with its own data position,
RNG stream and checkpoint directory. `workers` worker threads share them (one per GPU; on CPU
slots, threads over the host); a free worker takes the next shard task of the model Sharded-LRTF
picks, runs it, and starts copying in the shard of the model it predicts to serve next (double
buffering across models; on CUDA, copies are asynchronous on the engine's H2D stream).

Equivalence with solo training, by construction: a member's tasks run in the same order with the
same inputs as `SpillingEngine.train_step` would run them; its RNG stream is its own (set before,
and saved after, each of its tasks; tasks of models that use randomness are serialized on one
lock because torch's CPU generator is process-global); its batches come from its own step count;
its checkpoints are the engine's technique-neutral DCP checkpoints. So a member's losses and
checkpoints equal solo spilling training, and a member can leave the group at a step boundary
(`leave_at`) and continue under any technique from its checkpoint.

Faults: a task changes its model only when it commits, so a worker that dies mid-task (a raised
`WorkerKilled`, which `faults` injects for tests) loses nothing: the model goes back to the
scheduler, another worker re-runs the task, and (with `respawn`) a replacement worker starts.
A dead *process* resumes each model from its newest checkpoint like any other job.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from saturn.sharp.scheduler import Progress, ShardedLRTF


class WorkerKilled(RuntimeError):
    """A worker died in the middle of a task (fault injection)."""


@dataclass
class Member:
    """One model of the group. `end_step` is exclusive; `losses` collects (step, loss)."""

    name: str
    engine: Any  # SpillingEngine
    dataset: Any
    batch_size: int
    start_step: int = 0
    end_step: int = 1
    ckpt_dir: Optional[str] = None
    checkpoint_every: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    task_time_s: float = 1.0  # prior per-task time (profile step time / tasks per step)
    step: int = -1
    rng: Any = None
    state: Any = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    left_at: Optional[int] = None

    def __post_init__(self) -> None:
        if self.step < 0:
            self.step = self.start_step
        if self.rng is None:  # the RNG stream right after the member's seeded build
            self.rng = self.engine.rng_state()
        self.random = bool(self.engine.uses_rng)


@dataclass
class GroupStats:
    wall_s: float = 0.0
    busy_s: dict[int, float] = field(default_factory=dict)
    tasks: int = 0
    retried_tasks: int = 0
    killed_workers: int = 0
    order: list[str] = field(default_factory=list)  # member name per executed task

    def idle_fraction(self, workers: int) -> float:
        if self.wall_s <= 0 or workers <= 0:
            return 0.0
        return max(0.0, 1.0 - sum(self.busy_s.values()) / (self.wall_s * workers))


class SharpGroup:
    """Train `members` with `workers` workers; `run()` returns when every member is done."""

    def __init__(self, members: list[Member], workers: int = 1, *, respawn: bool = True,
                 faults: Optional[dict[int, int]] = None,
                 leave_at: Optional[dict[str, int]] = None,
                 on_step: Optional[Callable[[str, int, float], None]] = None,
                 on_checkpoint: Optional[Callable[[str, int, str, Optional[float]], None]] = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique: {names}")
        self.members = {m.name: m for m in members}
        self.workers = workers
        self.respawn = respawn
        self.faults = dict(faults or {})  # worker id -> its task number (1-based) that dies
        self.leave_at = dict(leave_at or {})
        self.on_step = on_step
        self.on_checkpoint = on_checkpoint  # (name, step, path, loss) after each published save
        self.scheduler = ShardedLRTF(
            Progress(m.name, max(0, m.end_step - m.step), len(m.engine.tasks()), m.task_time_s)
            for m in members)
        self.stats = GroupStats()
        self._cond = threading.Condition()
        self._rng_lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._next_worker = 0
        self._live = 0
        self._stop = False

    def request_stop(self) -> None:
        """Graceful stop (SIGTERM): every member finishes its current step, checkpoints and
        leaves the group; `run()` then returns."""
        with self._cond:
            self._stop = True
            for m in self.members.values():
                p = self.scheduler.models[m.name]
                if m.state is None and not p.finished and not p.busy:
                    self._leave(m, save=True)
            self._cond.notify_all()

    # ---------------------------------------------------------------- running
    def run(self) -> GroupStats:
        t0 = time.perf_counter()
        with self._cond:
            for _ in range(self.workers):
                self._spawn()
        while True:
            with self._cond:
                threads = list(self._threads)
            for t in threads:
                t.join()
            with self._cond:
                if all(not t.is_alive() for t in self._threads):
                    break
        self.stats.wall_s = time.perf_counter() - t0
        for m in self.members.values():
            m.engine.synchronize()
        if self._errors:
            raise self._errors[0]
        if not self.scheduler.all_finished:
            raise RuntimeError("SHARP group stopped with work left: every worker died")
        return self.stats

    def _spawn(self) -> None:
        wid = self._next_worker
        self._next_worker += 1
        self._live += 1
        self.stats.busy_s[wid] = 0.0
        t = threading.Thread(target=self._worker, args=(wid,), name=f"sharp-worker-{wid}",
                             daemon=True)
        self._threads.append(t)
        t.start()

    def _worker(self, wid: int) -> None:
        done_tasks = 0
        while True:
            with self._cond:
                while True:
                    if self._errors or self.scheduler.all_finished:
                        self._live -= 1
                        self._cond.notify_all()
                        return
                    name = self.scheduler.pick()
                    if name is not None:
                        break
                    self._cond.wait()
                self.scheduler.start(name)
                m = self.members[name]
                if m.state is None:
                    from saturn.zoo.data import batch_for_step

                    x, y = batch_for_step(m.dataset, m.step, m.batch_size)
                    m.state = m.engine.begin_step(x.to(m.engine.device), y)
                self._prefetch_for_next(exclude=name)
            done_tasks += 1
            fault = self.faults.get(wid) == done_tasks

            def die(wid: int = wid, name: str = name) -> None:
                raise WorkerKilled(f"worker {wid} killed during a task of {name}")

            t0 = time.perf_counter()
            try:
                step_done = self._run_task(m, die if fault else None)
            except WorkerKilled:
                with self._cond:
                    self.scheduler.abort(name)
                    self.stats.retried_tasks += 1
                    self.stats.killed_workers += 1
                    self._live -= 1
                    if self.respawn:
                        self._spawn()
                    self._cond.notify_all()
                return
            except BaseException as exc:  # noqa: BLE001 -- any real error stops the group; run() re-raises it
                with self._cond:
                    self._errors.append(exc)
                    self.scheduler.abort(name)
                    self._live -= 1
                    self._cond.notify_all()
                return
            seconds = time.perf_counter() - t0
            if step_done:
                self._finish_step(m)
            with self._cond:
                self.stats.busy_s[wid] += seconds
                self.stats.tasks += 1
                self.stats.order.append(name)
                self.scheduler.complete(name, seconds, step_done)
                if step_done and (self.leave_at.get(name) == m.step or self._stop):
                    self._leave(m)
                self._cond.notify_all()

    def _run_task(self, m: Member, before_commit: Optional[Callable[[], None]]) -> bool:
        eng = m.engine
        if not m.random:  # never touches the global generator (engine.uses_rng)
            return eng.run_task(m.state, before_commit)
        with self._rng_lock:
            eng.set_rng_state(m.rng)
            done = eng.run_task(m.state, before_commit)
            m.rng = eng.rng_state()
        return done

    def _finish_step(self, m: Member) -> None:
        loss = m.engine.finish_step(m.state)
        m.state = None
        m.losses.append((m.step, loss))
        m.step += 1
        if self.on_step is not None:
            self.on_step(m.name, m.step - 1, loss)
        last = m.step >= m.end_step or self.leave_at.get(m.name) == m.step or self._stop
        if m.ckpt_dir and (last or (m.checkpoint_every and m.step % m.checkpoint_every == 0)):
            self._checkpoint(m, loss)

    def _checkpoint(self, m: Member, loss: Optional[float] = None) -> None:
        if not m.ckpt_dir or (m.checkpoints and
                              os.path.basename(m.checkpoints[-1]) == f"step-{m.step}"):
            return  # already saved at this step
        meta = {**m.meta, "technique": "sharp", "loss": loss, "world_size": 1}
        m.checkpoints.append(m.engine.save_checkpoint(m.ckpt_dir, m.step, meta))
        if self.on_checkpoint is not None:
            self.on_checkpoint(m.name, m.step, m.checkpoints[-1], loss)

    def _leave(self, m: Member, save: bool = False) -> None:
        """`m` leaves at a step boundary (its checkpoint was just written): free its shards."""
        if save and m.step > m.start_step:
            self._checkpoint(m, m.losses[-1][1] if m.losses else None)
        m.left_at = m.step
        self.scheduler.remove(m.name)
        m.engine.release()

    def _prefetch_for_next(self, exclude: str) -> None:
        """Double buffering across models: start the copy-in of the task the scheduler would give
        next. Only on CUDA, where it is an asynchronous copy (on the CPU it would be a clone)."""
        nxt = self.scheduler.pick(exclude=[exclude])
        if nxt is None:
            return
        eng = self.members[nxt].engine
        if eng.cuda:
            eng.prefetch_task(self.members[nxt].state)
