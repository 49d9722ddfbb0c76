"""Every process Saturn starts, and nothing else: launching workers cold (`launch`, `worker`) or on
long-lived warm workers (`warm`, `warm_handle`, `warm_worker`), the job runner process
(`job_runner`), supervision and the worker environment (`process`), checkpoint staging (`staging`)
and background drains (`drain`). It imports no technique, executor or planner code: what to run
and what a warm worker preloads are handed to it by name."""
