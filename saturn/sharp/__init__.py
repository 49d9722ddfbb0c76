"""SHARP (shard-alternated training, the second half of Hydra): many spilled models, one pool
of workers. `scheduler` is the policy (Sharded-LRTF), `group` the execution, `planning` the
planner's group option; models are `saturn.techniques.spilling` engines."""

from saturn.sharp.group import GroupStats, Member, SharpGroup, WorkerKilled
from saturn.sharp.scheduler import Progress, ShardedLRTF

__all__ = ["GroupStats", "Member", "Progress", "SharpGroup", "ShardedLRTF", "WorkerKilled"]
