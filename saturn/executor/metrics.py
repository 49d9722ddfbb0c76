"""Per-step metrics of a run: `jobs/<job>/metrics.jsonl`, one line per trained step, never lost.

Why the executor keeps its own file instead of trusting the attempt's result: an attempt that is
SIGKILLed (or whose executor is) never returns a result, yet every step it logged before its last
checkpoint is real training that the next attempt builds on. So:

* Live: every per-step progress record the backend streams (`{"step": next step, "loss"}` lines that
  the training loop appends to the attempt's `progress.jsonl`) is appended here at once and flushed +
  fsynced once per executor poll (`flush`).
* Settle (an attempt ended at checkpoint step E): records of that attempt at steps >= E are work the
  next attempt repeats; they move to `metrics-superseded.jsonl` (nothing logged is deleted) so that
  `metrics.jsonl` holds each step exactly once, from the attempt whose checkpoint kept it.
* Reconcile (`--resume`): the executor may have died before it read the last lines of an attempt's
  `progress.jsonl`; the launch event journals the file's size at launch, so each attempt's lines are
  re-read from there and whatever is missing is added, then every attempt is settled again. A half-
  written last line (killed mid-write) is dropped and re-derived from the progress file.

The file is rewritten (temp + fsync + rename) only when settling removes something.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from saturn.parse import finite_or_none, jsonl_records

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUPERSEDED_FILE = "metrics-superseded.jsonl"
PROGRESS_FILE = "progress.jsonl"


class MetricsLog:
    """The metrics files of every job of one run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._seen: dict[str, dict[tuple[int, int], None]] = {}  # job -> {(attempt, step)}
        self._pending: dict[str, list[str]] = {}
        self._written: set[str] = set()  # jobs whose metrics file this log wrote or found

    def path(self, job: str) -> Path:
        return self.run_dir / "jobs" / job / METRICS_FILE

    # ------------------------------------------------------------------------------------ write
    def record(self, job: str, seg: Any, step: int, loss: Any) -> None:
        """Queue the loss of `step` (0-based) trained by attempt `seg`, once per (attempt, step)."""
        seen = self._load(job)
        key = (int(seg.attempt), int(step))
        if key in seen or step < seg.start_step:
            return
        seen[key] = None
        f = finite_or_none(loss)
        self._pending.setdefault(job, []).append(json.dumps(
            {"step": int(step), "loss": f, "attempt": int(seg.attempt), "technique": seg.technique,
             "gpus": len(seg.gpus)}) + "\n")

    def record_progress(self, job: str, seg: Any, progress_step: Any, loss: Any) -> None:
        """A per-step progress record says `progress_step` steps are done: its loss is step - 1."""
        if loss is None or progress_step is None:
            return
        self.record(job, seg, int(progress_step) - 1, loss)

    def flush(self) -> None:
        """Append queued lines (one write, flush and fsync per job)."""
        for job, lines in list(self._pending.items()):
            if not lines:
                continue
            p = self.path(job)
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "a") as f:
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())
            self._pending[job] = []
            self._written.add(job)

    def missing(self) -> list[str]:
        """Jobs whose metrics.jsonl was written (or found) and is gone now (deleted mid-run)."""
        return [job for job in sorted(self._written) if not self.path(job).exists()]

    def rebuild(self, job: str, segments: list[Any]) -> None:
        """Write a deleted metrics.jsonl again from the attempts' progress records (every
        per-step line is there), keeping what metrics-superseded.jsonl already holds out."""
        self._pending.pop(job, None)
        p = self.path(job)
        self._seen[job] = {(int(r.get("attempt", 0)), int(r["step"])): None
                           for r in _read_records(p.parent / SUPERSEDED_FILE)}
        self._written.discard(job)
        self.reconcile(job, segments)
        if not p.exists():  # nothing to rebuild from (yet): an empty file, so this is said once
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
            self._written.add(job)

    # ---------------------------------------------------------------------------------- settle
    def settle(self, job: str, segments: Iterable[Any]) -> None:
        """Move records of ended attempts past their end step (and exact repeats) out of
        metrics.jsonl, so it holds each step once. Idempotent."""
        self.flush()
        p = self.path(job)
        if not p.exists():
            return
        ends = {int(s.attempt): s.end_step for s in segments if s.ended_at is not None}
        keep: list[dict[str, Any]] = []
        gone: list[dict[str, Any]] = []
        seen, total = set(), 0
        for rec in _read_records(p):
            total += 1
            a, s = int(rec.get("attempt", 0)), int(rec["step"])
            end = ends.get(a)
            if (a, s) in seen:
                continue
            seen.add((a, s))
            (gone if end is not None and s >= end else keep).append(rec)
        latest = {id(r) for r in _latest_per_step(keep)}
        gone += [r for r in keep if id(r) not in latest]  # a step an attempt re-ran: the newest wins
        keep = [r for r in keep if id(r) in latest]
        if len(keep) == total and not gone:
            return
        if gone:
            with open(p.parent / SUPERSEDED_FILE, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in gone))
                f.flush()
                os.fsync(f.fileno())
        _replace(p, "".join(json.dumps(r) + "\n" for r in sorted(keep, key=lambda r: (r["step"], r.get("attempt", 0)))))
        self._seen[job] = {(int(r.get("attempt", 0)), int(r["step"])): None for r in keep + gone}

    def reconcile(self, job: str, segments: list[Any]) -> None:
        """After a crash: add every per-step line of each attempt's progress file that metrics.jsonl
        lacks (attempt boundaries from the journaled offsets), then settle."""
        prog = self.run_dir / "jobs" / job / PROGRESS_FILE
        offsets = [getattr(s, "progress_offset", None) for s in segments]
        if prog.exists() and any(o is not None for o in offsets):
            data = prog.read_bytes()
            for i, seg in enumerate(segments):
                start = offsets[i]
                if start is None:
                    continue
                nxt = next((o for o in offsets[i + 1:] if o is not None), len(data))
                for line in data[start:nxt].splitlines():
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue  # a line cut by the kill
                    if (not isinstance(rec, dict) or rec.get("checkpoint")
                            or rec.get("attempt", seg.attempt) != seg.attempt):
                        continue
                    if "loss" in rec and "step" in rec:
                        self.record_progress(job, seg, rec["step"], rec["loss"])
        self.settle(job, segments)

    # --------------------------------------------------------------------------------- reading
    def _load(self, job: str) -> dict[tuple[int, int], None]:
        if job not in self._seen:
            p = self.path(job)
            _drop_partial_tail(p)
            if p.exists():
                self._written.add(job)
            recs = list(_read_records(p)) + list(_read_records(p.parent / SUPERSEDED_FILE))
            self._seen[job] = {(int(r.get("attempt", 0)), int(r["step"])): None for r in recs}
        return self._seen[job]


