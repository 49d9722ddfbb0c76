"""Saturn: jointly select parallelism, allocate GPUs and schedule many training jobs (SPASE).

    import saturn
    wl = saturn.load_workload("configs/examples/tiny-cpu.yaml")
    saturn.profile(wl); p = saturn.plan(wl); results = saturn.run(wl, run_dir="runs/x")
    df = saturn.results("runs/x")     # one row per job, swept hyperparameters as columns
    with saturn.Orchestrator(wl.cluster, run_dir="runs/hpo") as orch:   # online (HPO)
        fut = orch.submit(job); fut.metrics(); orch.cancel(job); fut.result()

The API names (profile, plan, run, Orchestrator, JobFuture, JobReport) live in `saturn.api` and are
imported on first use, so `import saturn` stays light.
"""

from saturn.errors import SaturnError
from saturn.spec import Cluster, Job, Node, Workload

__version__ = "0.1.0"

# Names served lazily from saturn.api (module __getattr__ below); listed literally in __all__ so
# that linters and `from saturn import *` see plain strings.
_API = ("JobFuture", "JobReport", "Orchestrator", "OrchestratorError", "plan", "profile", "run",
        "synthetic_profiles")
__all__ = ["Cluster", "Job", "JobFuture", "JobReport", "Node", "Orchestrator", "OrchestratorError", "SaturnError",
           "Workload", "__version__", "load_workload", "plan", "profile", "results", "run", "synthetic_profiles"]


def __getattr__(name: str):
    if name == "load_workload":  # the spec loader with the registry's checks (saturn.techniques.checks)
        from saturn.techniques.checks import load_workload

        return load_workload
    if name in _API or name == "api":  # `saturn.api.X` works after a bare `import saturn`
        import importlib

        api = importlib.import_module("saturn.api")  # (not `from saturn import api`: that asks here again)
        return api if name == "api" else getattr(api, name)
    if name == "results":  # a run's results table (saturn.analysis), pandas only
        from saturn.analysis import results

        return results
    raise AttributeError(f"module 'saturn' has no attribute {name!r}")
