"""Every run default, defined once: `saturn run`'s flags, `saturn.run()`'s and the
`Orchestrator`'s keyword arguments, `RunOptions` and `ExecutorConfig` all read them from here, so
the doors cannot drift apart."""

INTERVAL_S = 60.0  # re-plan every S seconds of the run clock (and on every job end)
TIME_LIMIT_S = 10.0  # planner time limit per (re-)plan, seconds
MAX_RETRIES = 2  # relaunches of a crashed job from its checkpoint before it is failed
CHECKPOINT_EVERY = 200  # periodic checkpoint (and progress report) every N steps
