"""Checkpoints off the critical path (issue 14) and never trusted blindly (issue 15).

Background (async DCP) saves publish only once written and fsynced; a SIGKILL during one leaves the
previous checkpoint the resume point with no step lost; a damaged newest checkpoint (truncated or
missing file, garbled meta.json) falls back to the newest intact one with a warning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from saturn.runtime import drain
from saturn.training import catalog, loop
from saturn.training import checkpoint as ckpt
from tests.helpers.paths import ROOT
from tests.helpers.tiny import cpu_ctx, tiny_job, trainable


def _train(job, t, d, start, n, every=2):
    return loop.train(job, t, cpu_ctx(), mode="run", start_step=start, num_steps=n,
                          checkpoint_dir=str(d), checkpoint_every=every, technique="test")


def _losses(res):
    return [v for _, v in res["losses"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    _, _, t = trainable(tiny_job())
    return _losses(_train(tiny_job(), t, tmp_path_factory.mktemp("ref"), 0, 6, every=0))


def test_background_saves_publish_and_do_not_change_the_curve(reference, tmp_path):
    _, _, t = trainable(tiny_job())
    res = _train(tiny_job(), t, tmp_path, 0, 6, every=2)
    assert _losses(res) == reference
    assert res["checkpoint"] == str(tmp_path / "step-6")  # the final save is complete on return
    assert (tmp_path / "latest").read_text().strip() == "step-6"
    assert sorted(os.listdir(tmp_path)) == ["latest", "step-4", "step-6"]
    meta = catalog.check_intact(str(tmp_path / "step-4"))
    assert meta["step"] == 4 and ".metadata" in meta["files"]


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    import tests.training.test_checkpoint_async as T
    from tests.helpers.tiny import tiny_job, trainable

    slow_dir, marker = sys.argv[1], sys.argv[2]
    real = FileSystemWriter.write_data

    def write_data(self, plan, planner):  # the step-4 save hangs mid-write (in its thread)
        if "tmp-4" in str(self.fs.concat_path(self.path, "")):
            open(marker, "w").close()
            time.sleep(120)
        return real(self, plan, planner)

    FileSystemWriter.write_data = write_data
    _, _, t = trainable(tiny_job())
    T._train(tiny_job(), t, slow_dir, 0, 6, every=2)
""")


def test_sigkill_during_background_save_keeps_previous_resume_point(reference, tmp_path):
    d, marker = tmp_path / "ckpt", tmp_path / "writing"
    root = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(root=root), str(d), str(marker)],
                            env={**os.environ, "PYTHONPATH": root})
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the child never reached the step-4 save"
        time.sleep(0.3)  # the main thread trains on while the save drains
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert catalog.latest_checkpoint(str(d)) == str(d / "step-2")  # step-4 was never published
    assert not (d / "step-4").exists()
    model, opt, t = trainable(tiny_job().model_copy(update={"seed": 7}))  # other weights...
    t.dataset = loop.build_dataset(tiny_job(), model)  # ...same data: the load must fix them
    path, meta = ckpt.load_newest(str(d), t.load)
    assert path == str(d / "step-2") and meta["step"] == 2
    res = _train(tiny_job(), t, d, 2, 4)
    assert [s for s, _ in res["losses"]] == [2, 3, 4, 5]  # every step after the resume point
    assert _losses(res) == pytest.approx(reference[2:], abs=1e-6)
    assert (d / "latest").read_text().strip() == "step-6"
    assert not [n for n in os.listdir(d) if n.startswith("tmp-")]  # leftovers pruned


def _two_checkpoints(d):
    model, opt, t = trainable(tiny_job())
    ckpt.save_checkpoint(str(d), 2, model, opt, {"technique": "test"})
    ckpt.save_checkpoint(str(d), 4, model, opt, {"technique": "test"})
    return t


def _data_file(path):
    return next(p for p in sorted(os.listdir(path)) if p.endswith(".distcp"))


def test_truncated_newest_falls_back_with_a_warning(tmp_path):
    t = _two_checkpoints(tmp_path)
    f = tmp_path / "step-4" / _data_file(tmp_path / "step-4")
    f.write_bytes(f.read_bytes()[:100])
    with pytest.warns(catalog.CheckpointWarning, match="truncated"):
        assert catalog.latest_checkpoint(str(tmp_path)) == str(tmp_path / "step-2")
    with pytest.warns(catalog.CheckpointWarning):
        path, meta = ckpt.load_newest(str(tmp_path), t.load)
    assert path == str(tmp_path / "step-2") and meta["step"] == 2


