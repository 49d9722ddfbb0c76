"""Saturn's Python API: the CLI stages as functions, and an online `Orchestrator` for HPO.

    import saturn
    wl = saturn.load_workload("configs/examples/tiny-cpu.yaml")
    table = saturn.profile(wl)                     # = `saturn profile` (fills the profile store)
    p = saturn.plan(wl)                            # = `saturn plan`   -> saturn.planner.Plan
    results = saturn.run(wl, run_dir="runs/x")     # = `saturn run`    -> {job: JobResult}

    # online: HPO frameworks decide *what* to train, Saturn decides *how and when*
    with saturn.Orchestrator(wl.cluster, run_dir="runs/hpo") as orch:
        fut = orch.submit(saturn.Job(name="a", model="gpt2-tiny", batch_size=4, seq_len=16, steps=50))
        orch.report("a")            # JobReport: status, step, loss, metrics [(step, loss)], ...
        fut.metrics()               # intermediate values so far
        orch.cancel("a")            # frees its GPUs; the executor re-plans the rest
        fut.result(timeout=600)     # JobReport with the final loss, checkpoint, metrics path

The orchestrator runs the (synchronous) introspective executor in a background thread: `submit`
and `cancel` only enqueue commands that the loop thread applies between executor steps, so a batch
submitted together (`submit_many`, or several `submit` calls between two steps) is planned
together. Reads (`report`, futures) see snapshots the loop publishes after every step.

Modules, in stage order: workload (load: a Workload, cluster resolved), stages (profile,
profiles_table, plan), run_stages (prepare_run, run), futures (JobReport, JobFuture), orchestrator
(the Orchestrator: intake + executor thread + results), intake (submit / cancel, profile rows),
executor_thread (the background loop). Executors are built by `saturn.executor.build` for every
front door, so `saturn.run()`, `Orchestrator` and `saturn run` pick the same backend.
"""

from typing import Any

from saturn.api.futures import JobFuture, JobReport, OrchestratorError
from saturn.api.run_stages import run
from saturn.api.stages import plan, profile, profiles_table, synthetic_profiles


def __getattr__(name: str) -> Any:
    """`Orchestrator` (and with it the executor and torch) is imported on first use, so that
    `saturn plan` and `saturn validate` start without torch."""
    if name == "Orchestrator":
        from saturn.api.orchestrator import Orchestrator

        return Orchestrator
    raise AttributeError(f"module 'saturn.api' has no attribute {name!r}")


__all__ = ["JobFuture", "JobReport", "Orchestrator", "OrchestratorError", "plan", "profile", "profiles_table", "run",
           "synthetic_profiles"]
