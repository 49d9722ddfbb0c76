"""Introspective execution: run a plan, observe real progress, re-plan and switch when it pays.

    from saturn.executor import Executor, ExecutorConfig, ProcessBackend, SimulatedBackend
    ex = Executor(workload.jobs, workload.cluster, profiles, ProcessBackend(run_dir), run_dir=run_dir)
    results = ex.run_until_done()

Modules: state (dataclasses), journal (SQLite event log + replay), estimates / planner_inputs /
candidates (pure decisions), backends (base, simulated, process, ray; runner: one attempt in a job
runner), loop (the Executor; its parts: events, replanning, launching, resume), config, run_files
and metrics (the run directory's files), display (rich live view), report (status, Gantt,
prediction error).
"""

from saturn.executor.backends.base import Backend, BackendEvent
from saturn.executor.backends.process import ProcessBackend
from saturn.executor.backends.simulated import SimulatedBackend
from saturn.executor.config import ExecutorConfig, ExecutorError
from saturn.executor.loop import Executor
from saturn.executor.state import JobInfo, JobResult, JobState, RunState

__all__ = ["Backend", "BackendEvent", "Executor", "ExecutorConfig", "ExecutorError", "JobInfo", "JobResult",
           "JobState", "ProcessBackend", "RunState", "SimulatedBackend"]
