"""A consumer-group member that hands out decoded mini-batches and commits on request.

The contract (what the trainer builds on):

* :meth:`MiniBatchConsumer.next_batch` polls until it holds ``batch_size`` records
  or ``max_wait_ms`` passed, decodes every record (:func:`stream.events.decode`) and
  returns a :class:`ConsumedBatch`. Rejects are already written to the dead-letter
  topic (and flushed) when the batch is returned.
* Nothing is committed implicitly. :meth:`commit` commits exactly the next-offsets
  it is given -- the trainer calls it only once a batch's effect is in a durable
  snapshot. :meth:`run` is the simple loop: batch -> handle -> commit.
* Rebalances: ``on_revoke`` runs *before* partitions move (snapshot and commit
  there); records of revoked partitions that were polled but not yet handed out
  are dropped, since the next owner resumes from the last commit anyway.
  ``on_assign`` runs with the newly assigned partitions (seek them there).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError

from stream.events import DEFAULT_LIMITS, ClickEvent, Limits, Rejected, decode, dlq_payload
from stream.kafka import make_consumer, make_producer

__all__ = ["ConsumedBatch", "DeadLetterError", "MiniBatchConsumer", "Partition"]

log = logging.getLogger(__name__)

Partition = tuple[str, int]
_DEFAULT_DLQ = object()


class DeadLetterError(KafkaError):
    """A reject could not be written to the dead-letter topic (nothing was lost:
    the consumer rewound to before the batch)."""


@dataclass
class ConsumedBatch:
    """One mini-batch, decoded.

    Attributes
    ----------
    events
        Valid events in arrival order (per partition: offset order).
    rejected
        ``(reject, topic, partition, offset)``; already sent to the DLQ.
    offsets
        Next offset per ``(topic, partition)`` after this batch: what to commit.
    first_offsets
        Offset of the batch's first record per partition (where to rewind to).
    duplicates
        Records skipped because their ``event_id`` was seen recently
        (only with ``dedupe_window > 0``).
    """

    events: list[ClickEvent] = field(default_factory=list)
    rejected: list[tuple[Rejected, str, int, int]] = field(default_factory=list)
    offsets: dict[Partition, int] = field(default_factory=dict)
    first_offsets: dict[Partition, int] = field(default_factory=dict)
    duplicates: int = 0

    def __len__(self) -> int:
        """Records in the batch (events + rejects + duplicates)."""
        return len(self.events) + len(self.rejected) + self.duplicates

    @property
    def empty(self) -> bool:
        return not self.offsets


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: MiniBatchConsumer) -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.owner._revoked({(tp.topic, tp.partition) for tp in revoked})

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.owner._assigned({(tp.topic, tp.partition) for tp in assigned})


class MiniBatchConsumer:
    """Consume ``topic`` as a member of ``group_id`` in decoded mini-batches.

    Parameters
    ----------
    bootstrap
        Kafka bootstrap address.
    topic, group_id
        What to read and as which consumer group.
    batch_size, max_wait_ms
        A batch is returned when it holds ``batch_size`` records or after
        ``max_wait_ms`` (then possibly smaller, even empty).
    dlq_topic
        Dead-letter topic for rejects; default ``<topic>.dlq``; ``None`` only counts
        and logs them.
    on_assign, on_revoke
        Rebalance hooks, called with sets of ``(topic, partition)``.
    client_id
        Kafka client id.
    limits
        Event validation limits.
    dedupe_window
        Remember this many recent ``event_id`` s and skip repeats (0: off). The
        memory is per process; a durable de-duplication belongs to the snapshot.
    **consumer_config
        Passed to ``kafka.KafkaConsumer`` (e.g. ``session_timeout_ms``).

    Examples
    --------
    .. code-block:: python

        consumer = MiniBatchConsumer(bootstrap, "clicks", "trainer", batch_size=512)
        consumer.run(learn)  # learn(batch) -> None commits batch.offsets afterwards
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str,
        *,
        batch_size: int = 256,
        max_wait_ms: int = 200,
        dlq_topic: Any = _DEFAULT_DLQ,
        on_assign: Callable[[set[Partition]], None] | None = None,
        on_revoke: Callable[[set[Partition]], None] | None = None,
        client_id: str = "liverec-consumer",
        limits: Limits = DEFAULT_LIMITS,
        dedupe_window: int = 0,
        **consumer_config: Any,
    ) -> None:
        if batch_size < 1 or max_wait_ms < 0:
            raise ValueError("batch_size must be >= 1 and max_wait_ms >= 0")
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self.dlq_topic: str | None = f"{topic}.dlq" if dlq_topic is _DEFAULT_DLQ else dlq_topic
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.client_id = client_id
        self.limits = limits
        self.dedupe_window = dedupe_window

        self.events_total = 0
        self.duplicates_total = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.commits_total = 0
        self.handler_errors_total = 0

        self._recent: OrderedDict[str, None] = OrderedDict()
        # Records polled but not yet handed out: (partition, offset, event | reject | None).
        self._pending: list[tuple[Partition, int, ClickEvent | Rejected | None]] = []
        self._producer: KafkaProducer | None = None
        self._closed = False
        config: dict[str, Any] = {"max_poll_records": batch_size, "client_id": client_id}
        config.update(consumer_config)
        self._consumer = make_consumer(bootstrap, group_id=group_id, **config)
        self._consumer.subscribe([topic], listener=_Listener(self))

    # ------------------------------------------------------------------ rebalance

    def _revoked(self, parts: set[Partition]) -> None:
        if self.on_revoke is not None and parts:
            try:
                self.on_revoke(parts)
            except Exception:
                log.exception("on_revoke hook failed for %s", sorted(parts))
        dropped = [p for p in self._pending if p[0] in parts]
        if dropped:
            log.info("dropping %d polled records of revoked partitions (the next owner "
                     "resumes from the last commit)", len(dropped))
            self._pending = [p for p in self._pending if p[0] not in parts]

    def _assigned(self, parts: set[Partition]) -> None:
        log.info("assigned %s", sorted(parts))
        if self.on_assign is not None and parts:
            try:
                self.on_assign(parts)
            except Exception:
                log.exception("on_assign hook failed for %s", sorted(parts))

    # ------------------------------------------------------------------ batches

    def next_batch(self, timeout_ms: int | None = None) -> ConsumedBatch:
        """Poll a mini-batch: up to ``batch_size`` records within ``timeout_ms``
        (default ``max_wait_ms``). Rejects are in the DLQ when this returns.

        Raises
        ------
        DeadLetterError
            The DLQ write failed; the consumer rewound so the records come again.
        """
        wait_ms = self.max_wait_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + wait_ms / 1000.0
        while len(self._pending) < self.batch_size:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            records = self._consumer.poll(
                timeout_ms=remaining_ms, max_records=self.batch_size - len(self._pending)
            )
            for tp, recs in records.items():
                part = (tp.topic, tp.partition)
                for rec in recs:
                    self._pending.append((part, rec.offset, self._decode(rec.value)))
            if remaining_ms == 0:
                break
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
                self._dead_letter(batch.rejected)
            except Exception as exc:
                self._rewind(batch)
                raise DeadLetterError(f"could not write {len(batch.rejected)} rejects to "
                                      f"{self.dlq_topic}: {exc}") from exc
        self.events_total += len(batch.events)
        self.duplicates_total += batch.duplicates
        for rej, *_ in batch.rejected:
            self.rejected_by_reason[rej.reason] += 1
        return batch

    def _dead_letter(self, rejected: list[tuple[Rejected, str, int, int]]) -> None:
        for rej, topic, partition, offset in rejected:
            log.warning("reject %s at %s[%d]@%d: %s", rej.reason, topic, partition, offset,
                        rej.detail[:200])
        if self.dlq_topic is None:
            return
        if self._producer is None:
            self._producer = make_producer(self.bootstrap, client_id=f"{self.client_id}-dlq")
        futures = []
        for rej, topic, partition, offset in rejected:
            value, headers = dlq_payload(rej, topic=topic, partition=partition, offset=offset)
            futures.append(self._producer.send(self.dlq_topic, value=value, headers=headers))
        self._producer.flush(timeout=30)
        for fut in futures:
            fut.get(timeout=30)  # raises if the write failed

    def _rewind(self, batch: ConsumedBatch) -> None:
        """Read ``batch`` again: seek back and forget its ids (they are not duplicates)."""
        for ev in batch.events:
            self._recent.pop(ev.event_id, None)
        assigned = self.assignment()
        for part, offset in batch.first_offsets.items():
            if part in assigned:
                self._consumer.seek(TopicPartition(*part), offset)

    # ------------------------------------------------------------------ offsets

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit exactly these next-offsets (synchronously)."""
        if not offsets:
            return
        self._consumer.commit({
            TopicPartition(t, p): OffsetAndMetadata(off, "", -1)
            for (t, p), off in offsets.items()
        })
        self.commits_total += 1

    def committed(self) -> dict[Partition, int | None]:
        """The group's committed next-offset of each assigned partition."""
        return {part: self._consumer.committed(TopicPartition(*part))
                for part in sorted(self.assignment())}

    def seek(self, offsets: Mapping[Partition, int]) -> None:
        """Move the read position of assigned partitions (others are ignored)."""
        assigned = self.assignment()
        for part, offset in offsets.items():
            if part in assigned:
                self._consumer.seek(TopicPartition(*part), offset)
            else:
                log.debug("not seeking unassigned partition %s", part)
        self._pending = [p for p in self._pending if p[0] not in offsets]

    def assignment(self) -> set[Partition]:
        """Partitions currently assigned to this member."""
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def lag(self) -> dict[Partition, int]:
        """Records not yet read per assigned partition (end offset - position)."""
        tps = [TopicPartition(*part) for part in sorted(self.assignment())]
        if not tps:
            return {}
        ends = self._consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): max(0, ends[tp] - self._consumer.position(tp))
                for tp in tps}

    # ------------------------------------------------------------------ loop

    def run(
        self,
        handle: Callable[[ConsumedBatch], Mapping[Partition, int] | None],
        *,
        stop: threading.Event | None = None,
        skip_empty: bool = True,
        max_backoff_s: float = 5.0,
    ) -> None:
        """Consume until ``stop`` is set (or SIGINT/SIGTERM), then close.

        Each batch goes to ``handle``; afterwards the consumer commits the offsets
        ``handle`` returns, or ``batch.offsets`` when it returns ``None`` (return
        ``{}`` to commit nothing, e.g. until the next snapshot). Empty batches are
        not handed over unless ``skip_empty`` is False. No exception ends the
        loop: a failing ``handle`` is logged and its batch is re-read after a
        backoff, and Kafka errors are retried the same way.
        """
        stop = stop or threading.Event()
        restore = _install_signal_handlers(stop)
        backoff = 0.1
        try:
            while not stop.is_set():
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
        with contextlib.suppress(Exception):
            self._consumer.close(autocommit=False)
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=10)

    def __enter__(self) -> MiniBatchConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGINT/SIGTERM set ``stop``; returns a function restoring the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals can only be handled in the main thread

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore
