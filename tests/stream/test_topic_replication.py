"""Topics this project creates take the configured replication factor, by default the
cluster's own (``default.replication.factor``), never a hard-coded 1."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from stream.kafka import KafkaClientError, create_topics, delete_topics
from stream.settings import KafkaSettings


def test_the_default_is_the_clusters_and_zero_is_refused(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    assert KafkaSettings().replication_factor == -1
    monkeypatch.setenv("LIVEREC_KAFKA_REPLICATION_FACTOR", "3")
    assert KafkaSettings().replication_factor == 3
    with pytest.raises(ValidationError, match="replication_factor"):
        KafkaSettings(replication_factor=0)


@pytest.mark.kafka
def test_created_topics_use_the_settings_replication_factor(kafka_settings: KafkaSettings
                                                            ) -> None:
    name = f"rf-{uuid.uuid4().hex[:12]}"
    # One broker: three replicas cannot be placed, so the setting reached the broker.
    three = kafka_settings.model_copy(update={"replication_factor": 3})
    with pytest.raises(KafkaClientError):
        create_topics(three, {name: 1}, timeout_s=10)
    try:
        assert create_topics(kafka_settings, {name: 1}) == [name]  # the cluster's default
    finally:
        delete_topics(kafka_settings, [name])
