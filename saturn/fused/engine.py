"""The fused engine: K jobs of one shape trained as one batched model on one device.

How (horizontal fusion, as in HFTA / Hydro, on PyTorch's own tools): every member builds its own
model exactly as its solo run does (`saturn.training.loop.build_model`: the seeded init rule of
`saturn.zoo.init`), then the members' parameters are stacked along a new leading dimension
(one [K, ...] tensor per parameter) and each member's module is re-pointed at its slice of the
stack, so a member's `nn.Parameter`s *are* views of the group's storage. A step runs the model
once for all members with `torch.func.functional_call` under `torch.func.vmap` over the stacked
parameters and the stacked batches (one batched matmul per layer instead of K), gives each member
its own loss, and back-propagates the sum of the losses: d(sum)/d(theta_k) = d(loss_k)/d(theta_k)
exactly, so gradients never mix.

The optimizer step is each member's own optimizer -- the job's class and hyperparameters, built by
`training.build_optimizer` over the member's parameters (the stack slices), with its own fp16
`GradScaler` and optional per-member gradient clipping (`clip_grad_norm_` over the member's own
gradients). That is the solo code path, run K times over slices of the stacked tensors (torch's
foreach kernels on CUDA, as solo): a member's update, and its optimizer state, are exactly its
solo run's given the same gradients, and its checkpoint is written by the solo
`checkpoint.save_checkpoint(model, optimizer)` -- the technique-neutral format, which any
technique resumes, and which `add` loads into any other group. Why not one vectorised AdamW
over the stacked [K, ...] tensors with [K, 1, ...] hyperparameter tensors: it would be one
elementwise kernel per parameter tensor and stage (no foreach), more launches than K foreach
steps, whose kernel count is set by the bytes they cover (multi-tensor chunks), not by how many
calls they are split into; the K calls cost only their Python overhead (well under a ms each).

Fidelity: the batched forward/backward is not bit-for-bit the solo one. vmap's rule for
`F.linear` runs a batched matmul and then adds the bias, where solo `addmm` accumulates onto the
bias inside the GEMM, and a batched GEMM may block its reductions differently; a member's loss
agrees with its solo run's to about one float32 ulp per step (measured on CPU: |diff| <= 5e-7 on
losses ~5 over the first steps; tests/fused/test_engine.py bounds it). Everything else (init, data,
optimizer) is bitwise.

Members come and go between steps: `remove` (finished, cancelled or pruned: the member keeps its
values in its own storage) and `add` (a waiting job of the same shape, optionally resumed from its
checkpoint) re-stack the remaining members; their parameters and optimizer state are carried over
exactly.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from saturn.fused.grouping import FusionRefusal, check_group
from saturn.fused.vmap_check import vmap_refusal
from saturn.training import checkpoint as ckpt
from saturn.training import loop as training
from saturn.zoo.data import batch_for_step, made_on_device

VMAP_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]


@dataclass
class Member:
    """One job inside a fused engine: its own module (parameters = slices of the stack),
    optimizer, dataset, fp16 scaler and gradient clipping bound (None: no clipping, as solo)."""

    job: Any
    model: Any  # saturn.zoo.SequentialModel
    optimizer: torch.optim.Optimizer
    dataset: Any
    scaler: Optional[Any] = None
    max_grad_norm: Optional[float] = None

    @property
    def name(self) -> str:
        return str(self.job.name)

    def data_key(self) -> tuple:
        """Members with equal keys read identical batches at equal steps (one batch, shared)."""
        return (self.job.seed, self.job.data.model_dump_json())


class FusedEngine:
    """Train `jobs` (one shape, see `saturn.fused.grouping`) as one vmapped model on `device`."""

    def __init__(self, jobs: Sequence[Any], device: Any = "cpu", *,
                 max_grad_norm: Optional[dict[str, float]] = None,
                 checkpoints: Optional[dict[str, str]] = None):
        check_group(list(jobs))
        why = vmap_refusal(jobs[0])
        if why:
            raise FusionRefusal(why)
        self.device = torch.device(device)
        self._clip = dict(max_grad_norm or {})
        self.members: list[Member] = []
        self.template = training.build_model(jobs[0], "meta")  # the module functional_call runs
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self._vloss = vmap(self._loss, randomness="error")
        self.resumed: dict[str, dict[str, Any]] = {}
        for job in jobs:
            self._append(job, (checkpoints or {}).get(job.name))
        self._restack()

    # ------------------------------------------------------------------------- membership
    def _append(self, job: Any, checkpoint: Optional[str]) -> None:
        model = training.build_model(job, self.device)
        model.train()
        m = Member(job, model, training.build_optimizer(job, model.parameters()),
                   training.build_dataset(job, model), training.grad_scaler(job, self.device.type),
                   self._clip.get(job.name))
        if checkpoint:  # loaded while the module is still a plain solo module
            self.resumed[job.name] = ckpt.load_checkpoint(checkpoint, model, m.optimizer)
        self.members.append(m)

    def add(self, job: Any, checkpoint: Optional[str] = None) -> Member:
        """A job joins the group (resumed from `checkpoint`, any technique's, if given)."""
        if self.members:
            check_group([self.members[0].job, job])
        if any(m.name == job.name for m in self.members):
            raise ValueError(f"job {job.name!r} is already a member of this fused group")
        self._append(job, checkpoint)
        self._restack()
        return self.members[-1]

    def remove(self, name: str) -> Member:
        """A member leaves: its values move to storage of its own (it is a plain solo module and
        optimizer again), the others are re-stacked."""
        idx = self.index(name)
        m = self.members.pop(idx)
        with torch.no_grad():
            for p in m.model.parameters():
                p.data = p.detach().clone()
                p.grad = None
            for n, b in list(m.model.named_buffers()):
                owner, _, leaf = n.rpartition(".")
                setattr(m.model.get_submodule(owner), leaf, b.clone())  # a registered buffer stays one
        if self.members:
            self._restack()
        else:
            self.params, self.buffers = {}, {}
        return m

    def index(self, name: str) -> int:
        for i, m in enumerate(self.members):
            if m.name == name:
                return i
        raise KeyError(f"no member {name!r} in this fused group (members: {self.names})")

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def width(self) -> int:
        return len(self.members)

    def _restack(self) -> None:
        """One [K, ...] leaf tensor per parameter/buffer from the members' current values; each
        member's parameters then alias their slice (optimizer state stays keyed by the same
        Parameter objects, so it carries over untouched)."""
        with torch.no_grad():
            named = [dict(m.model.named_parameters()) for m in self.members]
            self.params = {n: torch.stack([d[n].detach() for d in named]).requires_grad_(True)
                           for n in named[0]}
            bufs = [dict(m.model.named_buffers()) for m in self.members]
            self.buffers = {n: torch.stack([d[n] for d in bufs]) for n in bufs[0]}
            for k, (m, d) in enumerate(zip(self.members, named)):
                for n, p in d.items():
                    p.data = self.params[n][k]
                for n in bufs[0]:
                    owner, _, leaf = n.rpartition(".")
                    setattr(m.model.get_submodule(owner), leaf, self.buffers[n][k])

    # ------------------------------------------------------------------------------ a step
    def _loss(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
              x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.template, (params, buffers), (x,))
        return self.template.loss(out, y)

    def batches(self, steps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked [K, ...] inputs and targets: member k's batch of its own step `steps[k]`
        (data position = step, as solo), made once per distinct (seed, data, step)."""
        made: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        xs, ys = [], []
        for m, s in zip(self.members, steps):
            key = (*m.data_key(), int(s))
            if key not in made:
                on_dev = made_on_device(m.dataset)
                x, y = batch_for_step(m.dataset, int(s), m.job.batch_size,
                                      device=self.device if on_dev else None)
                made[key] = (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))
            xs.append(made[key][0])
            ys.append(made[key][1])
        return torch.stack(xs), torch.stack(ys)

    def step(self, steps: Sequence[int]) -> torch.Tensor:
        """One optimizer step of every member at its data position `steps[k]`; returns the
        members' losses as a detached [K] tensor (no host sync)."""
        if len(steps) != self.width:
            raise ValueError(f"{len(steps)} steps for {self.width} members")
        x, y = self.batches(steps)
        for t in self.params.values():
            t.grad = None
        job0 = self.members[0].job
        # Under vmap on CUDA, the memory-efficient attention kernel's backward refuses the batched
        # log-sum-exp's strides (an H100 run: "LSE is not correctly aligned (strideH)"): flash
        # attention where it applies, else the math kernel.
        kernels = sdpa_kernel(VMAP_SDPA_BACKENDS) if self.device.type == "cuda" else nullcontext()
        with training.autocast(job0, self.device.type), kernels:
            losses = self._vloss(self.params, self.buffers, x, y)
        scalers = [m.scaler for m in self.members if m.scaler is not None]  # fp16: all or none
        scaled = [s.scale(losses[k]) for k, s in enumerate(scalers)]
        (torch.stack(scaled).sum() if scaled else losses.sum()).backward()
        names = list(self.params)
        for k, m in enumerate(self.members):
            own = list(m.model.parameters())
            for n, p in zip(names, own):
                g = self.params[n].grad
                p.grad = None if g is None else g[k]
            if m.max_grad_norm is not None:
                if m.scaler is not None:
                    m.scaler.unscale_(m.optimizer)
                torch.nn.utils.clip_grad_norm_(own, m.max_grad_norm)
            if m.scaler is None:
                m.optimizer.step()
            else:
                m.scaler.step(m.optimizer)
                m.scaler.update()
        return losses.detach()

    # ------------------------------------------------------------------------- checkpoints
    def save(self, name: str, ckpt_dir: str, step: int, meta: dict[str, Any]) -> str:
        """The member's checkpoint in the technique-neutral format (the solo save, see the module
        docstring); `step` is the member's next step."""
        m = self.members[self.index(name)]
        return ckpt.save_checkpoint(ckpt_dir, step, m.model, m.optimizer, meta)
