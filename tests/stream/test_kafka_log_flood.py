"""A broker that does not answer: librdkafka's repeated connection failures reach the
log once per kind, not every attempt of every client (no broker needed)."""

from __future__ import annotations

import logging
import time

import pytest

from stream.kafka import make_consumer, make_producer
from stream.settings import KafkaSettings


def test_an_unreachable_broker_is_logged_once_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    settings = KafkaSettings(bootstrap="127.0.0.1:1", client="confluent")
    caplog.set_level(logging.INFO, logger="stream.kafka")
    consumer = make_consumer(settings, group_id="g-flood")
    producer = make_producer(settings)
    try:
        consumer.subscribe(["t"])
        end = time.monotonic() + 4.0  # dozens of connection attempts
        while time.monotonic() < end:
            consumer.poll_batch(10, 0.2)
            producer.poll(0)
    finally:
        consumer.close()
        producer.close(timeout_s=0.1)
    failures = [r.getMessage() for r in caplog.records if "Connect to" in r.getMessage()]
    assert failures, "librdkafka's connection failures are logged"
    # At most once per kind and logger (librdkafka's log, its error callback), per client.
    assert len(failures) <= 4, failures