def test_unreadable_data_without_recorded_sizes_falls_back_on_load(tmp_path):
    """Checkpoints written before sizes were recorded: DCP's own failure triggers the fallback."""
    t = _two_checkpoints(tmp_path)
    meta_path = tmp_path / "step-4" / catalog.META_FILE
    meta_path.write_text('{"step": 4}')
    (tmp_path / "step-4" / _data_file(tmp_path / "step-4")).write_bytes(b"garbage")
    assert catalog.latest_checkpoint(str(tmp_path)) == str(tmp_path / "step-4")  # looks intact
    with pytest.warns(catalog.CheckpointWarning, match="cannot be loaded"):
        path, meta = ckpt.load_newest(str(tmp_path), t.load)
    assert path == str(tmp_path / "step-2") and meta["step"] == 2


@pytest.mark.parametrize("garbage", ["{not json", "[]", '{"step": "four"}', ""])
def test_garbled_meta_json_is_skipped_with_a_clear_message(tmp_path, garbage):
    _two_checkpoints(tmp_path)
    (tmp_path / "step-4" / catalog.META_FILE).write_text(garbage)
    with pytest.raises(catalog.CheckpointError, match="step-4/meta.json"):
        catalog.read_meta(str(tmp_path / "step-4"))
    with pytest.warns(catalog.CheckpointWarning, match="meta.json"):
        assert catalog.latest_checkpoint(str(tmp_path)) == str(tmp_path / "step-2")


def test_only_checkpoint_garbled_means_start_over_not_a_traceback(tmp_path):
    model, opt, t = trainable(tiny_job())
    ckpt.save_checkpoint(str(tmp_path), 2, model, opt, {})
    (tmp_path / "step-2" / catalog.META_FILE).write_bytes(b"\xff\xfe")
    with pytest.warns(catalog.CheckpointWarning):
        assert ckpt.load_newest(str(tmp_path), t.load) == (None, None)


def test_older_steps_are_deleted_only_after_latest_moves(tmp_path, monkeypatch):
    """A crash right after the rename (before `latest` moves) keeps both steps loadable."""
    model, opt, _ = trainable(tiny_job())
    ckpt.save_checkpoint(str(tmp_path), 2, model, opt, {}, keep=1)

    real = catalog.atomic_write

    def crash(path, text):
        if path.endswith(catalog.LATEST_FILE):
            raise KeyboardInterrupt("killed between rename and pointer move")
        real(path, text)

    monkeypatch.setattr(catalog, "atomic_write", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(str(tmp_path), 4, model, opt, {}, keep=1)
    assert (tmp_path / "step-2").exists() and (tmp_path / "step-4").exists()
    assert (tmp_path / "latest").read_text().strip() == "step-2"
    assert catalog.latest_checkpoint(str(tmp_path)) == str(tmp_path / "step-2")


def test_failed_background_staging_falls_back_to_a_synchronous_save(tmp_path, monkeypatch):
    """A staging error inside DCP's async_save (seen on an H200: KeyError(<class 'type'>) from the
    stager's deep copy) must not fail the job: the save is made synchronously, published, and
    later saves of the process stay synchronous."""
    calls = []

    def broken_async_save(*a, **k):
        calls.append(1)
        raise KeyError(type)

    monkeypatch.setattr(drain.dcp, "async_save", broken_async_save)
    monkeypatch.setattr(drain.BACKGROUND, "broken", False)
    monkeypatch.setattr(drain, "world_size", lambda: 2)  # DCP's stager serves multi-process saves
    model = torch.nn.Linear(3, 2)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with drain.in_background(), pytest.warns(catalog.CheckpointWarning, match="synchronously"):
        path = ckpt.save_state(str(tmp_path), 2, sd, {}, {"job": "t"})
    assert catalog.latest_checkpoint(str(tmp_path)) == path and catalog.read_meta(path)["step"] == 2
    with drain.in_background():
        path4 = ckpt.save_state(str(tmp_path), 4, sd, {}, {"job": "t"})
    assert calls == [1] and catalog.latest_checkpoint(str(tmp_path)) == path4
    drain.wait_pending()
