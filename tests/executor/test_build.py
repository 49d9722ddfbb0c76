"""One road from workload to run (issue 13): `saturn run` (CLI), `saturn.run()` and the
`Orchestrator` build their executor through `saturn.executor.build`, and for the same workload get
the same backend, executor class and plan inputs. Ray clusters: tests/executor/test_build_ray.py."""

from __future__ import annotations

import ast
import dataclasses
from types import SimpleNamespace

import pandas as pd
import pytest

import saturn
from saturn.errors import SaturnError
from saturn.executor import Executor, ProcessBackend, SimulatedBackend
from saturn.executor import build as build_mod
from tests.helpers.paths import ROOT

WORKLOAD = """name: road
cluster: %s
defaults: {model: gpt2-tiny, data: synthetic-tokens, seq_len: 16, batch_size: 4, precision: fp32,
           techniques: [ddp], gpus: [1]}
jobs:
  - {name: a, steps: 40}
  - {name: b, steps: 20}
"""


class _Built(Exception):
    """Raised by the spy once the executor is built, so that nothing runs."""


def _spy(monkeypatch) -> list[dict]:
    seen: list[dict] = []
    real = build_mod.build_executor

    def spy(jobs, cluster, profiles, **kw):
        ex = real(jobs, cluster, profiles, **kw)
        seen.append({"executor": type(ex), "backend": type(getattr(ex.backend, "_inner", ex.backend)),
                     "device_type": getattr(ex.backend, "device_type", None), "nodes": dict(ex.node_gpus),
                     "gpu_types": sorted({n.gpu_type for n in ex.nodes}),
                     "jobs": {n: js.info.total_steps for n, js in ex.state.jobs.items()},
                     "profiles": profiles.reset_index(drop=True),
                     "plan": {k: (ex.state.plan or {}).get(k) for k in ("assignments", "makespan_s")},
                     "options": dataclasses.replace(kw["options"], run_dir=None), "config": ex.cfg.to_dict()})
        ex.backend.shutdown()
        raise _Built

    monkeypatch.setattr(build_mod, "build_executor", spy)
    return seen


def _files(tmp_path, cluster: str, gpu_type: str):
    w = tmp_path / "w.yaml"
    w.write_text(WORKLOAD % cluster)
    p = tmp_path / "p.csv"
    pd.DataFrame([{"job": j, "technique": "ddp", "knobs": "{}", "gpus": 1, "step_time_s": 0.05, "startup_s": 1.0,
                   "feasible": True, "gpu_type": gpu_type} for j in ("a", "b")]).to_csv(p, index=False)
    return w, p


def _cli(w, p, run_dir, simulate):
    from saturn.cli.run import run_command

    run_command(workload=w, plan=None, interval=60.0, run_dir=run_dir, resume=None, simulate=simulate, profiles=p,
                no_introspect=False, time_limit=2.0, max_retries=2, checkpoint_every=200, noise=0.15, seed=0,
                device_type="auto", live=False, progress_every=10.0, log_to=None, require_measured=False)


def _api(w, p, run_dir, simulate):
    saturn.run(w, profiles=p, run_dir=run_dir, simulate=simulate, time_limit_s=2.0)


def _both_doors(monkeypatch, tmp_path, cluster, gpu_type, simulate=False):
    w, p = _files(tmp_path, cluster, gpu_type)
    seen = _spy(monkeypatch)
    for i, door in enumerate((_cli, _api)):
        with pytest.raises(_Built):
            door(w, p, tmp_path / f"run{i}", simulate)
    cli, api = seen
    pd.testing.assert_frame_equal(cli.pop("profiles"), api.pop("profiles"))
    assert cli == api
    return cli


def _fake_gpus(monkeypatch, n=4):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name="NVIDIA H200", total_memory=141 * 2**30))


def test_cpu_slots_same_process_backend_from_every_door(monkeypatch, tmp_path):
    got = _both_doors(monkeypatch, tmp_path, "{devices: cpu, slots: 2}", "cpu")
    assert (got["executor"], got["backend"], got["device_type"]) == (Executor, ProcessBackend, "cpu")
    assert got["nodes"] == {"localhost": 2} and got["jobs"] == {"a": 40, "b": 20}
    assert {a["job"] for a in got["plan"]["assignments"]} == {"a", "b"}


def test_local_gpus_same_process_backend_from_every_door(monkeypatch, tmp_path):
    _fake_gpus(monkeypatch, 4)
    got = _both_doors(monkeypatch, tmp_path, "local", "H200")
    assert (got["executor"], got["backend"], got["device_type"]) == (Executor, ProcessBackend, "auto")
    assert list(got["nodes"].values()) == [4] and got["gpu_types"] == ["H200"]
    assert len(got["plan"]["assignments"]) == 2


def test_simulated_same_backend_from_every_door(monkeypatch, tmp_path):
    got = _both_doors(monkeypatch, tmp_path, "{devices: cpu, slots: 2}", "cpu", simulate=True)
    assert (got["executor"], got["backend"]) == (Executor, SimulatedBackend)
    assert got["config"]["poll_s"] == float("inf")


def test_orchestrator_builds_through_the_same_builder(monkeypatch, tmp_path):
    seen = _spy(monkeypatch)
    with pytest.raises(_Built):
        saturn.Orchestrator(saturn.Cluster(devices="cpu", slots=2), run_dir=tmp_path / "o")
    got = seen[0]
    assert (got["executor"], got["backend"], got["device_type"]) == (Executor, ProcessBackend, "cpu")
    assert got["nodes"] == {"localhost": 2}


def test_backend_choice_and_errors():
    cpu = saturn.Cluster(devices="cpu", slots=2)
    ray = saturn.Cluster.model_validate({"ray": {"address": "auto"}})
    opts = build_mod.RunOptions
    assert build_mod.backend_kind(cpu, opts()) == "process"
    assert build_mod.backend_kind(cpu, opts(simulate=True)) == "simulate"
    assert build_mod.backend_kind(ray, opts()) == "ray"
    assert build_mod.backend_kind(ray, opts(backend="process")) == "process"
    with pytest.raises(SaturnError, match="needs a cluster with `ray:`"):
        build_mod.backend_kind(cpu, opts(backend="ray"))
    with pytest.raises(SaturnError, match="backend must be"):
        build_mod.backend_kind(cpu, opts(backend="slurm"))


def test_the_spec_never_connects_to_ray():
    c = saturn.Cluster.model_validate({"ray": {"address": "ray://nowhere.invalid:10001"}})
    with pytest.raises(SaturnError, match="resolve_cluster"):
        c.resolved()
    wl = saturn.load_workload(WORKLOAD % '{ray: {address: "ray://nowhere.invalid:10001"}}')
    assert wl.cluster.ray.address.startswith("ray://")  # validation alone touches no network


def test_arrows_point_one_way():
    """Nothing outside saturn/cli imports saturn.cli; only saturn.executor imports ray_cluster."""
    for path in (ROOT / "saturn").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("saturn.cli"):
                    assert rel.startswith("saturn/cli/") or rel == "saturn/__main__.py", (rel, name)
                if "ray_cluster" in name:
                    assert rel.startswith("saturn/executor/"), (rel, name)
