"""The small typed interface every Kafka client backend implements.

Two backends sit behind it: :mod:`stream.kafka.confluent` (librdkafka, the default)
and :mod:`stream.kafka.kafkapython` (pure Python). Callers see only
:class:`Record`, :class:`Consumer`, :class:`Producer`, the option dataclasses and
the errors below; partitions are plain ``(topic, partition)`` tuples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

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
    "partition_lag",
]

Partition = tuple[str, int]
RebalanceCallback = Callable[[set[Partition]], None]
#: ``on_delivery(error, record)``: ``error`` is None when the broker acknowledged.
DeliveryCallback = Callable[["KafkaClientError | None", "Record | None"], None]
Headers = Sequence[tuple[str, bytes]]


class KafkaClientError(RuntimeError):
    """A Kafka operation failed (whatever the backend). ``retriable`` when trying again
    later may succeed (broker down, leader moving, timeout)."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class QueueFull(KafkaClientError):
    """The producer's local queue is full (or the broker's metadata did not arrive
    within ``max_block_ms``): the record was not queued; back off or answer 503.

    ``queued``: from :meth:`Producer.send_many`, how many of its records (the first
    ones, in order) were queued before the refusal; a retry sends the rest.
    """

    def __init__(self, message: str, *, queued: int = 0) -> None:
        super().__init__(message, retriable=True)
        self.queued = queued


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed (or delivered) Kafka record.

    Examples
    --------
    >>> r = Record("clicks", 0, 41, b"u1", b"{}", (), 1_700_000_000_000)
    >>> (r.topic, r.partition), r.offset + 1
    (('clicks', 0), 42)
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int | None

    @property
    def part(self) -> Partition:
        """``(topic, partition)``."""
        return (self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Records of one poll as columns (no object per record): the fast path for
    callers that decode in bulk.

    Examples
    --------
    >>> b = RecordBatch(["t", "t", "t"], [0, 1, 0], [5, 9, 6], [b"a", b"b", b"c"])
    >>> len(b), b.next_offsets(), b.first_offsets()
    (3, {('t', 0): 7, ('t', 1): 10}, {('t', 0): 5, ('t', 1): 9})
    >>> b.record(1).value
    b'b'
    """

    topics: list[str]
    partitions: list[int]
    offsets: list[int]
    values: list[bytes | None]

    def __len__(self) -> int:
        return len(self.values)

    def next_offsets(self) -> dict[Partition, int]:
        """The offset after the last record of each partition: what to commit."""
        out: dict[Partition, int] = {}
        for topic, partition, offset in zip(self.topics, self.partitions, self.offsets,
                                            strict=True):
            out[(topic, partition)] = offset + 1
        return out

    def extend(self, more: RecordBatch) -> RecordBatch:
        """This batch followed by ``more``."""
        if not more.values:
            return self
        return RecordBatch(self.topics + more.topics, self.partitions + more.partitions,
                           self.offsets + more.offsets, self.values + more.values)

    def first_offsets(self) -> dict[Partition, int]:
        """The offset of the first record of each partition: where to read it again."""
        out: dict[Partition, int] = {}
        for topic, partition, offset in zip(self.topics, self.partitions, self.offsets,
                                            strict=True):
            out.setdefault((topic, partition), offset)
        return out

    def record(self, i: int) -> Record:
        """Record ``i`` (key, headers and timestamp are not kept in a batch)."""
        return Record(self.topics[i], self.partitions[i], self.offsets[i], None,
                      self.values[i], (), None)


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """What a caller may choose about a consumer; auto-commit is always off.

    Parameters
    ----------
    group_id
        Consumer group (None: no group; only ``assign`` works then).
    client_id
        Shown in broker logs and metrics.
    session_timeout_ms, heartbeat_interval_ms
        Group liveness: a member silent for the session timeout is removed.
    max_poll_interval_ms
        Longest allowed gap between polls before the member leaves the group.
    auto_offset_reset
        Where to start a partition without a committed offset.
    isolation_level
        ``read_committed`` hides records of open or aborted transactions.
    max_poll_records
        Upper bound of records one ``poll`` returns.
    fetch_max_wait_ms
        How long the broker may hold a fetch to fill it.
    """

    group_id: str | None = None
    client_id: str = "liverec-consumer"
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    max_poll_records: int = 500
    fetch_max_wait_ms: int = 100


@dataclass(frozen=True, slots=True)
class ProducerOptions:
    """What a caller may choose about a producer; acks=all and idempotence always.

    Parameters
    ----------
    client_id
        Shown in broker logs.
    max_block_ms
        Longest a ``send`` may wait (for metadata or queue room) before it raises
        :class:`QueueFull`; librdkafka never blocks on ``send`` at all.
    delivery_timeout_ms
        After this a queued record fails with a delivery error instead of waiting
        for the broker forever.
    linger_ms
        How long records wait to fill a batch (throughput vs latency).
    queue_max_messages
        Records held locally (queued or in flight) before ``send`` raises
        :class:`QueueFull`.
    compression
        ``none``, ``gzip``, ``snappy``, ``lz4`` or ``zstd``.
    max_request_bytes
        Largest request the client sends (a record bigger than this fails locally);
        the default matches the broker's default ``message.max.bytes``.
    report_successes
        False: delivery callbacks run for failures only (cheaper for bulk senders
        that only count failures; ``failed_total`` is kept either way).
    bootstrap_timeout_ms
        kafka-python only (librdkafka connects lazily): how long creating the producer
        may wait for the cluster; None: ``max(1000, max_block_ms)``.
    """

    client_id: str = "liverec-producer"
    max_block_ms: int = 1_000
    delivery_timeout_ms: int = 120_000
    linger_ms: int = 5
    queue_max_messages: int = 100_000
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    max_request_bytes: int = 1_048_588
    report_successes: bool = True
    bootstrap_timeout_ms: int | None = None


@runtime_checkable
class Consumer(Protocol):
    """A Kafka consumer with manual, synchronous commits.

    Offsets are *next* offsets (``last handled + 1``). Rebalance callbacks run on
    the thread that calls :meth:`poll`, and :meth:`commit` works inside
    ``on_revoke`` with every backend: that is where a member commits what it
    handled before its partitions move.
    """

    def subscribe(self, topics: Sequence[str], on_assign: RebalanceCallback | None = None,
                  on_revoke: RebalanceCallback | None = None) -> None:
        """Join the group for ``topics``; callbacks get sets of partitions."""
        ...

    def assign(self, parts: Iterable[Partition]) -> None:
        """Read exactly these partitions, without a group rebalance."""
        ...

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first."""
        ...

    def poll_batch(self, max_records: int, timeout_s: float) -> RecordBatch:
        """Like :meth:`poll`, as columns (topics, partitions, offsets, values)."""
        ...

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit these next-offsets and wait until the broker has them."""
        ...

    def committed(self, parts: Iterable[Partition], timeout_s: float = 10.0
                  ) -> dict[Partition, int | None]:
        """The group's committed next-offset per partition (None: nothing committed)."""
        ...

    def seek(self, part: Partition, offset: int) -> None:
        """Read ``part`` from ``offset`` on (it must be assigned)."""
        ...

    def position(self, part: Partition) -> int | None:
        """The next offset :meth:`poll` returns for ``part`` (None: not known yet)."""
        ...

    def pause(self, parts: Iterable[Partition]) -> None:
        """Stop fetching these assigned partitions (the group membership stays)."""
        ...

    def assignment(self) -> set[Partition]:
        """Partitions currently assigned."""
        ...

    def end_offsets(self, parts: Iterable[Partition], timeout_s: float = 10.0
                    ) -> dict[Partition, int]:
        """The next-to-be-written offset of each partition."""
        ...

    def beginning_offsets(self, parts: Iterable[Partition], timeout_s: float = 10.0
                          ) -> dict[Partition, int]:
        """The oldest offset still held of each partition."""
        ...

    def partitions_for(self, topic: str, timeout_s: float = 10.0) -> set[int]:
        """Partition numbers of ``topic`` (empty when it does not exist)."""
        ...

    def close(self) -> None:
        """Leave the group (without committing) and free the client."""
        ...


@runtime_checkable
class Producer(Protocol):
    """An asynchronous, durable producer (acks=all, idempotent).

    Attributes
    ----------
    failed_total
        Records the broker did not take (delivery errors, with or without a
        callback), since creation.
    last_error
        The latest delivery error, if any.
    """

    failed_total: int
    last_error: KafkaClientError | None

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Headers | None = None,
             on_delivery: DeliveryCallback | None = None) -> None:
        """Queue one record; ``on_delivery`` runs from :meth:`poll` or :meth:`flush`.

        Raises
        ------
        QueueFull
            The local queue is full; nothing was queued.
        """
        ...

    def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]
                  ) -> None:
        """Queue ``(key, value)`` records in order, each partitioned by its key as
        :meth:`send` would; no headers and no callbacks (failures count in
        ``failed_total``). Waits for queue room as :meth:`send` does.

        Raises
        ------
        QueueFull
            No room within ``max_block_ms``; the records before it are queued (its
            ``queued`` says how many).
        """
        ...

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many ran."""
        ...

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait until everything queued is delivered (or failed); returns how many
        records are still undelivered when the timeout passes."""
        ...

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush for at most ``timeout_s``, then free the client."""
        ...


def partition_lag(consumer: Consumer, parts: Iterable[Partition]) -> dict[Partition, int]:
    """Records not yet read of each of ``parts`` (end offset - position); a partition
    whose position is not known yet is left out."""
    parts = sorted(parts)
    if not parts:
        return {}
    ends = consumer.end_offsets(parts)
    out = {}
    for part in parts:
        pos = consumer.position(part)
        if pos is not None:
            out[part] = max(0, ends[part] - pos)
    return out
