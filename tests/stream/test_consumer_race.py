"""MiniBatchConsumer across a rebalance that races a poll, with a scripted client: no
record is skipped when the client hands out records fetched before the rebalance's
seek (kafka-python runs the hooks on its IO thread, beside the poll)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import pytest

import stream.consumer
from stream.consumer import MiniBatchConsumer
from stream.events import encode
from stream.kafka import RecordBatch
from stream.settings import KafkaSettings
from tests.trainer.helpers import synthetic_events

PART = ("clicks", 0)
EVENTS = synthetic_events(30, seed=4)
VALUES = [encode(e) for e in EVENTS]


class RacyClient:
    """One partition; three records a poll. On the third poll a rebalance revokes the
    partition and gives it straight back while the poll returns what it had fetched,
    moving the position past the assignment's seek."""

    def __init__(self) -> None:
        self.position = 0
        self.polls = 0
        self.parts: set[tuple[str, int]] = set()
        self.on_assign: Callable[[set[Any]], None] | None = None
        self.on_revoke: Callable[[set[Any]], None] | None = None

    def subscribe(self, topics: list[str], on_assign: Callable[[set[Any]], None],
                  on_revoke: Callable[[set[Any]], None]) -> None:
        self.on_assign, self.on_revoke = on_assign, on_revoke

    def _first_poll(self) -> bool:
        """Count a poll; the first one is assigned the partition. Returns whether it was."""
        assert self.on_assign is not None and self.on_revoke is not None
        self.polls += 1
        if self.polls == 1:
            self.parts = {PART}
            self.on_assign({PART})
        return self.polls == 1

    def _read(self, start: int, end: int) -> RecordBatch:
        """Records ``[start, end)``; the read position moves to ``end``."""
        self.position = end
        return RecordBatch([PART[0]] * (end - start), [PART[1]] * (end - start),
                           list(range(start, end)), list(VALUES[start:end]))

    def poll_batch(self, max_records: int, timeout_s: float) -> RecordBatch:
        self._first_poll()
        start = self.position
        end = min(start + min(3, max_records), len(VALUES))
        if self.polls == 3:
            assert self.on_assign is not None and self.on_revoke is not None
            self.on_revoke({PART})
            self.on_assign({PART})
        return self._read(start, end)

    def seek(self, part: tuple[str, int], offset: int) -> None:
        self.position = offset

    def assignment(self) -> set[tuple[str, int]]:
        return set(self.parts)

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        pass

    def close(self) -> None:
        pass


def test_records_polled_across_a_rebalance_do_not_skip_the_dropped_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream.consumer, "make_consumer", lambda *a, **k: RacyClient())
    consumer = MiniBatchConsumer(KafkaSettings(topic=PART[0]), "g", batch_size=10,
                                 max_wait_ms=50, dlq_topic=None)
    got: list[str] = []
    for _ in range(30):
        got.extend(e.event_id for e in consumer.next_batch().events)
        if len(got) >= len(EVENTS):
            break
    # The six records pending at the revoke were dropped and read again from the
    # assignment's seek; the three stale ones did not move the partition past them.
    assert got == [e.event_id for e in EVENTS]


class MidHookClient(RacyClient):
    """As :class:`RacyClient`, but the rebalance runs on its own thread (kafka-python's IO
    thread) and the next poll *begins inside the assignment hook*, before its seek."""

    def __init__(self) -> None:
        super().__init__()
        self.in_assign = threading.Event()
        self.taken = threading.Event()
        self.sought = threading.Event()

    def rebalance(self) -> None:
        assert self.on_assign is not None and self.on_revoke is not None
        self.on_revoke({PART})
        self.on_assign({PART})
        self.sought.set()

    def poll_batch(self, max_records: int, timeout_s: float) -> RecordBatch:
        self._first_poll()
        if self.polls == 3:
            threading.Thread(target=self.rebalance, daemon=True).start()
            assert self.in_assign.wait(10)
            return RecordBatch([], [], [], [])
        start = self.position
        end = min(start + min(3, max_records), len(VALUES))
        if self.polls == 4:
            self.taken.set()
            assert self.sought.wait(10)
        return self._read(start, end)


