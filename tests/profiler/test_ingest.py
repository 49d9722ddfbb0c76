"""Measured input cost (saturn.profiler.ingest), the data-wait phase in training, and the report
of input pipelines. CPU only."""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import pandas as pd
import torch

from saturn.data.report import data_summary, format_lines
from saturn.planner.inputs import JobSpec
from saturn.planner.options import rows_to_options
from saturn.profiler.ingest import ingest_columns, measure_dataset
from saturn.spec.schema import Job


def _job(tmp_path, **data_kw):
    return Job(name="v", model="vit-tiny", batch_size=8, seq_len=1, steps=4, precision="fp32",
               data={"name": "image-files", "path": str(tmp_path / "imgs"), "kwargs": {"generate": 32, **data_kw}})


def test_ingest_rate_per_core_and_cores_needed(tmp_path):
    job = _job(tmp_path)
    from saturn.zoo import model_config
    from saturn.zoo.data import build_dataset

    ds = build_dataset(job.data, job.seq_len, model_config("vit-tiny"), seed=0)
    m = measure_dataset(ds, 8, seconds=0.5)
    assert m["samples"] >= 8 and m["cpu_s"] > 0 and m["samples_per_core_s"] > 0
    cols = ingest_columns(job, 0.001, {"data_wait_s": 0.0004})
    rate = cols["ingest_samples_per_core_s"]
    assert rate > 0 and cols["data_wait_s"] == 0.0004
    # 8 samples every 1 ms = 8000 samples/s; cores = ceil(8000 / rate)
    assert abs(cols["cpu_cores"] - math.ceil(8000 / rate)) <= 1  # rate is rounded in the column
    synthetic = Job(name="s", model="vit-tiny", batch_size=8, seq_len=1, steps=4, data="synthetic-images")
    assert ingest_columns(synthetic, 0.01) == {}


def test_old_profile_rows_without_ingest_columns_plan_with_zero_cores():
    old = pd.DataFrame([{"job": "a", "technique": "ddp", "gpus": 1, "step_time_s": 0.1, "feasible": True}])
    new = old.assign(cpu_cores=[3.0], ingest_samples_per_core_s=[500.0])
    assert rows_to_options(JobSpec("a", 10), old)[0].cpu_cores == 0.0
    assert rows_to_options(JobSpec("a", 10), new)[0].cpu_cores == 3.0


class _Ctx:
    rank, device_type, device = 0, "cpu", torch.device("cpu")
    launch_time = time.time()

    def stop_requested(self):
        return False


def test_training_logs_data_wait_and_tuner_decisions(tmp_path):
    from saturn.training.loop import Trainable, build_dataset, train

    job = _job(tmp_path, tune=True, cores=4, window_s=0.05)
    ds = build_dataset(job, SimpleNamespace(config=SimpleNamespace(image_size=32, channels=3, num_classes=10)))
    seen = []

    def step_fn(x, y):
        seen.append(x.clone())
        time.sleep(0.02)
        return torch.tensor(1.0)

    t = Trainable(step_fn=step_fn, save=lambda *a: "", load=lambda p: {}, device=torch.device("cpu"), dataset=ds)
    jobdir = tmp_path / "run" / "jobs" / "v"
    jobdir.mkdir(parents=True)
    out = train(job, t, _Ctx(), mode="run", num_steps=12, metrics_path=str(jobdir / "metrics.jsonl"))
    ds.close()
    assert out["data_wait_s"] is not None and out["data_wait_s"] >= 0
    lines = [json.loads(s) for s in (jobdir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and all(0 <= r["data_wait_s"] <= r["step_time_s"] for r in lines)
    # the batches trained are the dataset's, in step order, whatever the tuner did
    for s, x in enumerate(seen):
        assert torch.equal(x, torch.stack([ds[s * 8 + k][0] for k in range(8)]))
    assert (jobdir / "data_tuner.jsonl").exists()
    summary = data_summary(tmp_path / "run")
    assert summary["v"]["wait"]["steps"] == 12 and summary["v"]["tuner"]["decisions"] >= 1
    assert "data wait" in format_lines(summary)[0] and "tuner:" in format_lines(summary)[0]
    assert "core moves kept" in format_lines(summary)[0] and "cores held per stage" in format_lines(summary)[0]


def test_workload_yaml_uses_a_pipeline_dataset_and_node_cores(tmp_path):
    from saturn.planner.inputs import normalize_cluster
    from saturn.spec import load_workload

    y = tmp_path / "w.yaml"
    y.write_text(f"""
name: data-demo
cluster:
  nodes:
    - {{name: node0, gpus: 4, gpu_memory_gb: 141, gpu_type: H200, cpu_cores: 16}}
jobs:
  - name: vision
    model: vit-tiny
    batch_size: 16
    seq_len: 1
    steps: 10
    data:
      name: image-files
      path: {tmp_path / "imgs"}
      kwargs: {{generate: 16, workers: {{decode: 2}}, prefetch: 3, tune: true}}
""")
    wl = load_workload(y)
    assert wl.cluster.nodes[0].cpu_cores == 16
    assert wl.jobs[0].data.name == "image-files"
    assert normalize_cluster(wl.cluster.resolved())[0].cpu_cores == 16
