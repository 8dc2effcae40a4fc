"""The item-features topic against a real broker: published compacted, read from the
beginning by the tail, later records (and tombstones) replace an item's content."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.item_features import (
    ItemFeaturesTail,
    encode_item_features,
    item_features_topic,
    publish_item_features,
)
from stream.kafka import delete_topics, make_producer, send_all
from stream.settings import KafkaSettings
from tests.trainer.helpers import wait_for

pytestmark = pytest.mark.kafka


@pytest.fixture
def features_topic(kafka_bootstrap: str) -> Iterator[str]:
    name = item_features_topic(f"t-{uuid.uuid4().hex[:12]}")
    yield name
    try:
        delete_topics(kafka_bootstrap, [name])
    except Exception as exc:  # cleanup must not mask the test's own result
        print(f"could not delete {name}: {exc}")


def _cleanup_policy(bootstrap: str, topic: str) -> str:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([res])[res].result(timeout=30)
    return str(configs["cleanup.policy"].value)


def test_published_content_is_compacted_and_tailed_with_updates(
    kafka_settings: KafkaSettings, features_topic: str
) -> None:
    catalogue = {"lamp": "Red wooden desk lamp", "film": ["genre:comedy", "toy", "story"]}
    assert publish_item_features(kafka_settings, catalogue, features_topic) == 2
    assert _cleanup_policy(kafka_settings.bootstrap, features_topic) == "compact"

    tail = ItemFeaturesTail(kafka_settings, features_topic)
    tail.start()
    try:
        wait_for(tail.caught_up.is_set, 60, "the tail read the published catalogue")
        assert tail.drain() == catalogue
        assert tail.drain() == {}
        producer = make_producer(kafka_settings)
        try:
            send_all(producer, features_topic, [
                encode_item_features("lamp", "Blue glass lamp"),
                (b"film", None),  # tombstone: the item's content is cleared
                (b"bad", b"not json"),  # skipped, the reader goes on
                encode_item_features("new", "Red wooden desk lamp, large"),
            ])
        finally:
            producer.close()
        wait_for(lambda: tail.pending == 3, 60, "the tail read the updates")
        assert tail.drain() == {"lamp": "Blue glass lamp", "film": [],
                                "new": "Red wooden desk lamp, large"}
        assert tail.skipped == 1
    finally:
        tail.stop()


def test_cli_publishes_a_movies_file(kafka_bootstrap: str, features_topic: str,
                                     tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from liverec.cli import app

    movies = tmp_path / "movies.csv"
    movies.write_text('movieId,title,genres\n1,"Toy Story (1995)",Animation|Comedy\n'
                      '2,Heat (1995),Action\n')
    result = CliRunner().invoke(app, ["features", "publish", str(movies), "--bootstrap",
                                      kafka_bootstrap, "--features-topic", features_topic])
    assert result.exit_code == 0, result.output
    assert "content of 2 items" in result.output
    tail = ItemFeaturesTail(kafka_bootstrap, features_topic)
    tail.start()
    try:
        wait_for(tail.caught_up.is_set, 60, "the tail read the published file")
        assert tail.drain()["1"] == ["toy", "story", "1995", "genre:animation",
                                     "genre:comedy", "decade:1990"]
    finally:
        tail.stop()
