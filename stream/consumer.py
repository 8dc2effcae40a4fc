"""A consumer-group member that hands out decoded mini-batches and commits on request.

The contract (what the trainer builds on):

* :meth:`MiniBatchConsumer.next_batch` polls until it holds ``batch_size`` records
  or ``max_wait_ms`` passed, decodes every record (:func:`stream.events.decode`) and
  returns a :class:`ConsumedBatch`. Rejects are already written to the dead-letter
  topic (and flushed) when the batch is returned. :meth:`poll_records` is the raw
  path (undecoded :class:`~stream.kafka.Record` s) for callers that decode in bulk;
  they write their rejects with :meth:`dead_letter`.
* A dead-letter record always fits: its payload is cut to
  ``KafkaSettings.dlq_max_bytes`` (headers keep the original's size and SHA-256). A
  write that still fails is retried with backoff ``dlq_attempts`` times, then the
  record is counted in :attr:`dlq_failures_total`, logged loudly and skipped, so
  one message can never stall a partition. Every retry wait ends early when
  ``stop`` is set.
* Nothing is committed implicitly. :meth:`commit` commits exactly the next-offsets
  it is given -- the trainer calls it only once a batch's effect is in a durable
  snapshot. :meth:`run` is the simple loop: batch -> handle -> commit.
* Rebalances: ``on_revoke`` runs *before* partitions move (snapshot and commit
  there: :meth:`commit` works inside it with both clients); records of revoked
  partitions that were polled but not yet handed out are dropped, since the next
  owner resumes from the last commit anyway. ``on_assign`` runs with the newly
  assigned partitions (seek them there).

This module holds construction, the batches and the loop; the rest of
:class:`MiniBatchConsumer` is in its parts: :mod:`stream.consumer_group` (the
rebalance hooks' bookkeeping, commits, seeks, watermarks) and :mod:`stream.dead_letter`
(the dead-letter writes).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from stream.consumer_group import GroupMember
from stream.dead_letter import DeadLetterError, DeadLetterWriter, RejectAt
from stream.dlq_guard import DeadLetterBreaker, RejectLog
from stream.events import ClickEvent, Limits, Rejected, decode
from stream.kafka import (
    Consumer,
    ConsumerOptions,
    Partition,
    Producer,
    Record,
    RecordBatch,
    make_consumer,
)
from stream.settings import KafkaSettings
from stream.signals import stop_on_signals

__all__ = ["ConsumedBatch", "DeadLetterError", "MiniBatchConsumer", "Partition", "RejectAt"]

log = logging.getLogger(__name__)

_DEFAULT_DLQ = object()


@dataclass
class ConsumedBatch:
    """One mini-batch, decoded.

    Attributes
    ----------
    events
        Valid events in arrival order (per partition: offset order).
    rejected
        ``(reject, topic, partition, offset)``; already sent to the DLQ (or counted
        in ``dlq_failures_total`` when that failed for good).
    offsets
        Next offset per ``(topic, partition)`` after this batch: what to commit.
    first_offsets
        Offset of the batch's first record per partition (where to rewind to).
    duplicates
        Records skipped because their ``event_id`` was seen recently
        (only with ``dedupe_window > 0``).
    """

    events: list[ClickEvent] = field(default_factory=list)
    rejected: list[RejectAt] = field(default_factory=list)
    offsets: dict[Partition, int] = field(default_factory=dict)
    first_offsets: dict[Partition, int] = field(default_factory=dict)
    duplicates: int = 0

    def __len__(self) -> int:
        """Records in the batch (events + rejects + duplicates)."""
        return len(self.events) + len(self.rejected) + self.duplicates

    @property
    def empty(self) -> bool:
        return not self.offsets


class MiniBatchConsumer(GroupMember, DeadLetterWriter):
    """Consume ``settings.topic`` as a member of ``group_id`` in decoded mini-batches.

    Parameters
    ----------
    settings
        Bootstrap, topic, client backend, security, validation limits and
        ``dlq_max_bytes``.
    group_id
        The consumer group.
    batch_size, max_wait_ms
        A batch is returned when it holds ``batch_size`` records or after
        ``max_wait_ms`` (then possibly smaller, even empty).
    dlq_topic
        Dead-letter topic for rejects; default ``settings.dlq_topic``; ``None`` only
        counts and logs them.
    on_assign, on_revoke
        Rebalance hooks, called with sets of ``(topic, partition)``.
    client_id
        Kafka client id.
    limits
        Event validation limits (default: ``settings.limits``).
    dedupe_window
        Remember this many recent ``event_id`` s and skip repeats (0: off). The
        memory is per process; a durable de-duplication belongs to the snapshot.
    session_timeout_ms, heartbeat_interval_ms, max_poll_interval_ms
        Group liveness (heartbeat default: a third of the session timeout).
    auto_offset_reset, isolation_level
        Where partitions without a commit start; whether open transactions show.
    stop
        Set to stop :meth:`run` and to cut DLQ retry waits short.
    dlq_attempts, dlq_backoff_s, dlq_timeout_ms
        Dead-letter writes: attempts per record, the first backoff (doubling), and
        each attempt's delivery timeout.
    dlq_cooldown_s
        After a batch's dead-letter writes failed every attempt, later rejects are
        counted in ``dlq_failures_total`` and skipped without a try for this long
        (doubling while it keeps failing, up to 5 minutes): a dead-letter topic that
        cannot be written must not make every batch wait out its retries
        (:class:`~stream.dlq_guard.DeadLetterBreaker`).

    Attributes
    ----------
    events_total, duplicates_total, commits_total, handler_errors_total
        Counters since construction.
    rejected_by_reason
        Rejects per reason.
    dlq_failures_total
        Rejects whose dead-letter copy could not be written after every attempt
        (skipped; the trainer exports it as ``liverec_trainer_dlq_failures_total``).

    Examples
    --------
    .. code-block:: python

        consumer = MiniBatchConsumer(KafkaSettings(), "trainer", batch_size=512)
        consumer.run(learn)  # learn(batch) -> None commits batch.offsets afterwards
    """

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        *,
        batch_size: int = 256,
        max_wait_ms: int = 200,
        dlq_topic: Any = _DEFAULT_DLQ,
        on_assign: Callable[[set[Partition]], None] | None = None,
        on_revoke: Callable[[set[Partition]], None] | None = None,
        client_id: str = "liverec-consumer",
        limits: Limits | None = None,
        dedupe_window: int = 0,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int | None = None,
        max_poll_interval_ms: int = 300_000,
        auto_offset_reset: Literal["earliest", "latest"] = "earliest",
        isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed",
        stop: threading.Event | None = None,
        dlq_attempts: int = 4,
        dlq_backoff_s: float = 0.5,
        dlq_timeout_ms: int = 10_000,
        dlq_cooldown_s: float = 30.0,
    ) -> None:
        if batch_size < 1 or max_wait_ms < 0 or dlq_attempts < 1:
            raise ValueError("batch_size and dlq_attempts must be >= 1, max_wait_ms >= 0")
        self.settings = settings
        self.topic = settings.topic
        self.group_id = group_id
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self.dlq_topic: str | None = (settings.dlq_topic if dlq_topic is _DEFAULT_DLQ
                                      else dlq_topic)
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.client_id = client_id
        self.limits = limits or settings.limits
        self.dedupe_window = dedupe_window
        self.stop = stop or threading.Event()
        self.dlq_attempts = dlq_attempts
        self.dlq_backoff_s = dlq_backoff_s
        self.dlq_timeout_ms = dlq_timeout_ms
        #: after a batch's dead-letter writes failed every attempt, the next rejects
        #: skip the topic for a cool-down (30 s by default, doubling up to 5 min)
        self._breaker = DeadLetterBreaker(dlq_cooldown_s, max(dlq_cooldown_s, 300.0))
        self._reject_log = RejectLog(log)

        self.events_total = 0
        self.duplicates_total = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.commits_total = 0
        self.handler_errors_total = 0
        self.dlq_failures_total = 0

        self._recent: OrderedDict[str, None] = OrderedDict()
        # Records polled but not yet handed out: (partition, offset, event | reject | None).
        self._pending: list[tuple[Partition, int, ClickEvent | Rejected | None]] = []
        self._producer: Producer | None = None
        self._closed = False
        # Next offset after the last record handed out, per partition, and where to
        # resume partitions that a rebalance revokes and gives back.
        self._handed_out: dict[Partition, int] = {}
        self._resume: dict[Partition, int] = {}
        # kafka-python runs the rebalance hooks on its IO thread, beside next_batch: the
        # hooks' bookkeeping and the hand-over of polled records take this lock, and
        # records polled while a hook ran are stale (see _discard_stale).
        self._hook_lock = threading.RLock()
        #: hooks finished so far, and hooks running now (on kafka-python's IO thread)
        self._generation = 0
        self._hooks_running = 0
        #: partitions the rebalance hooks gave this member, and since when it has held
        #: none (None while it holds some): :meth:`run`'s watchdog reads them
        self.assigned: frozenset[Partition] = frozenset()
        self._unassigned_since: float | None = time.monotonic()
        self.rebuilds_total = 0
        self._options = ConsumerOptions(
            group_id=group_id,
            client_id=client_id,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms or max(100, session_timeout_ms // 3),
            max_poll_interval_ms=max_poll_interval_ms,
            auto_offset_reset=auto_offset_reset,
            isolation_level=isolation_level,
            max_poll_records=batch_size,
        )
        self._client = self._subscribed_client()

    def _subscribed_client(self) -> Consumer:
        client = make_consumer(self.settings, self._options)
        client.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked)
        return client

    def rebuild(self) -> None:
        """Close the client and join the group again with a new one (the watchdog of
        :meth:`run`). Polled, not handed-out records are dropped: the new member
        resumes from the group's commits."""
        with contextlib.suppress(Exception):
            self._client.close()
        with self._hook_lock:
            self._pending, self._handed_out, self._resume = [], {}, {}
            self.assigned = frozenset()
            self._unassigned_since = time.monotonic()
            self._generation += 1
        self.rebuilds_total += 1
        self._client = self._subscribed_client()

    # ------------------------------------------------------------------ batches

    def poll_records(self, max_records: int, timeout_s: float) -> list[Record]:
        """Raw records (not decoded, not de-duplicated, nothing dead-lettered): up to
        ``max_records`` within ``timeout_s``. Rebalance hooks may run inside."""
        return self._client.poll(max_records, timeout_s)

    def poll_batch(self, max_records: int, timeout_s: float) -> RecordBatch:
        """:meth:`poll_records` as columns (topics, partitions, offsets, values): no
        Python object per record, for a columnar decoder."""
        self._reject_log.tick()
        return self._client.poll_batch(max_records, timeout_s)

    def next_batch(self, timeout_ms: int | None = None) -> ConsumedBatch:
        """Poll a mini-batch: up to ``batch_size`` records within ``timeout_ms``
        (default ``max_wait_ms``). Rejects are in the DLQ when this returns.

        Raises
        ------
        DeadLetterError
            ``stop`` was set while a DLQ write was being retried; the consumer
            rewound, so the records come again.
        KafkaClientError
            Polling failed.
        """
        wait_ms = self.max_wait_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + wait_ms / 1000.0
        while len(self._pending) < self.batch_size:
            remaining = max(0.0, deadline - time.monotonic())
            generation = self._generation
            got = self._client.poll_batch(self.batch_size - len(self._pending), remaining)
            with self._hook_lock:
                if generation != self._generation or self._hooks_running:
                    self._discard_stale(got)
                else:
                    self._pending.extend(
                        ((topic, partition), offset, self._decode(value))
                        for topic, partition, offset, value
                        in zip(got.topics, got.partitions, got.offsets, got.values,
                               strict=True))
            if remaining == 0.0:
                break
        with self._hook_lock:
            pending, self._pending = self._pending, []
        return self._build(pending)

    def _decode(self, value: bytes | None) -> ClickEvent | Rejected | None:
        item = decode(value, limits=self.limits)
        if isinstance(item, ClickEvent) and self.dedupe_window > 0:
            if item.event_id in self._recent:
                self._recent.move_to_end(item.event_id)
                return None
            self._recent[item.event_id] = None
            if len(self._recent) > self.dedupe_window:
                self._recent.popitem(last=False)
        return item

    def _build(self, pending: list[tuple[Partition, int, ClickEvent | Rejected | None]]
               ) -> ConsumedBatch:
        batch = ConsumedBatch()
        for part, offset, item in pending:
            batch.first_offsets.setdefault(part, offset)
            batch.offsets[part] = offset + 1
            if isinstance(item, ClickEvent):
                batch.events.append(item)
            elif isinstance(item, Rejected):
                batch.rejected.append((item, part[0], part[1], offset))
            else:
                batch.duplicates += 1
        if batch.rejected:
            try:
                self.dead_letter(batch.rejected)
            except DeadLetterError:
                self._rewind(batch)
                raise
        self._handed_out.update(batch.offsets)
        self.events_total += len(batch.events)
        self.duplicates_total += batch.duplicates
        for rej, *_ in batch.rejected:
            self.rejected_by_reason[rej.reason] += 1
        return batch

    def _rewind(self, batch: ConsumedBatch) -> None:
        """Read ``batch`` again: seek back and forget its ids (they are not duplicates)."""
        for ev in batch.events:
            self._recent.pop(ev.event_id, None)
        self.seek(batch.first_offsets)

    # ------------------------------------------------------------------ loop

    def run(
        self,
        handle: Callable[[ConsumedBatch], Mapping[Partition, int] | None],
        *,
        stop: threading.Event | None = None,
        skip_empty: bool = True,
        max_backoff_s: float = 5.0,
        join_timeout_s: float | None = 60.0,
    ) -> None:
        """Consume until ``stop`` (default: :attr:`stop`) is set, or SIGINT/SIGTERM,
        then close.

        Each batch goes to ``handle``; afterwards the consumer commits the offsets
        ``handle`` returns, or ``batch.offsets`` when it returns ``None`` (return
        ``{}`` to commit nothing, e.g. until the next snapshot). Empty batches are
        not handed over unless ``skip_empty`` is False. No exception ends the
        loop: a failing ``handle`` is logged and its batch is re-read after a
        backoff, and Kafka errors are retried the same way.

        The watchdog: a member that has held no partitions for ``join_timeout_s``
        (since it joined, or since a rebalance took its last ones) is rebuilt
        (:meth:`rebuild`), the timeout doubling until it gets some (a kafka-python
        member can lose its group without noticing, and would wait forever; an idle
        member of a group with more members than partitions rebuilds too, each time
        twice as late). ``None`` turns it off.
        """
        stop = stop or self.stop
        if stop is not self.stop:
            self.stop = stop
        restore = stop_on_signals(stop, "stop")
        backoff = 0.1
        join_timeout = join_timeout_s
        try:
            while not stop.is_set():
                since = self._unassigned_since
                if since is None:
                    join_timeout = join_timeout_s
                elif join_timeout is not None and time.monotonic() - since > join_timeout:
                    log.warning("no partitions for %.0f s: rebuilding the consumer",
                                join_timeout)
                    self.rebuild()
                    join_timeout *= 2
                try:
                    batch = self.next_batch()
                except Exception:
                    log.exception("polling failed; retrying in %.1fs", backoff)
                    stop.wait(backoff)
                    backoff = min(max_backoff_s, backoff * 2)
                    continue
                if batch.empty and skip_empty:
                    continue
                try:
                    to_commit = handle(batch)
                except Exception:
                    self.handler_errors_total += 1
                    log.exception("batch handler failed; re-reading the batch in %.1fs",
                                  backoff)
                    self._rewind(batch)
                    stop.wait(backoff)
                    backoff = min(max_backoff_s, backoff * 2)
                    continue
                try:
                    self.commit(batch.offsets if to_commit is None else to_commit)
                except Exception:
                    # Not fatal: uncommitted records are re-delivered (at least once).
                    log.exception("commit failed; the batch may be delivered again")
                backoff = 0.1
        finally:
            restore()
            self.close()

    def close(self) -> None:
        """Leave the group and release the clients (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._reject_log.flush()
        with contextlib.suppress(Exception):
            self._client.close()
        self._close_producer()

    def __enter__(self) -> MiniBatchConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
