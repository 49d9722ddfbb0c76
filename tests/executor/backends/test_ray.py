"""RayBackend / RayExecutor on a local multi-node Ray cluster (`ray.cluster_utils.Cluster`): a head
without slots + 2 worker "nodes" with 2 CPU slots each (custom resource `saturn_slots`).

* discovery: `cluster: {ray: ...}` resolves to the worker nodes;
* a tiny workload across both nodes, one node removed mid-run: every job completes, each attempt
  starts exactly at the checkpoint the previous one ended at (no lost or repeated step), every
  step's loss is in metrics.jsonl once, and the journal records the node loss;
* checkpoints through an fsspec URL (file://) instead of a shared path.
Slow (a Ray cluster start is ~15 s here); skipped when Ray is not installed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from saturn.executor.ray_cluster import nodes_from_entries

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'saturn[ray]')")

WORKLOAD = """name: tiny-ray
cluster: {ray: {address: "%s", devices: cpu%s}}
defaults: {model: gpt2-tiny, data: synthetic-tokens, seq_len: 16, batch_size: 4, precision: fp32,
           techniques: [ddp], gpus: [1]}
jobs:
%s
"""


def _entry(nid, alive=True, **res):
    return {"NodeID": nid, "Alive": alive, "NodeManagerHostname": "host.example", "NodeManagerAddress": "10.0.0.1",
            "Resources": res}


def test_nodes_from_entries_gpu_and_cpu():
    entries = [_entry("aa" * 28, CPU=8.0), _entry("bb" * 28, GPU=4.0, **{"accelerator_type:H100": 1.0}),
               _entry("cc" * 28, alive=False, GPU=8.0), _entry("dd" * 28, saturn_slots=2.0, CPU=2.0)]
    gpu = nodes_from_entries(entries)
    assert [(n.name, n.gpus, n.gpu_type, n.gpu_memory_gb) for n in gpu] == [("host-bbbbbb", 4, "H100", 80.0)]
    cpu = nodes_from_entries(entries, "cpu")
    assert [(n.name, n.gpus, n.gpu_type) for n in cpu] == [("host-dddddd", 2, "cpu")]
    assert [n.gpus for n in nodes_from_entries(entries, "cpu", slots=3)] == [3, 2]


@pytest.fixture
def ray_cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1, resources={"saturn_slots": 2}) for _ in range(2)]
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()


def _setup(tmp_path, address, jobs: dict, extra=""):
    from saturn.spec import load_workload

    lines = "\n".join(f"  - {{name: {n}, steps: {s}}}" for n, s in jobs.items())
    w = tmp_path / "w.yaml"
    w.write_text(WORKLOAD % (address, extra, lines))
    wl = load_workload(w)
    prof = pd.DataFrame([{"job": n, "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.05,
                          "startup_s": 3.0, "feasible": True} for n in jobs])
    return wl, prof


def _tiles(js):
    segs = js.segments
    assert segs[0].start_step == 0
    for a, b in zip(segs, segs[1:]):
        assert b.start_step == a.end_step, [(s.start_step, s.end_step, s.status, s.node) for s in segs]
    return segs[-1].end_step


def _metric_steps(path: Path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_two_nodes_node_loss_every_job_completes(tmp_path, ray_cluster):
    from saturn.executor import ExecutorConfig
    from saturn.executor.backends.ray import RayBackend, RayExecutor
    from saturn.executor.build import resolve_cluster
    from saturn.executor.journal import Journal

    c, workers = ray_cluster
    jobs = {"a": 240, "b": 240, "c": 240}
    wl, prof = _setup(tmp_path, c.address, jobs)
    cluster = resolve_cluster(wl.cluster)
    assert len(cluster.nodes) == 2 and all(n.gpus == 2 and n.gpu_type == "cpu" for n in cluster.nodes)
    rd = tmp_path / "run"
    backend = RayBackend(rd, cluster.ray, checkpoint_every=20)
    ex = RayExecutor(wl.jobs, cluster, prof, backend, run_dir=rd,
                     config=ExecutorConfig(interval_s=1e9, time_limit_s=2.0, poll_s=0.2))
    by_id = {w.node_id: w for w in workers}
    name_to_id = backend.node_ids()
    assert {a["node"] for a in ex.state.plan["assignments"]} == set(name_to_id)  # both nodes used
    killed = joined = None
    agents = 0  # warm mode: one long-lived agent actor (warm workers) per node that ran a job
    t0 = time.monotonic()
    try:
        while ex.step():
            agents = max(agents, len(backend.agents))
            running = [js for js in ex.state.jobs.values() if js.status == "running"]
            if killed is None and any(js.committed_step >= 40 for js in running) \
                    and all(js.progress_step < 180 for js in running):
                per_node = {}
                for js in running:
                    per_node.setdefault(js.current.node, []).append(js.name)
                killed = max(per_node, key=lambda n: len(per_node[n]))  # the node with the most jobs
                c.remove_node(by_id[name_to_id[killed]])
            elif killed is not None and joined is None and killed not in ex.node_gpus:
                joined = c.add_node(num_cpus=1, resources={"saturn_slots": 2})  # used at the next re-plan
            assert time.monotonic() - t0 < 240, "run took too long"
            ex.backend.wait(0.2)
    finally:
        ex.backend.shutdown()
    assert killed is not None, "no job reached step 40 on a node before the run ended"
    assert (agents >= 2) == backend.warm
    for name, total in jobs.items():
        js = ex.state.jobs[name]
        assert js.status == "completed", (name, js.status, js.reason)
        assert _tiles(js) == total
        assert _metric_steps(rd / "jobs" / name / "metrics.jsonl") == list(range(total)), name
    lost = [(n, s) for n, js in ex.state.jobs.items() for s in js.segments if s.status == "lost"]
    assert lost and all(s.node == killed for _, s in lost)
    for n, _ in lost:  # relaunched on the surviving node
        assert ex.state.jobs[n].segments[-1].node != killed
    assert killed not in ex.node_gpus and len(ex.node_gpus) == 2
    events = [(k, d) for _, k, d in Journal(rd / "journal.sqlite").events()]
    node_lost = [d for k, d in events if k == "node_lost"]
    assert node_lost and node_lost[0]["node"] == killed and set(node_lost[0]["jobs"]) == {n for n, _ in lost}
    assert any(k == "plan" and d["reason"] == "node_lost" for k, d in events)
    new_name = next(n.name for n in backend.nodes() if n.node_id == joined.node_id)
    assert any(d["node"] == new_name for k, d in events if k == "node_joined")
    assert new_name in ex.node_gpus
    used_new = [n for n, js in ex.state.jobs.items() if any(s.node == new_name for s in js.segments)]
    assert (rd / "jobs" / lost[0][0] / "log.txt").read_text().count("=== attempt") >= 2  # logs streamed back
    print(f"node-loss run: {time.monotonic() - t0:.1f}s, lost {[n for n, _ in lost]} on {killed}; "
          f"ran on the joined node: {used_new}")
