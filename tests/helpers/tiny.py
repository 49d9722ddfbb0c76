"""The tiny trainable the checkpoint and drain tests share: a gpt2-tiny job on CPU, its model,
optimizer and `Trainable` built the way a technique builds them, and a rank-0 worker context."""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from saturn.spec.schema import Job
from saturn.training import loop


def tiny_job(steps: int = 6) -> Job:
    return Job(name="t", model="gpt2-tiny", batch_size=4, seq_len=16, steps=steps, precision="fp32",
               optimizer={"name": "adamw", "lr": 1e-3})


def trainable(job: Job):
    """(model, optimizer, Trainable) for job on the CPU, with the job's dataset."""
    model = loop.build_model(job)
    opt = loop.build_optimizer(job, model.parameters())
    step = loop.standard_step(model, model.loss, opt, job, "cpu")
    return model, opt, loop.Trainable.for_module(model, opt, step, torch.device("cpu"),
                                                 dataset=loop.build_dataset(job, model))


def cpu_ctx() -> SimpleNamespace:
    """The worker context `loop.train` reads: rank 0 on the CPU, never asked to stop."""
    return SimpleNamespace(rank=0, device_type="cpu", device=torch.device("cpu"),
                           launch_time=time.time(), stop_requested=lambda: False)
