"""A trainer tells when Kafka stops answering it: ``liverec_trainer_kafka_contact_age_seconds``
grows while the broker is down (the LiverecTrainerKafkaUnreachable alert reads it) and
falls back once the broker answers again; the status line says so too. Before, a
trainer in an outage exported nothing that changed, and no alert of its own fired."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from stream.broker import LocalBroker, free_port
from stream.kafka import create_topics
from stream.kafka.admin import topic_exists
from stream.settings import KafkaSettings
from tests.faults.helpers import wait_for
from trainer import Trainer, TrainerSettings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

AGE = "liverec_trainer_kafka_contact_age_seconds"


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_contact_age_grows_in_an_outage_and_falls_after_it(
        tmp_path: Path, client: str, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = LocalBroker(tmp_path / "kafka", port=port).start()
    trainer: Trainer | None = None
    thread: threading.Thread | None = None
    try:
        create_topics(bootstrap, {"clicks": 1})
        kafka = KafkaSettings(bootstrap=bootstrap, topic="clicks", client=client)
        settings = TrainerSettings(group="g-silence", snapshots=tmp_path / "snaps",
                                   models="popularity", metrics_port=-1, status_every_s=0.5)
        trainer = Trainer(settings, kafka)
        thread = threading.Thread(target=trainer.run, daemon=True)
        thread.start()
        t = trainer

        def age() -> float:
            return t.metrics.registry.get_sample_value(AGE) or 0.0

        wait_for(lambda: t.source is not None and t.source.assigned, 60, "partitions")
        wait_for(lambda: t.source is not None and t.source.kafka_contact_at is not None,
                 30, "a first answer from Kafka")
        time.sleep(1.0)
        assert age() < 5.0

        broker.stop()
        with caplog.at_level(logging.INFO, logger="trainer.service"):
            wait_for(lambda: age() > 35.0, 90, f"{AGE} above 35 s with the broker down")
            wait_for(lambda: any("no answer from Kafka at " + bootstrap in r.getMessage()
                                 for r in caplog.records), 10, "the status line saying so")

        broker.start()
        wait_for(lambda: age() < 5.0, 120, f"{AGE} back under 5 s once the broker answers")
    finally:
        if trainer is not None:
            trainer.stop()
        if thread is not None:
            thread.join(60)
        broker.stop()


def test_a_mistyped_topic_is_named_in_the_status_line(
        kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A trainer on a topic that does not exist said only that it was waiting to join
    its group, as if the group were the problem, and created the topic's dead-letter
    topic. (librdkafka only: kafka-python's
    metadata requests make a broker that auto-creates topics create it.)"""
    client = "confluent"
    topic = f"clickz-{client}"
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic, client=client)
    settings = TrainerSettings(group=f"g-{topic}", snapshots=tmp_path / "snaps",
                               models="popularity", metrics_port=-1, status_every_s=0.5)
    trainer = Trainer(settings, kafka)
    thread = threading.Thread(target=trainer.run, daemon=True)
    with caplog.at_level(logging.INFO, logger="trainer.service"):
        thread.start()
        try:
            said = f"(topic {topic} does not exist at {kafka_bootstrap}"
            wait_for(lambda: any(said in r.getMessage() for r in caplog.records), 30,
                     "the status line naming the missing topic")
            # Its dead-letter topic waits for it: a typo used to leave <typo>.dlq behind.
            time.sleep(1.0)
            assert not topic_exists(kafka, f"{topic}.dlq")
            create_topics(kafka_bootstrap, {topic: 1})
            wait_for(lambda: topic_exists(kafka, f"{topic}.dlq"), 30,
                     "the dead-letter topic once its topic exists")
        finally:
            trainer.stop()
            thread.join(60)
