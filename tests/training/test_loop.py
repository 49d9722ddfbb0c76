"""The shared training loop must not synchronize the host with the device on its step path.

Every call that makes the host wait for the device (Tensor.item/tolist/cpu/numpy, float()/int()/
bool() of a tensor, torch.cuda synchronize, blocking collectives) is counted while
`loop.train` runs on CPU, tagged with the number of steps done at that moment. Such calls may
only happen at read-back boundaries (every `readback_every` steps, plus the first step and the
end), never once per step. Calls made inside the technique's own step function are not counted:
the loop is under test here (the fake step below never synchronizes).
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field

import pytest
import torch
import torch.distributed as dist

from saturn.spec.schema import Job
from saturn.training import loop, step_io

SYNCING_TENSOR_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__",
                          "__index__")
BLOCKING_COLLECTIVES = ("all_reduce", "barrier", "broadcast", "all_gather", "all_gather_object",
                        "all_gather_into_tensor", "reduce_scatter_tensor", "reduce", "gather")


@dataclass
class FakeCtx:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device_type: str = "cpu"
    launch_time: float = 0.0
    stop_after: int = 10**9  # stop_requested() turns True once this many steps are done
    done: list = field(default_factory=lambda: [0])

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def stop_requested(self) -> bool:
        return self.done[0] >= self.stop_after


class SyncCounter:
    """Patches every synchronizing call; records the steps-done count of each call."""

    def __init__(self, monkeypatch, done: list, world: int):
        self.points: list[int] = []
        self.calls: list[tuple[int, str]] = []
        self.done, self.in_step = done, [False]
        main = threading.main_thread()

        def counting(name, orig):
            def wrapper(*a, **kw):
                if threading.current_thread() is main and not self.in_step[0]:
                    self.calls.append((self.done[0], name))
                return orig(*a, **kw) if orig is not None else None
            return wrapper

        for name in SYNCING_TENSOR_METHODS:
            monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch.cuda, "synchronize", counting("cuda.synchronize", None))
        for cls in (torch.cuda.Event, torch.cuda.Stream):
            monkeypatch.setattr(cls, "synchronize", counting(f"{cls.__name__}.synchronize", None))
        if world > 1:  # pretend to be rank 0 of `world`; collectives are counted no-ops
            monkeypatch.setattr(dist, "is_initialized", lambda: True)
            monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: world)
            monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 0)
            for name in BLOCKING_COLLECTIVES:
                monkeypatch.setattr(dist, name, counting(f"dist.{name}", None))

    @contextlib.contextmanager
    def stepping(self):
        self.in_step[0] = True
        try:
            yield
        finally:
            self.in_step[0] = False

    @property
    def sync_steps(self) -> list[int]:
        return sorted({d for d, _ in self.calls})


def make_trainable(done: list, counter_box: list, loss_weight: float = 1.0):
    """A step that only queues tensor math (no synchronization), like a real step on a GPU."""
    w = torch.ones(4)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cm = counter_box[0].stepping() if counter_box else contextlib.nullcontext()
        with cm:
            w.mul_(0.9).add_(x.float().mean() * 1e-3)
            loss = (w * y.float().mean()).sum()
        done[0] += 1
        return loss.detach()

    data = torch.utils.data.TensorDataset(torch.arange(64 * 8).reshape(64, 8),
                                          torch.arange(64 * 8).reshape(64, 8) % 7)
    return loop.Trainable(step_fn=step, save=lambda d, s, m: f"{d}/step-{s}",
                              load=lambda p: {}, device=torch.device("cpu"),
                              loss_weight=loss_weight, dataset=data)


def job() -> Job:
    return Job(name="t", model="gpt2-tiny", batch_size=4, seq_len=8, steps=10, precision="fp32")


def run_counted(monkeypatch, *, world=1, steps=30, every=5, **kw):
    ctx = FakeCtx(world_size=world, stop_after=kw.pop("stop_after", 10**9))
    box: list = []
    trainable = make_trainable(ctx.done, box)
    counter = SyncCounter(monkeypatch, ctx.done, world)
    box.append(counter)
    res = loop.train(job(), trainable, ctx, mode=kw.pop("mode", "run"), num_steps=steps,
                         readback_every=every, readback_s=1e9, **kw)
    return res, counter


@pytest.mark.parametrize("world", [1, 2])
def test_step_path_never_synchronizes(monkeypatch, world):
    res, counter = run_counted(monkeypatch, world=world, steps=30, every=5)
    assert res["status"] == "completed" and res["step"] == 30
    assert [s for s, _ in res["losses"]] == list(range(30))
    # boundaries: after steps 1 and 2 (start-up), then every 5, and the end: 8 of 30 steps
    assert len(counter.sync_steps) <= 30 // 5 + 3, counter.calls
    assert counter.sync_steps[-1] == 30
    per_boundary = max(sum(1 for d, _ in counter.calls if d == p) for p in counter.sync_steps[:-1])
    assert per_boundary <= 3, counter.calls  # one all-reduce + one copy to the host
    if world > 1:
        reduces = [d for d, n in counter.calls if n == "dist.all_reduce"]
        # one per boundary, then after the last step: peak GPU memory (max) and host peak (sum over ranks)
        assert len(reduces) == len(counter.sync_steps) + 2


def test_counter_catches_a_sync_per_step(monkeypatch):
    """Read back after every step: now every step synchronizes, and the counter must see it."""
    _, counter = run_counted(monkeypatch, world=2, steps=12, every=1)
    assert counter.sync_steps == list(range(1, 13))


def test_trial_mode_is_also_free_of_per_step_syncs(monkeypatch):
    res, counter = run_counted(monkeypatch, steps=20, every=10, mode="trial", warmup=2)
    assert res["status"] == "ok" and len(res["step_times"]) == 20
    assert len(counter.sync_steps) <= 22 // 10 + 3


def test_stop_is_agreed_at_a_boundary(monkeypatch):
    """In a multi-rank world a SIGTERM is acted on at the next boundary (all ranks agree there),
    not at the step it arrived: every rank stops after the same step."""
    res, counter = run_counted(monkeypatch, world=2, steps=100, every=5, stop_after=4)
    assert res["status"] == "interrupted"
    assert res["step"] in counter.sync_steps and res["step"] >= 4
    assert res["step"] == 7  # boundaries 1, 2, 7: the first one after the request
    assert [s for s, _ in res["losses"]] == list(range(res["step"]))


def test_single_process_stops_at_the_requested_step(monkeypatch):
    res, _ = run_counted(monkeypatch, world=1, steps=100, every=5, stop_after=4)
    assert res["status"] == "interrupted" and res["step"] == 4


def test_losses_read_back_are_the_step_losses(monkeypatch):
    """Deferred read-back returns exactly what each step returned, weighted per rank."""
    ctx, box = FakeCtx(), []
    eager = [float(v) for v in _eager_losses()]
    res = loop.train(job(), make_trainable(ctx.done, box), ctx, mode="run", num_steps=12,
                         readback_every=4, readback_s=1e9)
    assert [v for _, v in res["losses"]] == pytest.approx(eager, rel=1e-12)
    half = loop.train(job(), make_trainable(FakeCtx().done, [], loss_weight=0.5), FakeCtx(),
                          mode="run", num_steps=12, readback_every=4, readback_s=1e9)
    assert [v for _, v in half["losses"]] == pytest.approx([v / 2 for v in eager], rel=1e-12)


def _eager_losses():
    from saturn.zoo.data import batch_for_step

    t = make_trainable([0], [])
    return [t.step_fn(*batch_for_step(t.dataset, s, 4)) for s in range(12)]


def test_metrics_are_durable_before_each_checkpoint(tmp_path):
    """Buffered metrics are flushed at every boundary and always before a checkpoint: when a
    checkpoint of step S is written, the metrics file already holds steps 1..S, one line per
    step, with the same keys as before (step = next step, loss, step_time_s, wall) plus data_wait_s."""
    metrics = tmp_path / "progress.jsonl"
    ctx = FakeCtx()
    t = make_trainable(ctx.done, [])
    seen = {}

    def save(d, step, meta):
        lines = [json.loads(line) for line in metrics.read_text().splitlines()]
        seen[step] = [r["step"] for r in lines]
        return f"{d}/step-{step}"

    t.save = save
    res = loop.train(job(), t, ctx, mode="run", num_steps=13, checkpoint_dir=str(tmp_path),
                         checkpoint_every=4, metrics_path=str(metrics), readback_every=10,
                         readback_s=1e9)
    assert sorted(seen) == [4, 8, 12, 13]
    for step, logged in seen.items():
        assert logged == list(range(1, step + 1))
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 14))
    assert all(set(r) == {"step", "loss", "step_time_s", "data_wait_s", "wall"} for r in rows)
    assert [r["loss"] for r in rows] == [v for _, v in res["losses"]]
    walls = [r["wall"] for r in rows]
    assert walls == sorted(walls)


def test_prefetcher_serves_each_steps_batch():
    from saturn.zoo.data import batch_for_step

    t = make_trainable([0], [])
    pf = step_io.BatchPrefetcher(lambda s: batch_for_step(t.dataset, s, 4), t.device, end=6)
    try:
        for s in range(6):
            x, y = pf.get(s)
            ex, ey = batch_for_step(t.dataset, s, 4)
            assert torch.equal(x, ex) and torch.equal(y, ey)
    finally:
        pf.close()


def test_prefetcher_never_blocks_a_step_on_a_later_steps_batch():
    """get(s) returns s's batch as soon as it is ready: a slow build of s+1 runs behind step s,
    it does not delay it (before issue 25 get(s) waited for s+1's batch too)."""
    import time

    def build(s):
        if s == 1:
            time.sleep(0.4)
        return torch.full((2,), float(s)), torch.tensor([s])

    pf = step_io.BatchPrefetcher(build, torch.device("cpu"), end=4)
    try:
        t0 = time.perf_counter()
        x0, _ = pf.get(0)
        assert time.perf_counter() - t0 < 0.3 and x0.tolist() == [0.0, 0.0]
        assert [float(pf.get(s)[0][0]) for s in (1, 2, 3)] == [1.0, 2.0, 3.0]
    finally:
        pf.close()


def test_next_interval_keeps_boundaries_frequent_for_slow_steps():
    assert step_io.next_interval([0.01] * 5, 10, 2.0) == 10
    assert step_io.next_interval([0.5] * 5, 10, 2.0) == 4
    assert step_io.next_interval([30.0], 10, 2.0) == 1
    assert step_io.next_interval([], 10, 2.0) == 10


def test_metrics_writer_appends_whole_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    w = step_io.MetricsWriter(str(path))
    for s in range(3):
        w.add(s + 1, 1.0 / (s + 1), 0.01, 100.0 + s)
    assert not path.exists()  # buffered until a boundary
    w.flush()
    w.flush()  # nothing pending: no empty writes
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


# ------------------------------------------------------------------------------ compile knob
def test_compile_knob_is_declared_and_offered():
    from saturn.techniques import get_technique

    for name in ("ddp", "fsdp"):
        t = get_technique(name)
        assert "compile" in t.knobs
        cands = t.candidates(job(), 1)
        assert cands[0].get("compile") is None  # default off
        assert any(c.get("compile") is True for c in cands)  # the profiler tries it


def test_compile_blocks_keeps_parameter_names():
    """Module.compile() compiles in place: checkpoints stay canonical. CPU slots run eager."""
    model = loop.build_model(job())
    names = list(model.state_dict())
    assert not loop.compile_blocks(model, {"compile": True}, "cpu")
    assert not loop.compile_blocks(model, {"compile": False}, "cuda")
    assert loop.compile_blocks(model, {"compile": True}, "cuda")  # compiles lazily, at call
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in model.blocks())
    assert list(model.state_dict()) == names


def test_deepspeed_arch_list_is_sanitized(monkeypatch):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[2] / "scripts" / "bench_techniques.py"
    spec = importlib.util.spec_from_file_location("bench_techniques_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0a 10.0a+PTX")
    assert bench._ds_env("cuda") == {"TORCH_CUDA_ARCH_LIST": "8.0;9.0 10.0+PTX"}
    assert bench._ds_env("cpu") == {"DS_ACCELERATOR": "cpu"}
