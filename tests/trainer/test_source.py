"""The trainer's Kafka source across a rebalance, with a scripted consumer: no record is
skipped when the client hands out records fetched before the rebalance's seek."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from stream.events import encode
from stream.kafka import RecordBatch
from stream.settings import KafkaSettings
from tests.trainer.helpers import synthetic_events
from trainer.source import BatchSource, PolledBatch

PART = ("clicks", 0)
VALUES = [encode(e) for e in synthetic_events(60, seed=3)]
BATCH = 10
KAFKA = KafkaSettings(topic=PART[0])


class RacyConsumer:
    """One partition of ``VALUES``. On the third poll a rebalance revokes the partition
    and hands it straight back -- on another thread, in kafka-python -- while this poll
    returns the records it had already fetched and moves the position past them,
    undoing the seek the assignment made (the race in kafka-python's fetcher)."""

    def __init__(self, on_assign: Callable[[set[Any]], None],
                 on_revoke: Callable[[set[Any]], None]) -> None:
        self.on_assign, self.on_revoke = on_assign, on_revoke
        self.values = VALUES
        self.dead_lettered: list[int] = []  # offsets of rejects sent to the DLQ
        self.dlq_failures_total = 0  # rejects the DLQ did not take (none here)
        self.position = 0
        self.polls = 0
        self.parts: set[tuple[str, int]] = set()

    def poll_batch(self, max_records: int, timeout_s: float) -> RecordBatch:
        self.polls += 1
        if self.polls == 1:
            self.parts = {PART}
            self.on_assign({PART})
        start = self.position
        end = min(start + max_records, len(self.values))
        if self.polls == 3:
            self.on_revoke({PART})
            self.on_assign({PART})  # seeks back to what was learned
        self.position = end  # the fetcher's late position update wins
        if start == end:
            time.sleep(0.01)
        return RecordBatch([PART[0]] * (end - start), [PART[1]] * (end - start),
                           list(range(start, end)), list(self.values[start:end]))

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.position = offsets[PART]

    def assignment(self) -> set[tuple[str, int]]:
        return set(self.parts)

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        pass

    def dead_letter(self, rejected: list[tuple[Any, str, int, int]]) -> None:
        self.dead_lettered.extend(offset for *_, offset in rejected)

    def lag(self) -> dict[tuple[str, int], int]:
        return {}

    def close(self) -> None:
        pass


@pytest.mark.parametrize("learner_has_offsets", [True, False])
def test_a_batch_polled_across_a_rebalance_is_dropped_and_its_partition_rewound(
    learner_has_offsets: bool,
) -> None:
    """With ``learner_has_offsets=False`` the learner has no offset for the partition
    when it comes straight back (nothing learned yet), so the assignment does not seek:
    as kafka-python does with a partition that stays assigned, the consumer keeps its
    position, which is past the batches the revoke dropped."""
    learned: list[int] = []  # offsets the "learner" took, in order

    def resume(parts: set[Any]) -> dict[Any, int]:
        if learned or learner_has_offsets:
            return {PART: learned[-1] + 1 if learned else 0}
        return {}

    source = BatchSource(
        lambda **hooks: RacyConsumer(**hooks),  # type: ignore[arg-type, return-value]
        batch_size=BATCH, max_wait_s=0.01,
        prefetch=2, limits=KAFKA.limits, weights=KAFKA.event_weights, on_assign=resume,
        on_revoke=lambda parts: resume(parts), join_timeout_s=60,
    )
    source.start()
    try:
        deadline = time.monotonic() + 30
        while (not learned or learned[-1] < len(VALUES) - 1) and time.monotonic() < deadline:
            assert source.error is None
            if source.consumer is None or source.consumer.polls < 3:  # type: ignore[attr-defined]
                time.sleep(0.01)  # a slow learner: two batches wait in the queue
                continue
            batch: PolledBatch | None = source.get(timeout_s=0.1)
            if batch is not None:
                first = batch.first_offsets[PART]
                learned.extend(range(first, batch.offsets[PART]))
    finally:
        source.stop(None)
    # The two queued batches were dropped by the revoke and read again; the stale third
    # one did not move the partition past them.
    assert learned == list(range(len(VALUES)))


class MidHookConsumer(RacyConsumer):
    """As :class:`RacyConsumer`, but the rebalance runs on its own thread (kafka-python's
    IO thread) and the next poll *begins inside the assignment hook*, before the hook's
    seek: it takes the records at the old position, the hook seeks back, and the poll's
    late position update wins."""

    def __init__(self, on_assign: Callable[[set[Any]], None],
                 on_revoke: Callable[[set[Any]], None]) -> None:
        super().__init__(on_assign, on_revoke)
        self.in_assign = threading.Event()  # the hook holds the source's lock, not sought
        self.taken = threading.Event()  # the racing poll took its records
        self.sought = threading.Event()  # the hook returned
        self.io: threading.Thread | None = None

    def rebalance(self) -> None:
        self.on_revoke({PART})
        self.on_assign({PART})
        self.sought.set()

    def poll_batch(self, max_records: int, timeout_s: float) -> RecordBatch:
        self.polls += 1
        if self.polls == 1:
            self.parts = {PART}
            self.on_assign({PART})
        if self.polls == 3:
            self.io = threading.Thread(target=self.rebalance, daemon=True)
            self.io.start()
            assert self.in_assign.wait(10)
            return RecordBatch([], [], [], [])
        start = self.position
        end = min(start + max_records, len(VALUES))
        if self.polls == 4:
            self.taken.set()
            assert self.sought.wait(10)
        self.position = end
        if start == end:
            time.sleep(0.01)
        return RecordBatch([PART[0]] * (end - start), [PART[1]] * (end - start),
                           list(range(start, end)), list(VALUES[start:end]))


def test_a_poll_that_begins_inside_the_assignment_hook_is_stale_too() -> None:
    learned: list[int] = []
    consumers: list[MidHookConsumer] = []

    def make(**hooks: Any) -> MidHookConsumer:
        consumers.append(MidHookConsumer(**hooks))
        return consumers[-1]

    def resume(parts: set[Any]) -> dict[Any, int]:
        if consumers and consumers[0].polls >= 3:  # the rebalance on the "IO thread"
            consumers[0].in_assign.set()
            assert consumers[0].taken.wait(10)
        return {PART: learned[-1] + 1 if learned else 0}

    source = BatchSource(
        make, batch_size=BATCH, max_wait_s=0.01, prefetch=2,  # type: ignore[arg-type]
        limits=KAFKA.limits, weights=KAFKA.event_weights, on_assign=resume,
        on_revoke=lambda parts: {PART: learned[-1] + 1 if learned else 0},
        join_timeout_s=60,
    )
    source.start()
    try:
        deadline = time.monotonic() + 30
        while (not learned or learned[-1] < len(VALUES) - 1) and time.monotonic() < deadline:
            assert source.error is None
            if not consumers or consumers[0].polls <= 4:
                time.sleep(0.01)  # the first two batches wait in the queue: the revoke drops them
                continue
            batch = source.get(timeout_s=0.1)
            if batch is not None:
                learned.extend(range(batch.first_offsets[PART], batch.offsets[PART]))
    finally:
        source.stop(None)
    # The racing poll took records past the batches the revoke dropped, before the
    # hook's seek back: learning them would have skipped those batches.
    assert learned == list(range(len(VALUES)))


def test_rejects_of_a_stale_batch_reach_the_dead_letter_topic_once() -> None:
    bad = {5, 15, 25, 45}  # some in the batches the revoke drops, one in the stale poll
    values = [b"not json" if i in bad else v for i, v in enumerate(VALUES)]
    consumers: list[RacyConsumer] = []
    learned: list[int] = []

    def make(**hooks: Any) -> RacyConsumer:
        consumers.append(RacyConsumer(**hooks))
        consumers[-1].values = values
        return consumers[-1]

    def resume(parts: set[Any]) -> dict[Any, int]:
        return {PART: learned[-1] + 1 if learned else 0}

    source = BatchSource(
        make, batch_size=BATCH, max_wait_s=0.01, prefetch=2,  # type: ignore[arg-type]
        limits=KAFKA.limits, weights=KAFKA.event_weights, on_assign=resume,
        on_revoke=resume, join_timeout_s=60,
    )
    source.start()
    try:
        deadline = time.monotonic() + 30
        while (not learned or learned[-1] < len(values) - 1) and time.monotonic() < deadline:
            assert source.error is None
            if not consumers or consumers[0].polls < 3:
                time.sleep(0.01)
                continue
            batch = source.get(timeout_s=0.1)
            if batch is not None:
                learned.extend(range(batch.first_offsets[PART], batch.offsets[PART]))
                assert {off for *_, off in batch.rejected} == bad & set(learned[-BATCH:])
    finally:
        source.stop(None)
    assert learned == list(range(len(values)))
    # Dropped batches are read again; their rejects went to the DLQ the first time, and
    # a batch known to be stale is dropped before decoding: each reject is there once.
    assert sorted(consumers[0].dead_lettered) == sorted(bad)


class LosesItsGroup(RacyConsumer):
    """The first instance is assigned the partition, then a rebalance takes it and no
    assignment ever follows (a kafka-python member that lost its group unnoticed);
    later instances behave."""

    instances = 0

    def __init__(self, on_assign: Callable[[set[Any]], None],
                 on_revoke: Callable[[set[Any]], None]) -> None:
        super().__init__(on_assign, on_revoke)
        LosesItsGroup.instances += 1
        self.lost = LosesItsGroup.instances == 1

    def poll_batch(self, max_records: int, timeout_s: float) -> RecordBatch:
        self.polls += 1
        if self.polls == 1:
            self.parts = {PART}
            self.on_assign({PART})
        if self.lost and self.polls == 3:
            self.parts = set()
            self.on_revoke({PART})
        if not self.parts:
            time.sleep(0.01)
            return RecordBatch([], [], [], [])
        start = self.position
        end = min(start + max_records, len(self.values))
        self.position = end
        if start == end:
            time.sleep(0.01)
        return RecordBatch([PART[0]] * (end - start), [PART[1]] * (end - start),
                           list(range(start, end)), list(self.values[start:end]))


def test_a_consumer_left_without_partitions_is_rebuilt_and_resumes() -> None:
    learned: list[int] = []

    def resume(parts: set[Any]) -> dict[Any, int]:
        return {PART: learned[-1] + 1 if learned else 0}

    LosesItsGroup.instances = 0
    source = BatchSource(
        lambda **hooks: LosesItsGroup(**hooks),  # type: ignore[arg-type, return-value]
        batch_size=BATCH, max_wait_s=0.01, prefetch=2, limits=KAFKA.limits,
        weights=KAFKA.event_weights, on_assign=resume, on_revoke=resume, join_timeout_s=0.3,
    )
    source.start()
    try:
        deadline = time.monotonic() + 30
        while (not learned or learned[-1] < len(VALUES) - 1) and time.monotonic() < deadline:
            assert source.error is None
            batch = source.get(timeout_s=0.1)
            if batch is not None:
                learned.extend(range(batch.first_offsets[PART], batch.offsets[PART]))
    finally:
        source.stop(None)
    assert LosesItsGroup.instances == 2  # rebuilt once, then assigned for good
    assert learned == list(range(len(VALUES)))  # resumed where the learner was


class TrickleConsumer(RacyConsumer):
    """``VALUES`` a few records per poll, then nothing (no rebalance); it records the
    timeout of every poll."""

    def __init__(self, on_assign: Callable[[set[Any]], None],
                 on_revoke: Callable[[set[Any]], None], per_poll: int = 3) -> None:
        super().__init__(on_assign, on_revoke)
        self.per_poll = per_poll
        self.timeouts: list[float] = []

    def poll_batch(self, max_records: int, timeout_s: float) -> RecordBatch:
        self.timeouts.append(timeout_s)
        if not self.parts:
            self.parts = {PART}
            self.on_assign({PART})
        start = self.position
        end = min(start + max_records, start + self.per_poll, len(self.values))
        self.position = end
        if start == end:
            time.sleep(timeout_s)
        return RecordBatch([PART[0]] * (end - start), [PART[1]] * (end - start),
                           list(range(start, end)), list(self.values[start:end]))


def test_slices_of_a_slow_poll_make_one_batch_and_stop_does_not_wait_for_the_poll() -> None:
    """Records trickling in a few per poll are gathered into full batches; once the
    topic is idle, a poll waits in slices of at most ``STOP_CHECK_S``, so a stop is
    seen within one slice however long ``max_wait_s`` is."""
    made: list[TrickleConsumer] = []

    def make(**hooks: Any) -> TrickleConsumer:
        made.append(TrickleConsumer(**hooks))
        return made[-1]

    source = BatchSource(
        make, batch_size=BATCH, max_wait_s=3600.0, prefetch=10,  # type: ignore[arg-type]
        limits=KAFKA.limits, weights=KAFKA.event_weights, on_assign=lambda parts: {},
        on_revoke=lambda parts: None, join_timeout_s=60,
    )
    source.start()
    batches: list[PolledBatch] = []
    try:
        deadline = time.monotonic() + 30
        while sum(len(b.columns) for b in batches) < len(VALUES) and \
                time.monotonic() < deadline:
            got = source.get(0.1)
            if got is not None:
                batches.append(got)
    finally:
        source.stop(None, timeout_s=30)
    assert source._thread is not None and not source._thread.is_alive()
    assert [len(b.columns) for b in batches] == [BATCH] * (len(VALUES) // BATCH)
    assert max(made[0].timeouts) <= BatchSource.STOP_CHECK_S


def test_a_partial_batch_is_not_held_back_once_the_stream_goes_quiet() -> None:
    """Records that do not fill a batch are handed over one quiet slice after they
    arrived, however long ``max_wait_s`` is (they used to wait it out)."""
    tail = len(VALUES) - 5  # the last 5 records: half a batch, then silence

    def make(**hooks: Any) -> TrickleConsumer:
        consumer = TrickleConsumer(**hooks, per_poll=BATCH)
        consumer.position = tail
        return consumer

    source = BatchSource(
        make, batch_size=BATCH, max_wait_s=3600.0, prefetch=10,  # type: ignore[arg-type]
        limits=KAFKA.limits, weights=KAFKA.event_weights, on_assign=lambda parts: {},
        on_revoke=lambda parts: None, join_timeout_s=60,
    )
    source.start()
    try:
        t0 = time.monotonic()
        got = None
        while got is None and time.monotonic() - t0 < 10:
            got = source.get(0.1)
    finally:
        source.stop(None, timeout_s=30)
    assert got is not None
    assert got.first_offsets == {PART: tail} and got.offsets == {PART: len(VALUES)}
    assert len(got.columns) == 5


class CommitLog:
    """A consumer that only records its commits (and ignores seeks)."""

    def __init__(self) -> None:
        self.commits: list[dict[tuple[str, int], int]] = []

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.commits.append(dict(offsets))

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        pass


def test_a_commit_queued_before_the_revoke_does_not_move_the_group_offset_back() -> None:
    # A background snapshot (offset 300) finishes while the revoke waits for it, so its
    # commit is queued; the revoke's own snapshot holds 400. With the partition handed
    # straight back, the queued 300 must not be committed after the 400.
    holder: list[BatchSource] = []

    def revoke(parts: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        holder[0].commit({PART: 300})  # the learner finishing the background write
        return {PART: 400}

    src = BatchSource(lambda **kw: None, batch_size=BATCH, max_wait_s=0.1, prefetch=2,
                      limits=KAFKA.limits, weights=KAFKA.event_weights,
                      on_assign=lambda parts: {PART: 400}, on_revoke=revoke)
    holder.append(src)
    log = CommitLog()
    src.consumer = log  # type: ignore[assignment]
    src.assigned = frozenset({PART})
    src._revoked({PART})
    src._assigned({PART})
    src._drain_commits()  # the source thread, before its next poll
    assert log.commits == [{PART: 400}]
