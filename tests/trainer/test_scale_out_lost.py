"""A scale-out group whose snapshot directory is gone while its commits remain (a lost
volume, a wrong --snapshots) refuses to resume from what the topics still hold, unless
told to; a partition committed before its first periodic snapshot is not taken for lost."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from online_models.snapshot import SnapshotStore
from stream.kafka import committed_offsets
from stream.replay import produce_events
from stream.settings import KafkaSettings
from tests.trainer.helpers import synthetic_events
from trainer.lost_snapshot import MissingSnapshotError
from trainer.partition_state import PartitionStore
from trainer.partitioned import ScaleOutTrainer, updates_topic
from trainer.settings import TrainerSettings

pytestmark = pytest.mark.kafka

PARTITIONS = 2


def _settings(snaps: Path, group: str, **kw: object) -> TrainerSettings:
    given: dict[str, object] = dict(
        group=group, snapshots=snaps, models="popularity,itemknn", scale_out=True,
        instance_id="t0", snapshot_every_s=0.5, merge_every_s=0.5, session_timeout_ms=6000,
        metrics_port=-1, idle_exit_s=3.0, max_seconds=90)
    return TrainerSettings(**{**given, **kw})  # type: ignore[arg-type]


def _commits(kafka: KafkaSettings, group: str) -> dict[int, int]:
    return committed_offsets(kafka, group, kafka.topic)


def _partition_versions(snaps: Path) -> list[int]:
    return [v for p in range(PARTITIONS) for v in PartitionStore(snaps, p, 5).store.versions()]


def test_a_lost_directory_stops_a_scale_out_trainer_before_it_writes_anything(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    topic = new_topic(partitions=PARTITIONS)
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    group = f"g-{topic}"
    snaps = tmp_path / "snaps"
    produce_events(kafka_bootstrap, topic, synthetic_events(400, seed=1, n_users=50))
    assert ScaleOutTrainer(_settings(snaps, group), kafka).run().events_learned == 400
    commits = _commits(kafka, group)
    assert sorted(commits) == [0, 1] and sum(commits.values()) == 400
    assert SnapshotStore(snaps).load().events_total == 400

    produce_events(kafka_bootstrap, topic, synthetic_events(100, seed=2, n_users=50))
    shutil.rmtree(snaps)  # the volume is gone
    with pytest.raises(MissingSnapshotError) as err:
        ScaleOutTrainer(_settings(snaps, group), kafka).run()
    text = str(err.value)
    assert f"consumer group {group!r}" in text
    assert f"partition 0 at {commits[0]}, partition 1 at {commits[1]}" in text
    assert "--on-missing-snapshot resume" in text and "--group" in text
    assert repr(updates_topic(topic)) in text  # a new group would fold the old updates
    # Nothing durable: no partition state, no merged snapshot, the commits as they were.
    assert _partition_versions(snaps) == []
    assert SnapshotStore(snaps).latest_version() is None
    assert SnapshotStore(snaps / "items" / "t0").latest_version() is None
    assert not [f for f in snaps.rglob("*") if f.is_file()
                and f.name not in (".trainer.lock", "scale-out.json")]
    assert _commits(kafka, group) == commits

    # Accepting the loss: it re-learns user-side what the topic holds, learns on from
    # the commits, and says so.
    with caplog.at_level(logging.WARNING, logger="trainer.lost_snapshot"):
        result = ScaleOutTrainer(_settings(snaps, group, on_missing_snapshot="resume"),
                                 kafka).run()
    assert (result.events_learned, result.events_replayed) == (100, 400)
    assert any("resuming group" in r.getMessage() for r in caplog.records)
    assert sum(_commits(kafka, group).values()) == 500
    assert SnapshotStore(snaps).load().events_total == 500


def test_a_partition_committed_before_its_first_snapshot_is_not_lost(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    """A member that fails before its first periodic snapshot leaves commits; its
    partitions' state written at assignment shows they were never lost."""
    topic = new_topic(partitions=PARTITIONS)
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    group = f"g-{topic}"
    snaps = tmp_path / "snaps"
    produce_events(kafka_bootstrap, topic, synthetic_events(300, seed=3, n_users=50))
    first = ScaleOutTrainer(_settings(snaps, group, snapshot_every_s=3600.0,
                                      merge_every_s=3600.0, idle_exit_s=None), kafka)
    first._last_snapshot = first.item_side.last_merge = time.time()  # none due from the start
    th = threading.Thread(target=first.run)
    th.start()
    deadline = time.monotonic() + 90
    while sum(_commits(kafka, group).values()) < 300:
        assert time.monotonic() < deadline, "the first trainer never committed its events"
        time.sleep(0.2)
    first._fail()  # as after a failed transaction: it exits without a snapshot
    first.stop()
    th.join(60)
    assert not th.is_alive()
    # Only the states written when the partitions were assigned: empty, at offset 0.
    for p in range(PARTITIONS):
        snap = PartitionStore(snaps, p, 5).load(topic)
        assert snap is not None and snap.events_total == 0
        assert snap.offsets[topic][p] == 0
    assert SnapshotStore(snaps).latest_version() is None

    result = ScaleOutTrainer(_settings(snaps, group), kafka).run()  # the default: refuse
    assert (result.events_learned, result.events_replayed) == (0, 300)
    assert SnapshotStore(snaps).load().events_total == 300


def test_a_partition_whose_first_state_cannot_be_written_is_not_taken_over(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    topic = new_topic(partitions=PARTITIONS)
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    group = f"g-{topic}"
    produce_events(kafka_bootstrap, topic, synthetic_events(200, seed=3, n_users=50))

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PartitionStore, "write", full_disk)
    with pytest.raises(MissingSnapshotError, match="cannot write the first state of partition"):
        ScaleOutTrainer(_settings(tmp_path / "snaps", group), kafka).run()
    assert _commits(kafka, group) == {}  # nothing of it committed
