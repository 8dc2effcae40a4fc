"""Writing rejects to the dead-letter topic (:class:`DeadLetterWriter`).

A part of :class:`~stream.consumer.MiniBatchConsumer`: :meth:`DeadLetterWriter.dead_letter`
sends every reject (its payload cut to ``KafkaSettings.dlq_max_bytes``), retries the
failed ones one by one on a fresh producer with doubling backoff, then counts and skips
what still fails; a topic that takes none of a batch's rejects opens the breaker
(:class:`~stream.dlq_guard.DeadLetterBreaker`), so later batches skip it for a
cool-down instead of waiting out every retry.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence

from stream.dlq_guard import DeadLetterBreaker, RejectLog, offset_ranges
from stream.events import Rejected, dlq_payload
from stream.kafka import KafkaClientError, Producer, Record, make_producer
from stream.settings import KafkaSettings

__all__ = ["DeadLetterError", "DeadLetterWriter", "RejectAt"]

# Log lines keep the consumer's one logger name (every log line shows it).
log = logging.getLogger("stream.consumer")

#: A reject and where it was read: ``(reject, topic, partition, offset)``.
RejectAt = tuple[Rejected, str, int, int]


class DeadLetterError(KafkaClientError):
    """Rejects could not be written to the dead-letter topic because the consumer was
    asked to stop meanwhile (nothing was lost: it rewound to before the batch)."""


class DeadLetterWriter:
    """The dead-letter writes of :class:`~stream.consumer.MiniBatchConsumer` (see the
    module docstring), which sets the state named here."""

    settings: KafkaSettings
    client_id: str
    stop: threading.Event
    dlq_topic: str | None
    dlq_attempts: int
    dlq_backoff_s: float
    dlq_timeout_ms: int
    dlq_failures_total: int
    _breaker: DeadLetterBreaker
    _reject_log: RejectLog
    _producer: Producer | None

    def dead_letter(self, rejects: Sequence[RejectAt]) -> int:
        """Write rejects to the dead-letter topic; returns how many were written.

        Each record is tried up to ``dlq_attempts`` times with doubling backoff; one
        that still fails is counted in :attr:`dlq_failures_total`, logged at ERROR
        and skipped (the first five of a batch one by one, the rest as offset ranges).
        Once every record of a batch failed every attempt, later rejects are counted
        and skipped without a try for a cool-down (:class:`DeadLetterBreaker`), their
        offset ranges logged.

        Raises
        ------
        DeadLetterError
            ``stop`` was set before every record was written or given up.
        """
        self._reject_log.rejects(rejects)
        if self.dlq_topic is None or not rejects:
            return 0
        breaker = self._breaker
        if breaker.is_open():
            # Known to fail: count and skip at once rather than stall every batch.
            self.dlq_failures_total += len(rejects)
            breaker.skipped += len(rejects)
            log.error("dead-letter topic %s still failing: skipped %d rejects without a "
                      "try (%s)", self.dlq_topic, len(rejects), offset_ranges(rejects))
            return 0
        todo = list(rejects)
        written = 0
        backoff = self.dlq_backoff_s
        last_error: dict[int, str] = {}
        for attempt in range(1, self.dlq_attempts + 1):
            # Retries go one record at a time: the broker refuses a produce batch
            # whole when one record in it is too large for the topic.
            failed_idx = self._write_dlq(todo, last_error, one_by_one=attempt > 1)
            written += len(todo) - len(failed_idx)
            todo = [todo[i] for i in failed_idx]
            last_error = {n: last_error[i] for n, i in enumerate(failed_idx)
                          if i in last_error}
            if not todo:
                if breaker.open_until is not None:
                    log.warning("dead-letter writes to %s succeed again (%d rejects were "
                                "skipped while they failed)", self.dlq_topic,
                                breaker.closed())
                return written
            # A fresh producer for the next attempt: some failures (kafka-python's
            # "too large" with idempotence) leave a producer unusable.
            self._close_producer()
            if attempt == self.dlq_attempts:
                break
            log.warning("%d dead-letter writes failed (attempt %d of %d); retrying in "
                        "%.1fs", len(todo), attempt, self.dlq_attempts, backoff)
            if self.stop.wait(backoff):
                raise DeadLetterError(f"stopped while {len(todo)} rejects were not yet in "
                                      f"{self.dlq_topic}")
            backoff *= 2
        for i, (rej, topic, partition, offset) in enumerate(todo):
            self.dlq_failures_total += 1
            if i < 5:
                log.error("DEAD-LETTER WRITE FAILED %d times; skipping the reject %s at "
                          "%s[%d]@%d (%d bytes): %s", self.dlq_attempts, rej.reason, topic,
                          partition, offset, len(rej.raw), last_error.get(i, "not delivered"))
        if len(todo) > 5:
            log.error("... and %d more rejects skipped the same way (%s)", len(todo) - 5,
                      offset_ranges(todo[5:]))
        error = next(iter(last_error.values()), "not delivered")
        if written:
            # The topic takes records: these ones failed for themselves (too large for
            # it, say), which is no reason to stop writing the others.
            return written
        wait = breaker.opened(error)
        log.error("dead-letter topic %s cannot be written (%s; none of this batch's %d "
                  "rejects went in): the next batches' rejects are counted and skipped "
                  "without a try for %.0f s, so that the stream does not wait on it",
                  self.dlq_topic, error, len(todo), wait)
        return written

    def _write_dlq(self, todo: list[RejectAt], errors: dict[int, str],
                   one_by_one: bool = False) -> list[int]:
        """One attempt at every record of ``todo`` (``one_by_one``: each delivered or
        failed before the next is sent, on a fresh producer after a failure); returns
        the indexes that failed."""
        assert self.dlq_topic is not None
        delivered: set[int] = set()
        errors.clear()

        def callback(i: int) -> Callable[[KafkaClientError | None, Record | None], None]:
            def on_delivery(err: KafkaClientError | None, rec: Record | None) -> None:
                if err is None:
                    delivered.add(i)
                else:
                    errors[i] = str(err)
            return on_delivery

        flush_s = self.dlq_timeout_ms / 1000.0 + 5.0
        for i, (rej, topic, partition, offset) in enumerate(todo):
            if self._producer is None:
                try:
                    self._producer = make_producer(
                        self.settings, client_id=f"{self.client_id}-dlq", linger_ms=0,
                        delivery_timeout_ms=self.dlq_timeout_ms,
                        max_block_ms=self.dlq_timeout_ms)
                except KafkaClientError as exc:
                    errors.update(dict.fromkeys(range(i, len(todo)), str(exc)))
                    break
            producer = self._producer
            value, headers = dlq_payload(rej, topic=topic, partition=partition, offset=offset,
                                         max_bytes=self.settings.dlq_max_bytes)
            try:
                producer.send(self.dlq_topic, value, headers=headers, on_delivery=callback(i))
            except KafkaClientError as exc:
                errors[i] = str(exc)
            if one_by_one:
                producer.flush(flush_s)
                if i not in delivered:
                    # Some failures (kafka-python's "too large") leave a producer unusable.
                    self._close_producer()
        if self._producer is not None:
            # The delivery timeout bounds every record, so all callbacks run within it.
            self._producer.flush(flush_s)
        return [i for i in range(len(todo)) if i not in delivered]

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(10.0)
