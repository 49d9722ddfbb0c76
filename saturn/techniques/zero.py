"""DeepSpeed ZeRO stages 1/2/3 with optional optimizer/parameter offload to the CPU.

ZeRO-1 shards the optimizer state, ZeRO-2 also the gradients, ZeRO-3 also the parameters; offload
moves the optimizer state (and for stage 3 the parameters) to host memory, trading PCIe traffic for
device memory. The job's own optimizer (a torch optimizer, so results match the other techniques) is
handed to DeepSpeed as a client optimizer. `deepspeed` is imported inside functions only (slow).

Checkpoints are canonical: full fp32 parameters and per-parameter optimizer state are gathered with
`deepspeed.utils.safe_get_full_*` and written with the shared DCP format, and loaded back with
`safe_set_full_*`, so a ZeRO job resumes under any technique and vice versa.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Optional

import torch

from saturn.techniques.base import Feasibility
from saturn.techniques.common import LaunchedTechnique, dp_feasible
from saturn.techniques.knobs import knob, knob_dataclass
from saturn.techniques.registry import register
from saturn.training import checkpoint as ckpt
from saturn.training import loop


@knob_dataclass
class ZeroKnobs:
    stage: int = knob(2, "1 (optimizer state sharded) | 2 (+ gradients) | 3 (+ parameters)", ge=1, le=3)
    offload_optimizer: bool = knob(False, "keep optimizer state and step on the CPU (ZeRO-Offload)")
    offload_param: bool = knob(False, "keep parameters on the CPU between uses (stage 3 only, ZeRO-Infinity)")
    micro_batch_size: Optional[int] = knob(None, "samples per device per forward; global batch / (devices * "
                                                 "this) = gradient accumulation steps (None: no accumulation)",
                                           ge=1)


@register
class Zero(LaunchedTechnique):
    name = "zero"
    builder = "saturn.techniques.zero:build"
    requires = "deepspeed (CPU slots: DS_ACCELERATOR=cpu is set for you)"
    knob_type = ZeroKnobs

    def feasible(self, job: Any, gpus: int) -> Feasibility:
        if importlib.util.find_spec("deepspeed") is None:
            return Feasibility(False, "deepspeed is not installed (pip install deepspeed)")
        return dp_feasible(job, gpus)

    def candidates(self, job: Any, gpus: int) -> list[dict[str, Any]]:
        base = {"stage": 2 if gpus > 1 else 3, "offload_optimizer": False, "offload_param": False,
                "micro_batch_size": None}
        out = [base] + [{**base, "stage": s} for s in (3, 1) if gpus > 1 and s != base["stage"]]
        out.append({**base, "stage": 3, "offload_optimizer": True})
        out.append({**base, "stage": 3, "offload_optimizer": True, "offload_param": True})
        return out

    def worker_env(self, device_type: str, knobs: dict[str, Any]) -> dict[str, str]:
        return {"DS_ACCELERATOR": "cpu"} if device_type == "cpu" else {}


def ds_config(job: Any, knobs: dict[str, Any], world: int, device_type: str) -> dict[str, Any]:
    """The DeepSpeed config for these knobs (global batch = job.batch_size)."""
    per_rank = job.batch_size // world
    micro = int(knobs.get("micro_batch_size") or per_rank)
    if per_rank % micro:
        raise ValueError(f"micro_batch_size {micro} does not divide the per-device batch {per_rank}")
    stage = int(knobs.get("stage", 2))
    zero: dict[str, Any] = {"stage": stage}
    if knobs.get("offload_optimizer"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    if knobs.get("offload_param"):
        if stage != 3:
            raise ValueError("offload_param needs ZeRO stage 3")
        zero["offload_param"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    dtype = loop.autocast_dtype(job, device_type)
    return {"train_batch_size": job.batch_size, "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": per_rank // micro, "zero_optimization": zero,
            "bf16": {"enabled": dtype == torch.bfloat16},
            "fp16": {"enabled": dtype == torch.float16, "initial_scale_power": 16},
            "gradient_clipping": 0.0,  # DeepSpeed clips at 1.0 by default; the job does not clip
            "zero_force_ds_cpu_optimizer": False, "zero_allow_untested_optimizer": True,
            "steps_per_print": 1 << 30, "wall_clock_breakdown": False}


def build(job: Any, knobs: dict[str, Any], ctx: Any) -> loop.Trainable:
    """Worker side: seeded model and the job's torch optimizer wrapped in a DeepSpeed engine."""
    import deepspeed

    model = loop.build_model(job, ctx.device)
    dataset = loop.build_dataset(job, model)
    config = ds_config(job, knobs, ctx.world_size, ctx.device_type)
    optimizer = loop.build_optimizer(job, model.parameters())
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    micro = config["train_micro_batch_size_per_gpu"]
    dtype = loop.autocast_dtype(job, ctx.device_type)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = []
        for xm, ym in zip(x.split(micro), y.split(micro)):
            if dtype is not None and xm.is_floating_point():
                xm = xm.to(dtype)  # DeepSpeed casts the model, not its inputs
            loss = model.loss(engine(xm), ym)
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach().float())
        return torch.stack(losses).mean()

    return loop.Trainable(step_fn=step, save=lambda d, s, meta: save(engine, job, d, s, meta),
                              load=lambda path: load(engine, job, path), device=ctx.device,
                              dp_rank=ctx.rank, dp_world=ctx.world_size,
                              loss_weight=1.0 / ctx.world_size, dataset=dataset)


