"""Every run default, defined once: `saturn run`'s flags, `saturn.run()`'s and the
`Orchestrator`'s keyword arguments, `RunOptions` and `ExecutorConfig` all read them from here, so
the doors cannot drift apart."""

INTERVAL_S = 60.0  # re-plan every S seconds of the run clock (and on every job end)
TIME_LIMIT_S = 10.0  # planner time limit per (re-)plan, seconds
MAX_RETRIES = 2  # relaunches of a crashed job from its checkpoint before it is failed
CHECKPOINT_EVERY = 200  # periodic checkpoint (and progress report) every N steps

# The Orchestrator (online, HPO) re-plans on every submit and cancel of short trials: a shorter
# planner limit keeps submit-to-start latency low, and a trial is cheaper to re-run than to
# checkpoint periodically (a pruned trial's checkpoints are thrown away).
ONLINE_TIME_LIMIT_S = 5.0
ONLINE_CHECKPOINT_EVERY = 0
