"""Poison messages cannot stall a partition (issue 10 item 1), with both Kafka clients.

A message of about 1,048,450 bytes fits the broker's default limit, but its
dead-letter copy with headers would not: the copy is cut to ``dlq_max_bytes`` and
keeps the original's size and SHA-256. A dead-letter write that fails every time is
retried a bounded number of times, then counted and skipped; a stop request ends
the retries at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from stream.consumer import ConsumedBatch, DeadLetterError, MiniBatchConsumer
from stream.dlq_guard import ensure_dead_letter_topic
from stream.events import ClickEvent, encode
from stream.kafka import create_topics, delete_topics, make_producer, send_all
from stream.settings import KafkaSettings
from tests.stream.test_consumer import at, drain, read_topic

pytestmark = pytest.mark.kafka

T0 = datetime(2024, 1, 1, tzinfo=UTC)
POISON_BYTES = 1_048_450


def _events(n: int) -> list[bytes]:
    return [encode(ClickEvent(f"e{i}", f"u{i}", "i1", "click", T0 + timedelta(seconds=i)))
            for i in range(n)]


def _produce(settings: KafkaSettings, topic: str, values: list[bytes]) -> None:
    producer = make_producer(settings)
    try:
        send_all(producer, topic, [(b"k", v) for v in values])
    finally:
        producer.close()


def test_a_1mb_poison_message_goes_to_the_dlq_truncated(kafka_settings, new_topic):
    topic = new_topic(partitions=1)
    poison = b'{"user_id": "' + b"x" * (POISON_BYTES - 15) + b'"}'
    assert len(poison) == POISON_BYTES
    good = _events(3)
    _produce(kafka_settings, topic, [good[0], poison, good[1], good[2]])
    with MiniBatchConsumer(at(kafka_settings, topic), "g-poison", batch_size=10) as c:
        batches = drain(c, 4)
        assert [e.event_id for b in batches for e in b.events] == ["e0", "e1", "e2"]
        assert c.rejected_by_reason == {"too_large": 1}
        assert c.dlq_failures_total == 0
        last: dict[tuple[str, int], int] = {}
        for b in batches:
            last.update(b.offsets)
        assert last == {(topic, 0): 4}  # the partition moved past the poison message
    (copy,) = read_topic(kafka_settings, f"{topic}.dlq", 1)
    h = dict(copy.headers)
    assert copy.value == poison[:kafka_settings.dlq_max_bytes]
    assert h["truncated"] == b"1" and h["payload_bytes"] == str(POISON_BYTES).encode()
    assert h["payload_sha256"] == hashlib.sha256(poison).hexdigest().encode()
    assert (h["reason"], h["source_offset"]) == (b"too_large", b"1")


@pytest.fixture
def unwritable_dlq(kafka_bootstrap: str) -> Iterator[str]:
    """A DLQ topic whose records may hold at most 1,000 bytes: even a truncated copy
    with its headers is refused by the broker, every time."""
    name = f"dlq-small-{uuid.uuid4().hex[:12]}"
    create_topics(kafka_bootstrap, {name: 1}, configs={"max.message.bytes": "1000"})
    yield name
    delete_topics(kafka_bootstrap, [name])


def test_a_dlq_write_that_keeps_failing_is_counted_and_skipped(kafka_settings, new_topic,
                                                              unwritable_dlq):
    topic = new_topic(partitions=1)
    settings = at(kafka_settings, topic).model_copy(update={"dlq_max_bytes": 4096})
    dlq = unwritable_dlq
    good = _events(3)
    _produce(kafka_settings, topic, [good[0], b"not json" + b" " * 3000, good[1], good[2]])
    learned: list[str] = []
    stop = threading.Event()

    def handle(batch: ConsumedBatch) -> None:
        learned.extend(e.event_id for e in batch.events)
        if len(learned) >= 3:
            stop.set()

    c = MiniBatchConsumer(settings, "g-dlq-fail", batch_size=10, dlq_topic=dlq,
                          dlq_attempts=3, dlq_backoff_s=0.05, dlq_timeout_ms=3_000)
    c.run(handle, stop=stop)
    assert learned == ["e0", "e1", "e2"]  # the partition was not stalled
    assert c.dlq_failures_total == 1
    assert c.rejected_by_reason == {"not_json": 1}


def test_a_stop_request_ends_dlq_retries_and_rewinds(kafka_settings, new_topic,
                                                     unwritable_dlq):
    topic = new_topic(partitions=1)
    settings = at(kafka_settings, topic).model_copy(update={"dlq_max_bytes": 4096})
    _produce(kafka_settings, topic, [_events(1)[0], b"not json" + b" " * 3000])
    stop = threading.Event()
    seen: list[str] = []
    with MiniBatchConsumer(settings, "g-dlq-stop", batch_size=10, dlq_topic=unwritable_dlq,
                           dlq_attempts=1000, dlq_backoff_s=5.0, dlq_timeout_ms=2_000,
                           stop=stop) as c:
        timer = threading.Timer(3.0, stop.set)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(DeadLetterError):
            for _ in range(40):
                seen.extend(e.event_id for e in c.next_batch(timeout_ms=500).events)
        assert time.monotonic() - t0 < 30  # not 1000 attempts
        assert c.dlq_failures_total == 0  # nothing skipped: the batch comes again
        stop.clear()
        c.dlq_attempts, c.dlq_backoff_s = 1, 0.01
        again = drain(c, 2 - len(seen), max_polls=40)
        seen.extend(e.event_id for b in again for e in b.events)
        assert seen == ["e0"]
        assert c.dlq_failures_total == 1


def test_a_dlq_that_keeps_failing_is_not_retried_by_every_batch(kafka_settings, new_topic,
                                                                unwritable_dlq):
    """After one batch's rejects failed every attempt, the next batches' rejects are
    counted and skipped without a try until the cool-down ends: a broken dead-letter
    topic must not make every batch with a reject wait out its retries."""
    topic = new_topic(partitions=1)
    settings = at(kafka_settings, topic).model_copy(update={"dlq_max_bytes": 4096})
    good = _events(4)
    poison = b"not json" + b" " * 3000
    # Batches of two records: each holds one event and one reject.
    _produce(kafka_settings, topic, [v for g in good for v in (g, poison)])
    c = MiniBatchConsumer(settings, "g-dlq-breaker", batch_size=2, dlq_topic=unwritable_dlq,
                          dlq_attempts=3, dlq_backoff_s=0.05, dlq_timeout_ms=3_000,
                          dlq_cooldown_s=3600.0)
    tries: list[int] = []
    write = c._write_dlq

    def counted(todo, errors, one_by_one=False):  # type: ignore[no-untyped-def]
        tries.append(len(todo))
        return write(todo, errors, one_by_one)

    c._write_dlq = counted  # type: ignore[method-assign]
    with c:
        batches = drain(c, 8)
    assert [e.event_id for b in batches for e in b.events] == ["e0", "e1", "e2", "e3"]
    assert tries == [1, 1, 1]  # the first batch's three attempts, then none
    assert c.dlq_failures_total == 4 and c.rejected_by_reason == {"not_json": 4}


def test_one_record_too_large_for_the_dlq_does_not_stop_the_others(kafka_settings, new_topic,
                                                                   unwritable_dlq):
    """The dead-letter topic takes small copies: a reject too large for it fails alone,
    and the breaker stays closed, so the next batch's rejects are written."""
    topic = new_topic(partitions=1)
    settings = at(kafka_settings, topic).model_copy(update={"dlq_max_bytes": 4096})
    big, small = b"not json" + b" " * 3000, b"not json"
    _produce(kafka_settings, topic, [big, small, small])
    c = MiniBatchConsumer(settings, "g-dlq-one-big", batch_size=2, dlq_topic=unwritable_dlq,
                          dlq_attempts=2, dlq_backoff_s=0.05, dlq_timeout_ms=3_000,
                          dlq_cooldown_s=3600.0)
    with c:
        drain(c, 3)
    assert c.dlq_failures_total == 1  # the big one only
    copies = read_topic(kafka_settings, unwritable_dlq, 2)
    assert [dict(r.headers)["source_offset"] for r in copies] == [b"1", b"2"]



def test_a_missing_dead_letter_topic_is_created_at_start(kafka_settings, caplog):
    """A cluster that does not create topics would refuse every reject (and fail a
    scale-out trainer's transaction): the trainers create the topic at start."""
    settings = at(kafka_settings, f"nodlq-{uuid.uuid4().hex[:12]}")
    try:
        with caplog.at_level(logging.INFO, logger="stream.dlq_guard"):
            assert ensure_dead_letter_topic(settings)
            assert ensure_dead_letter_topic(settings)  # exists now: nothing to do
        created = [r for r in caplog.records if r.getMessage().startswith("created")]
        assert [r.getMessage() for r in created] == [
            f"created the dead-letter topic {settings.dlq_topic}"]
        assert create_topics(settings, {settings.dlq_topic: 1}) == []  # it exists
    finally:
        delete_topics(kafka_settings, [settings.dlq_topic])
