"""A Ray workload runs on Ray from every door (issue 13): `saturn run` and `saturn.run()` build the
same RayBackend/RayExecutor with the same nodes and plan, and an API run on a local 2-node
`ray.cluster_utils.Cluster` (head without slots + 2 nodes with 2 CPU slots each) executes its
jobs in Ray actors on those nodes. Slow (a Ray cluster start is ~15 s here); skipped without Ray."""

from __future__ import annotations

import pandas as pd
import pytest

import saturn

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'saturn[ray]')")

pytestmark = pytest.mark.slow

WORKLOAD = """name: api-ray
cluster: {ray: {address: "%s", devices: cpu}}
defaults: {model: gpt2-tiny, data: synthetic-tokens, seq_len: 16, batch_size: 4, precision: fp32,
           techniques: [ddp], gpus: [1]}
jobs:
  - {name: a, steps: 12}
  - {name: b, steps: 12}
"""


@pytest.fixture(scope="module")
def ray_address():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        c.add_node(num_cpus=1, resources={"saturn_slots": 2})
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    try:
        yield c.address
    finally:
        ray.shutdown()
        c.shutdown()


def _files(tmp_path, address):
    w = tmp_path / "w.yaml"
    w.write_text(WORKLOAD % address)
    p = tmp_path / "p.csv"
    pd.DataFrame([{"job": j, "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.05, "startup_s": 3.0,
                   "feasible": True, "gpu_type": "cpu"} for j in ("a", "b")]).to_csv(p, index=False)
    return w, p


def test_cli_and_api_build_the_same_ray_executor(monkeypatch, tmp_path, ray_address):
    from saturn.executor.backends.ray import RayBackend, RayExecutor
    from tests.executor.test_build import _api, _Built, _cli, _spy

    w, p = _files(tmp_path, ray_address)
    seen = _spy(monkeypatch)
    for i, door in enumerate((_cli, _api)):
        with pytest.raises(_Built):
            door(w, p, tmp_path / f"run{i}", False)
    cli, api = seen
    pd.testing.assert_frame_equal(cli.pop("profiles"), api.pop("profiles"))
    assert cli == api
    assert (cli["executor"], cli["backend"], cli["device_type"]) == (RayExecutor, RayBackend, "cpu")
    assert len(cli["nodes"]) == 2 and set(cli["nodes"].values()) == {2}


def test_api_run_of_a_ray_workload_runs_its_jobs_on_ray(tmp_path, ray_address):
    from saturn.executor.backends.ray import ray_run_settings
    from saturn.executor.journal import Journal
    from saturn.executor.ray_cluster import discover

    w, p = _files(tmp_path, ray_address)
    rd = tmp_path / "run"
    res = saturn.run(w, profiles=p, run_dir=rd, time_limit_s=2.0, checkpoint_every=6, interval_s=1e9)
    assert {n: r.status for n, r in res.items()} == {"a": "completed", "b": "completed"}, \
        {n: r.reason for n, r in res.items()}
    assert ray_run_settings(rd)["address"] == ray_address  # the RayExecutor journaled its Ray settings
    ray_nodes = {n.name for n in discover(ray_address, "cpu")[0]}
    events = list(Journal(rd / "journal.sqlite").events())
    launched = [d for _, k, d in events if k == "launch"]
    assert {d["job"] for d in launched} == {"a", "b"}
    assert all(d["node"] in ray_nodes for d in launched), (launched, ray_nodes)  # Ray nodes, not localhost


def test_orchestrator_on_a_ray_cluster_runs_submitted_jobs_on_ray(tmp_path, ray_address):
    from saturn.executor.backends.ray import RayExecutor
    from saturn.executor.journal import Journal

    cluster = saturn.Cluster.model_validate({"ray": {"address": ray_address, "devices": "cpu"}})
    job = saturn.Job(name="o", model="gpt2-tiny", batch_size=4, seq_len=16, steps=8, precision="fp32",
                     techniques=["ddp"], gpus=[1])
    prof = pd.DataFrame([{"job": "o", "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.05,
                          "startup_s": 3.0, "feasible": True, "gpu_type": "cpu"}])
    rd = tmp_path / "orch"
    with saturn.Orchestrator(cluster, run_dir=rd, profiles=prof, checkpoint_every=4, time_limit_s=2.0) as orch:
        assert isinstance(orch.executor, RayExecutor)
        rep = orch.submit(job).result(timeout=240)
    assert rep.status == "completed", rep.reason
    launched = [d for _, k, d in Journal(rd / "journal.sqlite").events() if k == "launch"]
    assert launched and all(d["node"] in orch.executor.node_gpus for d in launched)
    assert all(d["node"] != "localhost" for d in launched)