def test_a_poll_that_begins_inside_the_assignment_hook_cannot_undo_the_hooks_seek(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = MidHookClient()
    monkeypatch.setattr(stream.consumer, "make_consumer", lambda *a, **k: client)

    def hook(parts: set[Any]) -> None:
        if client.polls >= 3:  # on the "IO thread", after the consumer's own resume
            client.in_assign.set()
            assert client.taken.wait(10)
            consumer.seek({PART: 9})  # the application moves on in its hook

    consumer = MiniBatchConsumer(KafkaSettings(topic=PART[0]), "g", batch_size=3,
                                 max_wait_ms=200, dlq_topic=None, on_assign=hook)
    got: list[str] = []
    for _ in range(30):
        got.extend(e.event_id for e in consumer.next_batch().events)
        if got and got[-1] == EVENTS[-1].event_id:
            break
    # The racing poll took 3-5 before the hook's seek and moved the position past it:
    # handing those out would have ignored the seek. Reading continues at 9.
    assert got == [e.event_id for e in EVENTS[:3] + EVENTS[9:]]


class LostMemberClient(RacyClient):
    """A member assigned once and revoked at once, never assigned again: a kafka-python
    member that lost its group without noticing. Made ``lost`` false, it is a healthy
    member that is assigned the partition at its first poll and reads it."""

    made: ClassVar[list[LostMemberClient]] = []

    def __init__(self, lost: bool) -> None:
        super().__init__()
        self.lost, self.closed = lost, False
        LostMemberClient.made.append(self)

    def poll_batch(self, max_records: int, timeout_s: float) -> RecordBatch:
        if self._first_poll() and self.lost:
            assert self.on_revoke is not None
            self.parts = set()
            self.on_revoke({PART})
        if self.lost:
            return RecordBatch([], [], [], [])
        return self._read(self.position, min(self.position + max_records, len(VALUES)))

    def close(self) -> None:
        self.closed = True


def test_run_rebuilds_a_member_left_without_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    LostMemberClient.made = []
    monkeypatch.setattr(stream.consumer, "make_consumer",
                        lambda *a, **k: LostMemberClient(lost=not LostMemberClient.made))
    consumer = MiniBatchConsumer(KafkaSettings(topic=PART[0]), "g", batch_size=10,
                                 max_wait_ms=10, dlq_topic=None)
    got: list[str] = []

    def handle(batch: Any) -> None:
        got.extend(e.event_id for e in batch.events)
        if len(got) >= len(EVENTS):
            consumer.stop.set()

    stopper = threading.Timer(20.0, consumer.stop.set)  # a hang fails, not blocks
    stopper.start()
    try:
        consumer.run(handle, join_timeout_s=0.2)
    finally:
        stopper.cancel()
    first, second = LostMemberClient.made  # one rebuild: the new member is assigned
    assert first.closed and second.closed  # (the second by run's close)
    assert consumer.rebuilds_total == 1
    assert got == [e.event_id for e in EVENTS]


def test_run_without_a_watchdog_keeps_the_member(monkeypatch: pytest.MonkeyPatch) -> None:
    LostMemberClient.made = []
    monkeypatch.setattr(stream.consumer, "make_consumer",
                        lambda *a, **k: LostMemberClient(lost=True))
    consumer = MiniBatchConsumer(KafkaSettings(topic=PART[0]), "g", batch_size=10,
                                 max_wait_ms=10, dlq_topic=None)
    threading.Timer(0.6, consumer.stop.set).start()
    consumer.run(lambda batch: None, join_timeout_s=None)
    assert len(LostMemberClient.made) == 1 and consumer.rebuilds_total == 0
