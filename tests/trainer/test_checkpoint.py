"""Checkpoints: background writes, honest snapshot age, one trainer per location."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from stream.settings import KafkaSettings
from tests.trainer.helpers import synthetic_events
from tests.trainer.test_trainer_unit import _consumed
from trainer import Trainer, TrainerSettings
from trainer.checkpoint import SnapshotLocationBusy

KAFKA = KafkaSettings(topic="clicks")


def _trainer(root: Path) -> Trainer:
    return Trainer(TrainerSettings(snapshots=root, models="popularity,itemknn",
                                   metrics_port=-1), KAFKA)


def _age(t: Trainer) -> float:
    value = t.metrics.registry.get_sample_value("liverec_trainer_snapshot_age_seconds")
    assert value is not None
    return value


def test_background_write_then_commit_offsets(tmp_path: Path) -> None:
    t = _trainer(tmp_path / "s")
    events = synthetic_events(600, seed=1)
    t.handle(_consumed(events[:300], 0))
    assert t.checkpoint("periodic") is None  # submitted, not waited for
    t.handle(_consumed(events[300:], 300))  # learning goes on meanwhile
    t._finish_checkpoint(wait=True)
    assert t.snapshot_version == 1
    snap = t.checkpointer.store.load()
    # The snapshot holds the state as captured, not what was learned afterwards.
    assert snap.events_total == 300 and snap.offsets == {"clicks": {0: 300}}
    assert t.checkpoint("shutdown", wait=True).events_total == 600  # type: ignore[union-attr]


def test_a_failed_snapshot_does_not_reset_the_age(tmp_path: Path) -> None:
    root = tmp_path / "s"
    t = _trainer(root)
    assert _age(t) == -1.0  # nothing written yet
    t.handle(_consumed(synthetic_events(200, seed=2), 0))
    assert t.checkpoint("test", wait=True) is not None
    written_at = t.checkpointer.last_written_wall
    shutil.rmtree(root)
    root.write_text("not a directory any more")  # every write now fails
    t.handle(_consumed(synthetic_events(200, seed=3), 200))
    time.sleep(0.05)
    assert t.checkpoint("test", wait=True) is None
    assert t.metrics.registry.get_sample_value("liverec_trainer_snapshot_errors_total") == 1
    assert t.checkpointer.last_written_wall == written_at
    assert _age(t) >= 0.05


def test_restart_reads_the_age_of_the_snapshot_on_disk(tmp_path: Path) -> None:
    t = _trainer(tmp_path / "s")
    t.handle(_consumed(synthetic_events(100, seed=4), 0))
    t.checkpoint("test", wait=True)
    time.sleep(0.05)
    again = _trainer(tmp_path / "s")
    assert _age(again) >= 0.05


def test_second_trainer_on_one_location_is_refused(tmp_path: Path) -> None:
    first, second = _trainer(tmp_path / "s"), _trainer(tmp_path / "s")
    first.checkpointer.acquire(group="a")
    try:
        with pytest.raises(SnapshotLocationBusy, match="another trainer"):
            second.checkpointer.acquire(group="b")
    finally:
        first.checkpointer.close()
    second.checkpointer.acquire(group="b")  # free again once the first let go
    second.checkpointer.close()


def test_a_busy_location_is_refused_before_the_restore(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _trainer(tmp_path / "s")
    first.handle(_consumed(synthetic_events(100, seed=4), 0))
    first.checkpoint("test", wait=True)
    first.checkpointer.acquire(group="a")
    loads: list[int] = []
    from online_models.snapshot import SnapshotStore
    real = SnapshotStore.load_latest_valid

    def counted(self: SnapshotStore) -> object:
        loads.append(1)
        return real(self)

    monkeypatch.setattr(SnapshotStore, "load_latest_valid", counted)
    try:
        with pytest.raises(SnapshotLocationBusy, match="another trainer"):
            _trainer(tmp_path / "s")
        assert loads == []  # refused before reading any snapshot
    finally:
        first.checkpointer.close()
    again = _trainer(tmp_path / "s")  # the probe does not keep the lock
    assert loads == [1] and again.snapshot_version is not None
    again.checkpointer.acquire(group="b")
    again.checkpointer.close()


def test_a_full_disk_makes_room_and_does_not_flood_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import errno
    import logging

    t = _trainer(tmp_path / "s")
    store = t.checkpointer.store
    events = synthetic_events(500, seed=4)
    for n in range(4):
        t.handle(_consumed(events[n * 100:(n + 1) * 100], n * 100))
        assert t.checkpoint("test", wait=True) is not None
    assert store.versions() == [1, 2, 3, 4]

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "write_captured", full)
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        for n in range(3):  # three periods in a row on a full disk
            t.handle(_consumed(events[400 + n * 30:430 + n * 30], 400 + n * 30))
            assert t.checkpoint("test", wait=True) is None
    # The oldest versions went at once (pruning only followed a successful write).
    assert store.versions() == [3, 4] and store.latest_version() == 4
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # one line, with its traceback; the repeats are counted
    assert errors[0].exc_info is not None and "No space left" in errors[0].getMessage()
    assert sum("removed snapshot versions 1, 2" in r.getMessage()
               for r in caplog.records) == 1
    assert t.metrics.registry.get_sample_value("liverec_trainer_snapshot_errors_total") == 3
    # The status line says so (it kept printing the last version as if all were well).
    assert "snapshot=4 (writes failing for " in t.status_line()
    assert "OSError ENOSPC)" in t.status_line()
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        assert t.checkpoint("test", wait=True) is not None  # room again: it writes
    assert store.versions() == [3, 4, 5]
    assert "failing" not in t.status_line()
    assert sum("snapshot 5 written: snapshot writes succeed again" in r.getMessage()
               for r in caplog.records) == 1
