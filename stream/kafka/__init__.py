"""Kafka clients behind one small interface: librdkafka by default, kafka-python on request.

``make_consumer(settings, options)`` and ``make_producer(settings, options)`` return a
:class:`Consumer` / :class:`Producer` of the backend ``settings.client`` names
(``confluent`` or ``kafka-python``, env ``LIVEREC_KAFKA_CLIENT``); bootstrap and
security come from the same :class:`~stream.settings.KafkaSettings`. Records are
:class:`Record` s, partitions ``(topic, partition)`` tuples, and every backend error
surfaces as :class:`KafkaClientError`.

Examples
--------
.. code-block:: python

    settings = KafkaSettings(bootstrap="localhost:9092")
    producer = make_producer(settings)
    producer.send("clicks", b"{...}", key=b"u1")
    producer.flush()
    consumer = make_consumer(settings, ConsumerOptions(group_id="g"))
    consumer.subscribe(["clicks"], on_revoke=lambda parts: consumer.commit(done))
    records = consumer.poll(500, 1.0)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from stream.kafka.admin import (
    as_settings,
    cluster_id,
    cluster_ready,
    committed_offsets,
    create_topics,
    delete_topics,
    end_offsets,
    wait_until_ready,
)
from stream.kafka.base import (
    Consumer,
    ConsumerOptions,
    DeliveryCallback,
    KafkaClientError,
    Partition,
    Producer,
    ProducerOptions,
    QueueFull,
    RebalanceCallback,
    Record,
    RecordBatch,
)
from stream.kafka.retry import run_with_backoff
from stream.settings import KafkaSettings

__all__ = [
    "Consumer",
    "ConsumerOptions",
    "DeliveryCallback",
    "KafkaClientError",
    "Partition",
    "Producer",
    "ProducerOptions",
    "QueueFull",
    "RebalanceCallback",
    "Record",
    "RecordBatch",
    "as_settings",
    "cluster_id",
    "cluster_ready",
    "committed_offsets",
    "create_topics",
    "delete_topics",
    "deliver",
    "end_offsets",
    "make_consumer",
    "make_producer",
    "run_with_backoff",
    "send_all",
    "wait_until_ready",
]


def make_consumer(settings: KafkaSettings | str, options: ConsumerOptions | None = None,
                  **overrides: Any) -> Consumer:
    """A consumer of the backend ``settings.client`` names (auto-commit off).

    ``overrides`` are :class:`ConsumerOptions` fields (``group_id=...``).
    """
    s = as_settings(settings)
    opts = replace(options or ConsumerOptions(), **overrides)
    if s.client == "kafka-python":
        from stream.kafka.kafkapython import KafkaPythonConsumer

        return KafkaPythonConsumer(s, opts)
    from stream.kafka.confluent import ConfluentConsumer

    return ConfluentConsumer(s, opts)


def make_producer(settings: KafkaSettings | str, options: ProducerOptions | None = None,
                  **overrides: Any) -> Producer:
    """A durable producer (acks=all, idempotent) of the backend ``settings.client`` names.

    ``overrides`` are :class:`ProducerOptions` fields (``client_id=...``).
    """
    s = as_settings(settings)
    opts = replace(options or ProducerOptions(), **overrides)
    if s.client == "kafka-python":
        from stream.kafka.kafkapython import KafkaPythonProducer

        return KafkaPythonProducer(s, opts)
    from stream.kafka.confluent import ConfluentProducer

    return ConfluentProducer(s, opts)


def deliver(producer: Producer, topic: str, value: bytes | None, key: bytes | None = None,
            headers: Iterable[tuple[str, bytes]] | None = None, *,
            timeout_s: float = 30.0) -> Record:
    """Send one record and wait for the broker's acknowledgement.

    Raises
    ------
    KafkaClientError
        Not delivered (the broker refused, or ``timeout_s`` passed).
    """
    done = threading.Event()
    outcome: list[tuple[KafkaClientError | None, Record | None]] = []

    def on_delivery(err: KafkaClientError | None, rec: Record | None) -> None:
        outcome.append((err, rec))
        done.set()

    producer.send(topic, value, key=key, headers=list(headers or ()),
                  on_delivery=on_delivery)
    deadline = time.monotonic() + timeout_s
    while not done.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            raise KafkaClientError(f"no acknowledgement from {topic} within {timeout_s:.0f}s",
                                   retriable=True)
        producer.flush(min(left, 0.5))
    err, rec = outcome[0]
    if err is not None:
        raise err
    assert rec is not None
    return rec


def send_all(producer: Producer, topic: str,
             records: Iterable[tuple[bytes | None, bytes | None]], *,
             timeout_s: float = 60.0) -> int:
    """Send ``(key, value)`` pairs and wait until all are acknowledged; returns the count.

    Raises
    ------
    KafkaClientError
        Some record was not delivered (the latest error is named).
    """
    failed_before = producer.failed_total
    n, chunk = 0, []
    for record in records:
        chunk.append(record)
        if len(chunk) >= 4096:
            producer.send_many(topic, chunk)
            producer.poll(0)
            n, chunk = n + len(chunk), []
    if chunk:
        producer.send_many(topic, chunk)
        n += len(chunk)
    left = producer.flush(timeout_s)
    failed = producer.failed_total - failed_before
    if failed or left:
        raise KafkaClientError(f"{failed + left} of {n} records not delivered to {topic}"
                               + (f"; last: {producer.last_error}" if producer.last_error
                                  else ""))
    return n
