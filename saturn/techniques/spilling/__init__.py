"""Model spilling (in the spirit of Hydra): train a model bigger than GPU memory on one GPU.

The model's layer sequence is cut into *shards* (runs of consecutive layers). Master parameters
(fp32) and optimizer state live in host memory (pinned on CUDA), packed per shard into one flat
buffer per dtype so that a shard crosses the host<->GPU link as one copy, in the compute dtype.
Only the shards being computed (plus the ones being prefetched) live on the GPU. A step is a
list of shard tasks (forward of each shard, the head, backward of each shard with recomputation);
each shard's optimizer step runs on the host as soon as its gradients land, overlapped with the
next shard's transfers and compute.

Modules, each readable on its own:

* `shards`: where the model is cut (pure functions of sizes and a memory budget) and the host
  layout (flat master / gradient / compute-dtype buffers per shard);
* `transfer`: the transfer engine: every copy over the link, its stream and its events;
* `host_optimizer`: fused CPU Adam(W) per shard on a background thread, the GPU-optimizer mode,
  and the per-shard states as one canonical optimizer state;
* `engine`: one step as a sequence of shard tasks (`SpillingEngine`), checkpoints;
* `technique`: knobs, feasibility, the worker-side builder and the registered technique.

SHARP (many spilled models sharing a pool of workers) builds on the task interface: see
`saturn.sharp`.
"""

from saturn.techniques.spilling.engine import SpillingEngine
from saturn.techniques.spilling.host_optimizer import cpu_adam_speed, optimizer_class
from saturn.techniques.spilling.shards import (
                                               activation_estimate,
                                               budget_shards,
                                               packed_shards,
                                               uniform_shards,
)
from saturn.techniques.spilling.step_state import StepState
from saturn.techniques.spilling.technique import (
                                               DEFAULT_KNOBS,
                                               Spilling,
                                               build,
                                               engine_kwargs,
                                               host_bytes_needed,
)

__all__ = ["DEFAULT_KNOBS", "Spilling", "SpillingEngine", "StepState", "activation_estimate",
           "budget_shards", "build", "cpu_adam_speed", "engine_kwargs", "host_bytes_needed",
           "optimizer_class", "packed_shards", "uniform_shards"]
