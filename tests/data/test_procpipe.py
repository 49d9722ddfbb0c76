"""Process-backed input pipelines (saturn.data.procpipe) and the node's core ledger moving cores
between jobs (saturn.data.ledger): same batches as the single-threaded reference for every pool
size, resize and resume; a killed worker is replaced or fails the job with its cause, never hangs.
Small images, few batches: a few seconds on two shared cores."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from saturn.data import ImageFiles, PipelineDataset, make_image_files
from saturn.data.dataset import collate_pairs
from saturn.data.ledger import CoreLedger
from saturn.data.pipeline import Pipeline, PipelineStats, Stage, StageStats
from saturn.data.procpipe import POOL_STAGE, ProcPipeline, exit_cause
from saturn.data.simpipe import ModelPipe
from saturn.data.tuner import PipelineTuner

pytestmark = pytest.mark.slow
BS = 4


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = make_image_files(tmp_path_factory.mktemp("imgs"), 24, size=16, num_classes=3, seed=1)
    return ImageFiles(d, out_size=8, seed=4, heavy=1)


def _idx(b: int) -> list[int]:
    return [b * BS + k for k in range(BS)]


def _reference(source, n: int) -> list:
    """The single-threaded reference: one thread per stage, prefetch 1."""
    with Pipeline(source.stages(), Stage("collate", collate_pairs(False)), _idx, prefetch=1, num_batches=n) as p:
        return list(p)


def _procs(source, workers: int, **kw) -> ProcPipeline:
    st = source.stages()
    return ProcPipeline([s.fn for s in st], [s.name for s in st], _idx, workers=workers, **kw)


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_process_stage_yields_the_reference_batches(source, workers):
    ref = _reference(source, 8)
    with _procs(source, workers, prefetch=2, num_batches=8) as p:
        got = list(p)
    assert len(got) == 8 and all(_same(a, b) for a, b in zip(ref, got))
    with _procs(source, workers, first_batch=5, num_batches=3) as p:  # a resume at step 5
        assert all(_same(a, b) for a, b in zip(ref[5:], p))


def test_dataset_with_processes_matches_threads_and_resumes(source):
    threads, procs = PipelineDataset(source, pin=False), PipelineDataset(source, pin=False, processes=True, cores=2)
    try:
        ref = [threads.batch_for_step(s, BS) for s in range(5)]
        assert all(_same(ref[s], procs.batch_for_step(s, BS)) for s in (0, 1, 3, 4))  # 1 -> 3: a jump
        assert procs.worker_cpu_s > 0  # the workers' CPU is counted (profiler.ingest reads it)
    finally:
        threads.shutdown()
        procs.shutdown()


def test_growing_and_shrinking_mid_run_loses_and_repeats_no_sample(source):
    n = 14
    ref = _reference(source, n)
    sizes = {2: 3, 5: 1, 8: 2, 10: 1}  # after batch k, resize to v workers
    got = []
    with _procs(source, 1, prefetch=1, num_batches=n) as p:
        for k, batch in enumerate(p):
            got.append(batch)
            if k in sizes:
                p.set_workers({POOL_STAGE: sizes[k]})
                deadline = time.monotonic() + 20
                while len(p.live_workers()) != sizes[k] and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert len(p.live_workers()) == sizes[k]
        assert (p.started, p.retired) == (1 + 2 + 1, 2 + 1)  # grown at batches 2 and 8, shrunk at 5 and 10
        assert not p.deaths
    assert len(got) == n and all(_same(a, b) for a, b in zip(ref, got))


def test_a_killed_worker_is_replaced_and_no_batch_is_lost(source):
    n = 10
    ref = _reference(source, n)
    got = []
    with _procs(source, 2, prefetch=2, num_batches=n) as p:
        for k, batch in enumerate(p):
            got.append(batch)
            if k == 2:
                os.kill(p.live_workers()[0], signal.SIGKILL)
        assert len(p.deaths) == 1 and "SIGKILL" in p.deaths[0]
    assert len(got) == n and all(_same(a, b) for a, b in zip(ref, got))


def test_workers_that_keep_dying_fail_the_job_with_the_cause(source):
    with _procs(source, 1, max_deaths=0) as p:
        p.get()
        os.kill(p.live_workers()[0], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="killed by SIGKILL"):
            for _ in range(100):
                p.get()
        assert time.monotonic() - t0 < 20  # failed, not hung


def _boom(item, i):
    if i == 6:
        raise ValueError("corrupt sample 6")
    return item


def test_a_stage_error_fails_with_its_cause(source):
    st = source.stages()
    with ProcPipeline([s.fn for s in st] + [_boom], [s.name for s in st] + ["boom"], _idx, workers=2) as p:
        with pytest.raises(RuntimeError, match="corrupt sample 6"):
            for _ in range(3):  # batch 0 may come first; batch 1 holds sample 6
                p.get()


def test_exit_cause_names_the_signal():
    assert exit_cause(-9).startswith("killed by SIGKILL") and "OOM" in exit_cause(-9)
    assert exit_cause(1) == "exited with status 1"


def test_ledger_moves_cores_toward_the_job_that_waits(tmp_path):
    led = CoreLedger(tmp_path / "node.json", 8)
    led.register("hungry", 8)
    led.register("idle", 8)
    assert led.shares() == {"hungry": 4, "idle": 4}
    led.report("idle", 0.0)
    for _ in range(6):
        led.report("hungry", 0.3)
    assert led.shares() == {"hungry": 7, "idle": 1}  # the donor keeps one core
    assert led.moves() == 3
    led.report("idle", 0.2)  # now both wait: nobody gives, the shares hold
    led.report("hungry", 0.3)
    assert led.shares() == {"hungry": 7, "idle": 1}
    led.unregister("idle")
    assert led.shares() == {"hungry": 8}  # it left: the fair split of who is there


def _window(pipe: ModelPipe, wait_frac: float) -> PipelineStats:
    s = pipe.window()
    return PipelineStats(s.wall_s, s.batches, s.samples, wait_frac * s.wall_s, s.stages)


def test_two_jobs_tuners_shift_processes_through_the_ledger(tmp_path):
    """Each job's tuner reports its wait to the ledger and follows its share: the pool of the job
    whose GPU waits grows, the other's shrinks."""
    led = CoreLedger(tmp_path / "node.json", 8)
    pipes, tuners = {}, {}
    for job in ("a", "b"):
        led.register(job, 8)
        pipes[job] = ModelPipe({POOL_STAGE: 0.01}, {POOL_STAGE: 4}, BS)
        pipes[job].batch_stages = frozenset()
        tuners[job] = PipelineTuner(pipes[job], budget=lambda j=job: led.share(j), batch_size=BS,
                                    report=lambda w, j=job: led.report(j, w))
    for _ in range(4):
        tuners["b"].step(_window(pipes["b"], 0.0))  # b's GPU never waits
        tuners["a"].step(_window(pipes["a"], 0.4))  # a's waits 40% of the time
    assert pipes["a"].workers[POOL_STAGE] > 4 > pipes["b"].workers[POOL_STAGE]
    assert pipes["a"].workers[POOL_STAGE] + pipes["b"].workers[POOL_STAGE] == 8
    assert any(r["action"] == "budget" for r in tuners["b"].history)


