"""A poison message -- one whose dead-letter copy would not fit the broker's limit --
neither halts learning nor hides from the count."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from online_models.snapshot import SnapshotStore
from stream.replay import produce_events
from tests.trainer.helpers import TrainerProcess, synthetic_events

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

POISON_BYTES = 1_048_450  # fits the broker's default limit; with DLQ headers it would not


def _produce_poison(bootstrap: str, topic: str) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 2_000_000})
    errors: list[object] = []
    p.produce(topic, value=b"{" + b"x" * (POISON_BYTES - 1), key=b"poison",
              on_delivery=lambda err, msg: errors.append(err) if err else None)
    assert p.flush(30) == 0 and not errors, errors


def test_poison_message_is_dead_lettered_truncated_and_learning_goes_on(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=1)
    events = synthetic_events(3000, seed=31)
    produce_events(kafka_bootstrap, topic, events[:1000])
    _produce_poison(kafka_bootstrap, topic)
    produce_events(kafka_bootstrap, topic, events[1000:])
    snaps = tmp_path / "snaps"
    proc = TrainerProcess(
        ["--bootstrap", kafka_bootstrap, "--topic", topic, "--group", f"g-{topic}",
         "--snapshots", str(snaps), "--models", "popularity", "--metrics-port", "-1",
         "--idle-exit-s", "5", "--max-seconds", "120"],
        tmp_path / "train.log")
    assert proc.wait(180) == 0, proc.log_text()[-3000:]
    snap = SnapshotStore(snaps).load()
    assert snap.events_total == 3000
    assert snap.offsets == {topic: {0: 3001}}  # the poison's offset moved too

    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "dlq-reader",
                  "auto.offset.reset": "earliest"})
    c.subscribe([f"{topic}.dlq"])
    try:
        msgs = [m for m in c.consume(10, 20.0) if m.error() is None]
    finally:
        c.close()
    assert len(msgs) == 1
    headers = dict(msgs[0].headers() or [])
    assert headers["reason"] == b"too_large"
    assert len(msgs[0].value()) < POISON_BYTES  # truncated, and says so
    assert headers["truncated"] == b"1"
    assert headers["payload_bytes"] == str(POISON_BYTES).encode()
    assert headers["source_offset"] == b"1000"
