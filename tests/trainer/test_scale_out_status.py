"""A scale-out trainer's status line and rate gauge (no Kafka: nothing is opened)."""

from __future__ import annotations

import logging
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
