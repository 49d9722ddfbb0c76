"""A study never stalls (#16): retries are bounded per job whatever its progress, a retry re-plans,
and a crashing job never keeps other jobs from a free slot."""

from __future__ import annotations

import pandas as pd

from saturn.executor import Executor, ExecutorConfig, SimulatedBackend


def _table(jobs):
    return pd.DataFrame([{"job": j, "technique": "ddp", "gpus": 1, "step_time_s": 1.0, "feasible": True,
                          "startup_s": 0.0} for j in jobs])


class CrashAfterProgress(SimulatedBackend):
    """Job "bad" makes 5 steps of progress on every attempt, then its worker dies (no checkpoint)."""

    def launch(self, job, assignment, start_step, attempt):
        if job.name == "bad":
            self.crash_at["bad"] = start_step + 5
            assert attempt <= 10, "relaunched forever"
        return super().launch(job, assignment, start_step, attempt)


def test_crash_after_progress_fails_after_bounded_retries_while_others_use_the_free_slot():
    jobs = {"bad": 100, "a": 30, "b": 30, "c": 30}
    be = CrashAfterProgress(lambda *k: 1.0, checkpoint_every=0)  # the Orchestrator's default
    ex = Executor(jobs, {"n": 2}, _table(jobs), be,
                  config=ExecutorConfig(interval_s=1e9, max_retries=2, time_limit_s=0.5, poll_s=1.0))
    ex.run_until_done()
    bad = ex.state.jobs["bad"]
    assert bad.status == "failed"
    assert len(bad.segments) == 3  # first attempt + max_retries relaunches, whatever the progress
    assert all(s.status == "failed" and (s.last_progress or (0, -1))[1] >= s.start_step + 4 for s in bad.segments)
    assert "failed 3 times" in bad.reason and "simulated failed" in bad.reason  # the real reason
    for name in ("a", "b", "c"):
        assert ex.state.jobs[name].status == "completed"
    # no slot idles while a job waits: 105 GPU-seconds of work on 2 slots, jobs of 30 s
    ends = [seg.ended_at for js in ex.state.jobs.values() for seg in js.segments]
    print(sorted((n, s.launched_at, s.ended_at) for n, js in ex.state.jobs.items() for s in js.segments))
    assert max(ends) <= 60 + 1e-6


def test_a_checkpoint_past_the_committed_step_earns_back_one_retry():
    from saturn.executor.journal import apply_event
    from saturn.executor.state import JobInfo, JobState, RunState

    st = RunState()
    st.jobs["j"] = JobState(info=JobInfo(name="j", total_steps=100))
    for i in range(2):
        apply_event(st, float(i), "launch", {"job": "j", "technique": "ddp", "gpus": [0], "node": "n",
                                             "start_step": 0})
        apply_event(st, float(i) + 0.5, "progress", {"job": "j", "step": 4})
        apply_event(st, float(i) + 0.6, "finished", {"job": "j", "status": "failed", "step": 0, "reason": "x"})
    assert st.jobs["j"].failures == 2  # progress without a checkpoint earns nothing back
    apply_event(st, 3.0, "checkpoint", {"job": "j", "step": 10})
    assert st.jobs["j"].failures == 1
    apply_event(st, 3.1, "checkpoint", {"job": "j", "step": 10})  # not past the committed step
    assert st.jobs["j"].failures == 1
