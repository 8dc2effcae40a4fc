"""The transactional producer's background commit, against the real broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from stream.kafka import ConsumerOptions
from stream.kafka.confluent import ConfluentConsumer
from stream.kafka.transactional import TransactionalProducer, TransactionFailed
from stream.settings import KafkaSettings

pytestmark = [pytest.mark.kafka]


def _committed_values(settings: KafkaSettings, topic: str, wait_s: float) -> list[bytes]:
    """What a ``read_committed`` reader sees of ``topic`` within ``wait_s``."""
    reader = ConfluentConsumer(settings, ConsumerOptions(
        client_id="test-reader", isolation_level="read_committed"))
    try:
        reader.assign_at({(topic, 0): 0})
        got: list[bytes] = []
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            got.extend(v for v in reader.poll_batch(100, 0.2).values if v is not None)
        return got
    finally:
        reader.close()


def test_a_background_commit_publishes_and_the_next_begin_waits_for_it(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=1)
    settings = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    group = ConfluentConsumer(settings, ConsumerOptions(group_id=f"g-{topic}"))
    prod = TransactionalProducer(settings, f"t-{uuid.uuid4().hex[:8]}")
    try:
        prod.init()
        for k in range(3):
            prod.begin()  # waits for the previous background commit
            assert not prod.committing and prod.in_transaction
            prod.send(topic, f"v{k}".encode(), partition=0)
            prod.commit_in_background({}, group)
            assert prod.committing
        prod.wait_committed()
        assert not prod.committing and not prod.in_transaction
        assert _committed_values(settings, topic, 3.0) == [b"v0", b"v1", b"v2"]
    finally:
        prod.close()
        group.close()


def test_a_fenced_producer_s_background_commit_fails_where_it_is_waited_for(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """A new incarnation with the same transactional id fences the old one: the old
    one's background commit fails, and the caller learns it at ``wait_committed``
    (the trainer then exits without a snapshot); nothing of it becomes visible."""
    topic = new_topic(partitions=1)
    settings = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    group = ConfluentConsumer(settings, ConsumerOptions(group_id=f"g-{topic}"))
    tid = f"t-{uuid.uuid4().hex[:8]}"
    old, new = TransactionalProducer(settings, tid), TransactionalProducer(settings, tid)
    try:
        old.init()
        old.begin()
        old.send(topic, b"zombie", partition=0)
        new.init()  # fences `old` and aborts its open transaction
        old.commit_in_background({}, group)
        with pytest.raises(TransactionFailed):
            old.wait_committed()
        assert not old.committing
        assert _committed_values(settings, topic, 2.0) == []
    finally:
        for p in (old, new):
            p.close()  # a fenced producer closes without raising (it once did)
        group.close()