def test_tuner_resizes_a_running_process_pool(source):
    """The tuner's budget reaches the worker processes while batches flow."""
    budget = {"n": 1}
    with _procs(source, 1, prefetch=1) as p:
        tuner = PipelineTuner(p, budget=lambda: budget["n"], batch_size=BS)
        p.get()
        p.take_stats()
        for _ in range(3):
            p.get()
        budget["n"] = 2
        tuner.step(p.take_stats())
        assert p.workers == {POOL_STAGE: 2}
        deadline = time.monotonic() + 20
        while len(p.live_workers()) < 2 and time.monotonic() < deadline:
            p.get()
        assert len(p.live_workers()) == 2
        st = p.take_stats()
        assert set(st.cores) == {"read", "decode", "augment", "collate"}
        assert StageStats is type(st.stages[POOL_STAGE])


def test_ingest_rate_counts_the_worker_processes_cpu(source):
    """The profile row's ingest rate (samples per core-second, what the planner's core constraint
    divides by) must not drop the CPU its pipeline spends in worker processes."""
    from saturn.profiler.ingest import measure_dataset

    threads = measure_dataset(PipelineDataset(source, pin=False), BS, seconds=0.6)
    procs = PipelineDataset(source, pin=False, processes=True, cores=2)
    try:
        with_procs = measure_dataset(procs, BS, seconds=0.6)
    finally:
        procs.shutdown()
    assert with_procs["samples_per_core_s"] < 1.5 * threads["samples_per_core_s"]


def test_a_stop_request_ends_a_worker_even_where_the_trainer_catches_sigterm(source):
    """Training processes catch SIGTERM to stop gracefully; their forked data workers must not
    inherit that (a worker that swallows SIGTERM outlives a stopped job)."""
    old = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        with _procs(source, 1) as p:
            p.get()
            pid = p.live_workers()[0]
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while not p.deaths and time.monotonic() < deadline:
                time.sleep(0.02)
            assert p.deaths and "SIGTERM" in p.deaths[0]
            assert p.get() is not None  # replaced: batches keep coming
    finally:
        signal.signal(signal.SIGTERM, old)
