"""#15: nothing of a run is lost -- metrics settle/reconcile, damaged journals, dead executors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from saturn.executor.journal import Journal, executor_liveness, mark_dead_jobs, record_executor
from saturn.executor.metrics import SUPERSEDED_FILE, MetricsLog, read_metrics
from saturn.executor.run_lock import RunLock
from tests.helpers.cli import saturn_cli


def _seg(attempt, start, end=None, offset=None):
    return SimpleNamespace(attempt=attempt, start_step=start, end_step=end, ended_at=None if end is None else 1.0,
                           technique="ddp", gpus=[0], progress_offset=offset)


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_killed_attempt_keeps_steps_up_to_its_checkpoint_and_supersedes_the_rest(tmp_path):
    m = MetricsLog(tmp_path)
    s1 = _seg(1, 0)
    for s in range(15):
        m.record_progress("j", s1, s + 1, 1.0 / (s + 1))
    m.flush()
    assert [r["step"] for r in _lines(m.path("j"))] == list(range(15))  # live, before any result
    s1.end_step, s1.ended_at = 10, 5.0  # killed; newest checkpoint at step 10
    m.settle("j", [s1])
    s2 = _seg(2, 10)
    for s in range(10, 20):
        m.record("j", s2, s, 0.5)
    m.record("j", s2, 12, 0.5)  # a repeat is written once
    m.flush()
    s2.end_step, s2.ended_at = 20, 9.0
    m.settle("j", [s1, s2])
    recs = _lines(m.path("j"))
    assert [r["step"] for r in recs] == list(range(20))
    assert [r["attempt"] for r in recs] == [1] * 10 + [2] * 10
    assert [r["step"] for r in _lines(m.path("j").parent / SUPERSEDED_FILE)] == list(range(10, 15))
    assert [r["step"] for r in read_metrics(m.path("j"))] == list(range(20))


def test_resume_reconciles_unread_progress_lines_and_a_cut_last_line(tmp_path):
    d = tmp_path / "jobs" / "j"
    d.mkdir(parents=True)
    prog = d / "progress.jsonl"
    lines1 = [json.dumps({"step": s + 1, "loss": 2.0, "wall": 0}) for s in range(12)]
    lines1.insert(5, json.dumps({"attempt": 1, "step": 5, "loss": 2.0, "checkpoint": "/x/step-5"}))
    prog.write_text("\n".join(lines1) + "\n")
    off2 = prog.stat().st_size
    with open(prog, "a") as f:
        f.write("\n".join(json.dumps({"step": s + 1, "loss": 1.0}) for s in range(10, 16)) + "\n")
        f.write('{"step": 17, "lo')  # the runner was killed mid-line
    # the executor had written steps 0-3 of attempt 1, then died mid-line
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0, "attempt": 1}) + "\n"
                                             for s in range(4)) + '{"step": 4, "lo')
    segs = [_seg(1, 0, end=10, offset=0), _seg(2, 10, end=15, offset=off2)]
    MetricsLog(tmp_path).reconcile("j", segs)
    recs = _lines(d / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(15))
    assert [r["attempt"] for r in recs] == [1] * 10 + [2] * 5
    sup = _lines(d / SUPERSEDED_FILE)
    assert sorted((r["attempt"], r["step"]) for r in sup) == [(1, 10), (1, 11), (2, 15)]
    MetricsLog(tmp_path).reconcile("j", segs)  # idempotent
    assert len(_lines(d / "metrics.jsonl")) == 15 and len(_lines(d / SUPERSEDED_FILE)) == 3


def _cli(argv, capsys):
    code, out, _ = saturn_cli(argv, capsys)
    return code, out


def _journal_with_run(tmp_path) -> Path:
    rd = tmp_path / "run"
    j = Journal(rd / "journal.sqlite")
    j.append(0.0, "run_started", {"wall": 0.0})
    j.append(0.1, "job_added", {"job": "a", "info": {"name": "a", "total_steps": 10}})
    j.append(0.2, "launch", {"job": "a", "technique": "ddp", "knobs": {}, "node": "n0", "gpus": [0], "start_step": 0})
    j.close()
    return rd


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbled", "no_events"])
def test_damaged_or_empty_journal_is_a_clear_error_exit_2(tmp_path, capsys, damage):
    rd = tmp_path / "run"
    path = rd / "journal.sqlite"
    if damage == "empty":
        rd.mkdir()
        path.write_bytes(b"")
    elif damage == "no_events":
        Journal(path).close()
    else:
        _journal_with_run(tmp_path)
        data = path.read_bytes()
        for extra in rd.glob("journal.sqlite-*"):
            extra.unlink()
        path.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"garbage!" * 100 + data[800:])
    for argv in (["run", "--resume", str(rd), "--no-live"], ["status", str(rd)]):
        if damage == "no_events" and argv[0] == "status":
            continue
        code, text = _cli(argv, capsys)
        assert code == 2, text
        assert "journal.sqlite" in text and ("new --run-dir" in text or "cannot" in text), text
        assert "Traceback" not in text


def test_journal_is_wal_with_full_sync(tmp_path):
    j = Journal(tmp_path / "journal.sqlite")
    assert j.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_status_tells_dead_from_running(tmp_path):
    rd = _journal_with_run(tmp_path)
    j = Journal(rd / "journal.sqlite")
    record_executor(j, rd)
    lock = RunLock.acquire(rd, create_dir=False)
    assert executor_liveness(rd, j)["state"] == "running"  # the run's lock is held
    lock.release()  # what the kernel does when the executor dies (the pid may live on, reused)
    os.utime(rd / "heartbeat", (0, 0))
    live = executor_liveness(rd, j)
    assert live["state"] == "dead" and "--resume" in live["detail"]
    s = mark_dead_jobs({"jobs": [{"job": "a", "status": "running"}, {"job": "b", "status": "pending"}]}, live)
    assert [x["status"] for x in s["jobs"]] == ["dead", "pending"]
    j.append(1.0, "run_stopped", {"reason": "SIGINT"})
    assert executor_liveness(rd, j)["state"] == "stopped"


def test_status_cli_marks_dead_run(tmp_path, capsys):
    rd = _journal_with_run(tmp_path)
    j = Journal(rd / "journal.sqlite")
    j.set_meta("executor", {"pid": 2 ** 22 + 7, "host": os.uname().nodename, "since": 0})
    j.close()
    from saturn.cli.run import status_command

    status_command(run_dir=rd, json_out=True)
    s = json.loads(capsys.readouterr().out)
    assert s["executor"]["state"] == "dead" and s["jobs"][0]["status"] == "dead"


def test_status_and_report_agree_a_killed_run_is_dead(tmp_path, capsys):
    """#31 item 8: after SIGKILL `saturn status` said dead while `saturn report` (and its --json)
    still showed the job running: both read one liveness now."""
    rd = _journal_with_run(tmp_path)
    j = Journal(rd / "journal.sqlite")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    j.set_meta("executor", {"pid": dead.pid, "host": os.uname().nodename, "since": 0})
    j.close()
    code, status_out, _ = saturn_cli(["status", rd], capsys)
    assert code == 0 and "dead" in status_out, status_out
    code, report_out, _ = saturn_cli(["report", rd, "--json", tmp_path / "r.json", "--gantt",
                                      tmp_path / "g.png"], capsys)
    assert code == 0, report_out
    assert json.loads((tmp_path / "r.json").read_text())["jobs"][0]["status"] == "dead"
    row = next(line for line in report_out.splitlines() if line.strip("│ ").split(" ")[:1] == ["a"])
    assert "dead" in row and "running" not in row, report_out


def test_sigint_after_every_job_ended_does_not_say_resume(tmp_path, monkeypatch, capsys):
    """#31 item 8: SIGINT during the final drain of a completed, durable job said to `--resume`
    (and the journal said 'stopped'): the stop came when nothing was left to stop."""
    import signal

    import saturn.executor.build as build
    from tests.helpers.cli import saturn_cli

    real = build.simulated_backend

    def signalling(*a, **k):
        be = real(*a, **k)
        poll = be.poll

        def poll_then_sigint():
            evs = poll()
            if any(getattr(e, "kind", "") == "finished" for e in evs):
                os.kill(os.getpid(), signal.SIGINT)  # while the executor settles the job's end
            return evs
        be.poll = poll_then_sigint
        return be

    monkeypatch.setattr(build, "simulated_backend", signalling)
    w = tmp_path / "w.yaml"
    w.write_text("name: s\ncluster: {devices: cpu, slots: 1}\n"
                 "jobs: [{name: a, model: gpt2-tiny, steps: 5, batch_size: 2, seq_len: 8, precision: fp32}]\n")
    t = tmp_path / "t.csv"
    t.write_text("job,technique,knobs,gpus,step_time_s,startup_s,feasible,gpu_type\na,ddp,{},1,0.1,1.0,True,cpu\n")
    rd = tmp_path / "run"
    code, out, _ = saturn_cli(["run", w, "--profiles", t, "--simulate", "--no-live", "--run-dir", rd], capsys)
    assert code == 0 and "--resume" not in out and "nothing to resume" in out, out[-2000:]
    j = Journal(rd / "journal.sqlite")
    try:
        assert executor_liveness(rd, j)["state"] == "finished"
    finally:
        j.close()
