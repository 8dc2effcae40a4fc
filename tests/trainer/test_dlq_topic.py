"""The trainer creates its dead-letter topic at start: on a cluster that does not
create topics, a missing one would otherwise show only at the first reject (and fail
a scale-out trainer's transaction)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from stream.kafka import create_topics, delete_topics
from stream.replay import produce_events
from stream.settings import KafkaSettings
from tests.trainer.helpers import synthetic_events, wait_for
from trainer import Trainer, TrainerSettings

pytestmark = pytest.mark.kafka


def _topics(bootstrap: str) -> set[str]:
    """The cluster's topics, read without creating any."""
    from confluent_kafka.admin import AdminClient

    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


def test_the_trainer_creates_a_missing_dead_letter_topic(kafka_bootstrap: str,
                                                         tmp_path: Path) -> None:
    topic = f"t-{uuid.uuid4().hex[:12]}"
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    create_topics(kafka, {topic: 1})  # and no dead-letter topic
    try:
        produce_events(kafka_bootstrap, topic, synthetic_events(300, seed=3))
        settings = TrainerSettings(snapshots=tmp_path / "s", models="popularity",
                                   group=f"g-{topic}", metrics_port=-1, idle_exit_s=2,
                                   max_seconds=60)
        assert Trainer(settings, kafka).run().events_total == 300
        # the check runs beside the loop; nothing was rejected, so only it creates it
        wait_for(lambda: kafka.dlq_topic in _topics(kafka_bootstrap), 30,
                 "the dead-letter topic exists")
    finally:
        delete_topics(kafka, [topic, kafka.dlq_topic])
