"""A scale-out trainer's status line and rate gauge (no Kafka: nothing is opened)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from stream.settings import KafkaSettings
from trainer.partitioned import ScaleOutTrainer
from trainer.settings import TrainerSettings


def test_the_status_line_and_rate_gauge_follow_what_was_learned(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    t = ScaleOutTrainer(TrainerSettings(snapshots=tmp_path, models="popularity",
                                        scale_out=True, instance_id="a"),
                        KafkaSettings(bootstrap="127.0.0.1:1", topic="clicks",
                                      client="confluent"))
    t._status_mark = (100.0, 0)
    t.learner.events_learned = 500
    with caplog.at_level(logging.INFO, logger="trainer.partitioned"):
        t._status(105.0)
    assert t.metrics.registry.get_sample_value("liverec_trainer_events_per_second") == 100.0
    assert "events learned=500" in caplog.text and "rate=100/s" in caplog.text
    t._status(110.0)  # nothing learned since
    assert t.metrics.registry.get_sample_value("liverec_trainer_events_per_second") == 0.0


def test_the_snapshot_age_follows_the_partition_snapshots(tmp_path: Path) -> None:
    """LiverecSnapshotStale reads these: a scale-out trainer left them at 0 (never
    stale) before."""
    t = ScaleOutTrainer(TrainerSettings(snapshots=tmp_path, models="popularity",
                                        scale_out=True, instance_id="a"),
                        KafkaSettings(bootstrap="127.0.0.1:1", topic="clicks",
                                      client="confluent"))
    reg = t.metrics.registry
    assert reg.get_sample_value("liverec_trainer_snapshot_age_seconds") == -1.0  # none yet
    st = t.user_side.fresh_state(0)
    st.offset = 7
    t.user_side.snapshot({0: st})
    stamp = reg.get_sample_value("liverec_trainer_snapshot_timestamp_seconds")
    assert stamp is not None and abs(stamp - time.time()) < 60
    age = reg.get_sample_value("liverec_trainer_snapshot_age_seconds")
    assert age is not None and 0.0 <= age < 60