def _state_keys(job: Any) -> tuple[str, ...]:
    """Per-parameter optimizer state tensors of the job's torch optimizer (besides `step`)."""
    if job.optimizer.name in ("adam", "adamw"):
        return ("exp_avg", "exp_avg_sq")
    return ("momentum_buffer",) if job.optimizer.kwargs().get("momentum") else ()


def _param_groups(job: Any, fqns: list[str]) -> list[dict[str, Any]]:
    defaults = loop.build_optimizer(job, [torch.nn.Parameter(torch.zeros(1))]).param_groups[0]
    return [{**{k: v for k, v in defaults.items() if k != "params"}, "params": fqns}]


def save(engine: Any, job: Any, ckpt_dir: str, step: int, meta: dict[str, Any]) -> str:
    """Gather full fp32 params + optimizer state per parameter name (collective), save canonical."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    model_sd: dict[str, Any] = {}
    state: dict[str, Any] = {}
    for fqn, p in engine.module.named_parameters():
        model_sd[fqn] = safe_get_full_fp32_param(p).detach().float().cpu().clone()
        entry = {"step": torch.tensor(float(step))}
        for key in _state_keys(job):
            value = safe_get_full_optimizer_state(p, key)
            if value is not None:
                entry[key] = value.detach().float().cpu().clone()
        state[fqn] = entry
    for fqn, b in engine.module.named_buffers():
        model_sd[fqn] = b.detach().cpu().clone()
    optim_sd = {"state": state, "param_groups": _param_groups(job, list(state))}
    return ckpt.save_state(ckpt_dir, step, model_sd, optim_sd, meta)


def load(engine: Any, job: Any, path: str) -> dict[str, Any]:
    """Read full tensors for every parameter, then scatter them into the engine's partitions:
    fp32 master weights and optimizer state (safe_set_full_*) and the working (bf16/fp32) params."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    params = dict(engine.module.named_parameters())
    shape = lambda p: tuple(getattr(p, "ds_shape", p.shape))  # noqa: E731 - ZeRO-3 partitions
    model_sd: dict[str, Any] = {f: torch.empty(shape(p)) for f, p in params.items()}
    model_sd.update({f: b.detach().cpu().clone() for f, b in engine.module.named_buffers()})
    keys = _state_keys(job)
    state = {f: {"step": torch.tensor(0.0), **{k: torch.empty(shape(p)) for k in keys}}
             for f, p in params.items()}
    meta = ckpt.load_state(path, model_sd, {"state": state})
    _materialize_optimizer_state(engine)
    for fqn, p in params.items():
        _set_working_param(p, model_sd[fqn])
        safe_set_full_fp32_param(p, model_sd[fqn])
        for k in keys:
            safe_set_full_optimizer_state(p, state[fqn][k], k)
    for fqn, b in engine.module.named_buffers():
        b.data.copy_(model_sd[fqn])
    _set_optimizer_step(engine, int(meta["step"]))
    return meta


def _set_working_param(p: torch.nn.Parameter, full: torch.Tensor) -> None:
    """The params forward uses: full on every rank (stages 1/2) or gathered then re-partitioned."""
    if hasattr(p, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
            if torch.distributed.get_rank() == 0:
                p.data.copy_(full.to(p.dtype))
    else:
        p.data.copy_(full.to(device=p.device, dtype=p.dtype))


def _materialize_optimizer_state(engine: Any) -> None:
    """DeepSpeed creates the inner optimizer's state lazily at the first step, and safe_set_full_*
    needs it: step each flat fp32 partition once with zero gradients at lr 0 (changes no
    weights; the state is overwritten right after), then link the per-parameter fragments as
    DeepSpeed does after its first real step (ZeRO-1/2)."""
    zero_opt = engine.optimizer
    inner = getattr(zero_opt, "optimizer", None)
    if inner is None:
        return
    if hasattr(zero_opt, "fp32_partitioned_groups_flat"):  # ZeRO-3 steps one sub-group at a time
        for i, flat in enumerate(zero_opt.fp32_partitioned_groups_flat):
            _zero_lr_step(inner, inner.param_groups[zero_opt.sub_group_to_group_id[i]], [flat])
    else:
        for group in inner.param_groups:
            _zero_lr_step(inner, group, list(group["params"]))
    if hasattr(zero_opt, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2
        zero_opt._hp_optimizer_states_linked = False
        zero_opt._lazy_init_hp_params_optimizer_state()


def _zero_lr_step(inner: Any, group: dict, params: list) -> None:
    saved_params, saved_lr = group["params"], group["lr"]
    others = [g for g in inner.param_groups if g is not group]
    saved_others = [g["params"] for g in others]
    for g in others:
        g["params"] = []
    group["params"], group["lr"] = params, 0.0
    for p in params:
        p.grad = torch.zeros_like(p)
    inner.step()
    for p in params:
        p.grad = None
    group["params"], group["lr"] = saved_params, saved_lr
    for g, ps in zip(others, saved_others):
        g["params"] = ps


def _set_optimizer_step(engine: Any, step: int) -> None:
    """Adam's bias correction depends on the step count: restore it in the inner optimizer."""
    inner: Optional[Any] = getattr(engine.optimizer, "optimizer", None)
    for s in (inner.state.values() if inner is not None else []):
        if "step" in s:
            s["step"] = torch.tensor(float(step)) if torch.is_tensor(s["step"]) else step