def read_metrics(path: Any) -> list[dict]:
    """The loss curve in `metrics.jsonl`: one record per step (the newest attempt's), by step."""
    return sorted(_latest_per_step(list(_read_records(Path(path)))), key=lambda r: r["step"])


def _latest_per_step(recs: list[dict]) -> list[dict]:
    best: dict[int, dict] = {}
    for r in recs:
        s = int(r["step"])
        if s not in best or int(r.get("attempt", 0)) >= int(best[s].get("attempt", 0)):
            best[s] = r
    return list(best.values())


def _read_records(p: Path) -> Iterable[dict]:
    """Records with a whole `step` (and `attempt`, if any); damaged lines are skipped, once
    warned about per file and count."""
    recs, bad = jsonl_records(p, required=("step",))
    if bad and _warned.get(str(p)) != bad:
        _warned[str(p)] = bad
        log.warning("%s: skipped %d undecodable line(s) (damaged file)", p, bad)
    return recs


_warned: dict[str, int] = {}


def bad_lines(p: Path) -> int:
    """How many lines of a metrics file cannot be read (for status/report warnings)."""
    return jsonl_records(p, required=("step",))[1]


def _drop_partial_tail(p: Path) -> None:
    """Cut a last line without its newline (the writer was killed mid-write)."""
    try:
        with open(p, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def _replace(p: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


