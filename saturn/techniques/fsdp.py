"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer state sharded
over the devices; each block's parameters are all-gathered just before use.

For models whose replica (params + grads + Adam state = 16 bytes/param in fp32) does not fit one
device. Wrapping follows the PyTorch docs: `fully_shard` per block, then the root (embedding and
head go with the root). Parameters are DTensors, so checkpoints are saved sharded and DCP
reshards them for any other technique or process count.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from saturn.techniques.common import DataParallelTechnique, has_blocks
from saturn.techniques.knobs import knob, knob_dataclass
from saturn.techniques.registry import register
from saturn.training import loop


@knob_dataclass
class FSDPKnobs:
    reshard_after_forward: bool = knob(True, "free gathered block params after forward (ZeRO-3-like memory) "
                                             "or keep them for backward (ZeRO-2-like speed)")
    activation_checkpointing: bool = knob(False, "recompute each block's activations in backward")
    cpu_offload: bool = knob(False, "keep sharded params/grads/optimizer step on the CPU (CPUOffloadPolicy)")
    mixed_precision: Literal["autocast", "policy"] = knob(
        "autocast", "autocast (fp32 params, autocast compute) | policy (MixedPrecisionPolicy: params gathered "
                    "in the job's precision, gradients reduced in fp32)")
    compile: bool = knob(False, "torch.compile each block (CUDA; compile time is paid in start-up)")


@register
class FSDP(DataParallelTechnique):
    name = "fsdp"
    builder = "saturn.techniques.fsdp:build"
    requires = "torch>=2.6 (FSDP2 fully_shard); CPU offload needs CUDA"
    knob_type = FSDPKnobs

    def candidates(self, job: Any, gpus: int) -> list[dict[str, Any]]:
        mp = "policy" if job.precision != "fp32" else "autocast"
        base = {"reshard_after_forward": True, "activation_checkpointing": False,
                "cpu_offload": False, "mixed_precision": mp}
        out = [base, {**base, "reshard_after_forward": False}]
        if has_blocks(job):
            out.append({**base, "activation_checkpointing": True})
        out.append({**base, "activation_checkpointing": has_blocks(job), "cpu_offload": True})
        return out + ([{**base, "compile": True}] if has_blocks(job) else [])


def build(job: Any, knobs: dict[str, Any], ctx: Any) -> loop.Trainable:
    """Worker side: seeded CPU model, fully_shard per block then root, optimizer on the shards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    dtype = loop.autocast_dtype(job, ctx.device_type)
    use_policy = knobs.get("mixed_precision") == "policy" and dtype is not None
    offload = bool(knobs.get("cpu_offload")) and ctx.device_type == "cuda"
    from saturn.zoo.init import materialize

    model = loop.build_model(job, "meta")  # sharded first, then only this rank's shard is made
    dataset = loop.build_dataset(job, model)
    if not offload:
        materialize(model, ctx.device, job.seed)  # no-op for meta zoo models; moves factory ones
    if knobs.get("activation_checkpointing"):
        loop.apply_activation_checkpointing(model)
    loop.compile_blocks(model, knobs, ctx.device_type)  # before fully_shard, as torchtitan does
    kw: dict[str, Any] = {"mesh": init_device_mesh(ctx.device_type, (ctx.world_size,)),
                          "reshard_after_forward": bool(knobs.get("reshard_after_forward", True))}
    if use_policy:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    if offload:
        kw["offload_policy"] = CPUOffloadPolicy()
    for block in model.blocks():
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    materialize(model, "cpu" if offload else ctx.device, job.seed, gen_device=ctx.device)
    optimizer = loop.build_optimizer(job, model.parameters())
    step_job = job.model_copy(update={"precision": "fp32"}) if use_policy else job
    step = loop.standard_step(model, model.loss, optimizer, step_job, ctx.device_type)
    return loop.Trainable.for_module(model, optimizer, step, ctx.device, dp_rank=ctx.rank,
                                         dp_world=ctx.world_size, loss_weight=1.0 / ctx.world_size,
                                         dataset=dataset)
