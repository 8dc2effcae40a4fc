"""The sender's own logic (queue bound, deadlines, states) with an in-memory producer;
the same sender against a real broker is in tests/faults/test_write_path.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait

import pytest

from serving.ingest import DeliveryReport, Ingestor, IngestRefused, OnDelivery, Record


class MemoryProducer:
    """An :class:`EventProducer` that acknowledges at once, or holds records while
    ``hold`` is set and fails them when ``fail`` is set."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.hold = threading.Event()
        self.fail = False
        self.pending: list[tuple[bytes, OnDelivery | None]] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None,
             on_delivery: OnDelivery | None = None) -> None:
        if self.hold.is_set():
            self.pending.append((value, on_delivery))
            return
        if self.fail:
            if on_delivery:
                on_delivery(ConnectionError("broker gone"), None)
            return
        self.sent.append(value)
        if on_delivery:
            on_delivery(None, DeliveryReport(topic, 0, len(self.sent) - 1))

    def poll(self, timeout_s: float = 0.0) -> int:
        return 0

    def flush(self, timeout_s: float = 30.0) -> int:
        return 0

    def close(self, timeout_s: float = 30.0) -> None:
        pass


def _wait_state(ing: Ingestor, state: str) -> None:
    deadline = time.monotonic() + 10
    while ing.state != state and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ing.state == state, (ing.state, ing.reason)


def test_delivers_and_reports_offsets() -> None:
    producer = MemoryProducer()
    ing = Ingestor(lambda: producer, delivery_timeout_s=5)
    ing.start()
    try:
        _wait_state(ing, "connected")
        futures = ing.submit([Record("t", b"a"), Record("t", b"b")])
        assert [f.result(5).offset for f in futures] == [0, 1]
        assert producer.sent == [b"a", b"b"]
    finally:
        ing.stop()


def test_connects_once_the_factory_stops_failing() -> None:
    attempts = []
    producer = MemoryProducer()

    def factory() -> MemoryProducer:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("no broker yet")
        return producer

    ing = Ingestor(factory, delivery_timeout_s=5, connect_backoff_max_s=0.05)
    with pytest.raises(IngestRefused) as exc:
        ing.submit([Record("t", b"x")])  # before the first attempt: refused, not queued
    assert exc.value.reason == "kafka_unavailable"
    ing.start()
    try:
        _wait_state(ing, "connected")
        assert len(attempts) == 3
        assert ing.submit([Record("t", b"x")])[0].result(5).offset == 0
    finally:
        ing.stop()


def test_queue_bound_refuses_at_once_and_expired_records_are_never_sent() -> None:
    producer = MemoryProducer()
    ing = Ingestor(lambda: producer, queue_max=3, delivery_timeout_s=0.3)
    ing.start()
    try:
        _wait_state(ing, "connected")
        producer.hold.set()  # the sender hands records over; nothing is acknowledged
        held = ing.submit([Record("t", b"held")])
        done, _ = wait(held, timeout=1.0)
        assert not done
        with pytest.raises(IngestRefused) as exc:
            ing.submit([Record("t", b"x")] * 4)  # more than the queue holds: all refused
        assert exc.value.reason == "queue_full"
        # A record whose request gave up (cancelled at its deadline) is skipped.
        stale = ing.submit([Record("t", b"stale")])
        stale[0].cancel()
        time.sleep(0.3)
        assert b"stale" not in [v for v, _ in producer.pending]
    finally:
        ing.stop()


def test_failed_deliveries_degrade_then_a_probe_recovers() -> None:
    producer = MemoryProducer()
    healthy = threading.Event()
    ing = Ingestor(lambda: producer, delivery_timeout_s=1, probe=healthy.is_set,
                   probe_interval_s=0.05, connect_backoff_max_s=0.05)
    ing.start()
    try:
        time.sleep(0.2)
        assert ing.state == "connecting"  # no producer is trusted before the probe answers
        healthy.set()
        _wait_state(ing, "connected")
        healthy.clear()
        producer.fail = True
        f = ing.submit([Record("t", b"lost")])[0]
        with pytest.raises(ConnectionError):
            f.result(5)
        _wait_state(ing, "degraded")
        assert "broker gone" in ing.reason
        producer.fail = False
        healthy.set()  # no traffic needed: the idle probe brings it back
        _wait_state(ing, "connected")
    finally:
        ing.stop()


@pytest.mark.parametrize("kafka_answers", [False, True])
def test_an_unacknowledged_request_degrades_only_when_kafka_does_not_answer(
        kafka_answers: bool) -> None:
    """/readyz said the producer was connected for 20-30 s into an outage, until the
    client's own delivery timeout, though requests had already timed out. A request
    whose wait runs out now makes the sender probe Kafka at once: no answer, degraded;
    an answer (a burst, a slow leader), nothing changes -- degrading then refused
    nearly every write of a burst and made readiness flap."""
    producer = MemoryProducer()
    healthy = threading.Event()
    healthy.set()
    ing = Ingestor(lambda: producer, delivery_timeout_s=1, probe=healthy.is_set,
                   probe_interval_s=0.05, connect_backoff_max_s=0.05)
    ing.start()
    try:
        _wait_state(ing, "connected")
        producer.hold.set()  # nothing is acknowledged from here on
        if not kafka_answers:
            healthy.clear()
        ing.delivery_timed_out(1.0)  # what POST /v1/events does when its wait runs out
        if kafka_answers:
            time.sleep(0.5)
            assert ing.state == "connected", ing.reason
            return
        _wait_state(ing, "degraded")
        assert "within 1 s" in ing.reason and "metadata" in ing.reason
        # One probe record per interval is let through; the rest are refused at once.
        # The sender's idle metadata probe spends the same interval (every ~50 ms while
        # degraded), so a submit more than ~50 ms after the state changed is refused
        # too: retry until one is let through.
        deadline = time.monotonic() + 10
        while True:
            try:
                ing.submit([Record("t", b"probe")])
                break
            except IngestRefused:
                assert time.monotonic() < deadline, "no probe record was let through"
                time.sleep(0.002)
        with pytest.raises(IngestRefused) as exc:
            ing.submit([Record("t", b"y")])
        assert exc.value.reason == "kafka_unavailable"
        time.sleep(0.3)  # several probe intervals: no answer, still degraded
        assert ing.state == "degraded"
        healthy.set()  # the idle probe brings it back (nothing was acknowledged)
        _wait_state(ing, "connected")
    finally:
        ing.stop()


def test_disabled_without_a_factory() -> None:
    ing = Ingestor(None)
    with pytest.raises(IngestRefused) as exc:
        ing.submit([Record("t", b"x")])
    assert exc.value.reason == "no_producer" and ing.state == "disabled"
