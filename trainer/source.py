"""The trainer's input: a thread that polls Kafka and decodes ahead of learning.

:class:`BatchSource` owns the consumer. Every call on the consumer -- poll, seek,
commit, lag, close -- happens in its thread (neither Kafka client is meant to be
shared across threads), so the learner talks to it through two small channels:

* **batches** flow to the learner through a bounded queue (``prefetch`` deep): poll,
  columnar decode (:func:`stream.columns.decode_columns`) and dead-lettering of
  rejects overlap learning, and a slow learner applies back-pressure instead of
  piling up memory;
* **commits** flow back: :meth:`BatchSource.commit` queues the offsets of a durable
  snapshot, and the thread commits them before its next poll.

Rebalances run inside the consumer's poll, so in this thread (kafka-python runs them
on its IO thread: a lock keeps a batch from being queued across a revoke). On revoke
the queued, not-yet-learned batches are dropped (the group resumes from the last
commit), then :attr:`BatchSource.on_revoke` -- the learner's synchronous checkpoint -- returns the
offsets now durable, and they are committed before the partitions move. On assign,
:attr:`BatchSource.on_assign` returns where each partition must resume; a partition
the same rebalance hands straight back that the learner has no offset for resumes at
the first record the revoke dropped (kafka-python keeps such a partition's fetch
position, past the dropped records; librdkafka restarts at the commit, the same place).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from stream.columns import EventColumns, decode_columns
from stream.consumer import DeadLetterError, MiniBatchConsumer, Partition
from stream.events import Limits, Rejected
from stream.kafka import RecordBatch

__all__ = ["BatchSource", "PolledBatch"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PolledBatch:
    """One polled mini-batch, decoded into columns.

    ``offsets`` is the next offset of every partition the batch read (what to commit
    once its effect is durable); ``rejected`` holds ``(reject, topic, partition,
    offset)``, already in the dead-letter topic (or counted as unwritable).
    """

    columns: EventColumns
    rejected: list[tuple[Rejected, str, int, int]] = field(default_factory=list)
    offsets: dict[Partition, int] = field(default_factory=dict)
    first_offsets: dict[Partition, int] = field(default_factory=dict)
    records: int = 0

    @property
    def empty(self) -> bool:
        return not self.offsets


class _PollFailed(Exception):
    """Polling failed (the cause is chained); the source thread retries."""


class BatchSource:
    """Poll ``consumer_factory()`` in a thread and hand out :class:`PolledBatch` es.

    Parameters
    ----------
    consumer_factory
        Builds the consumer; called in the source thread with the rebalance hooks
        ``on_assign`` / ``on_revoke`` as keyword arguments.
    batch_size, max_wait_s
        Poll bounds of one batch.
    prefetch
        Decoded batches that may wait for the learner.
    limits, weights
        Event validation limits and per-type learning weights.
    on_assign
        ``parts -> {partition: offset}``: where assigned partitions resume.
    on_revoke
        ``parts -> offsets | None``: checkpoint synchronously, return what to commit.
    join_timeout_s
        Rebuild the consumer when it has held no partitions this long, since joining
        or since a rebalance took its last ones (doubling until it gets some).
    """

    #: longest the thread waits (in one poll, or for room in the queue) before it
    #: looks at the stop flag again
    STOP_CHECK_S = 0.05
    #: seconds between two metadata requests that check the cluster answers while no
    #: partition is assigned (also their timeout)
    CONTACT_PROBE_S = 5.0

    def __init__(
        self,
        consumer_factory: Callable[..., MiniBatchConsumer],
        *,
        batch_size: int,
        max_wait_s: float,
        prefetch: int,
        limits: Limits,
        weights: Mapping[str, float],
        on_assign: Callable[[set[Partition]], Mapping[Partition, int]],
        on_revoke: Callable[[set[Partition]], Mapping[Partition, int] | None],
        join_timeout_s: float = 60.0,
    ) -> None:
        self._factory = consumer_factory
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.limits = limits
        self.weights = dict(weights)
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.join_timeout_s = join_timeout_s
        self._join_timeout = join_timeout_s  # doubles at each rebuild, until assigned
        #: since when the consumer has held no partitions (None while it holds some)
        self._unassigned_since: float | None = None
        self._queue: queue.Queue[PolledBatch] = queue.Queue(maxsize=prefetch)
        self._commits: queue.Queue[dict[Partition, int]] = queue.Queue()
        self._stop = threading.Event()
        #: set by the learner's get(): a full queue has room again
        self._space = threading.Event()
        #: held while queueing a batch and while a rebalance hook changes the assignment
        self._hand_over = threading.Lock()
        #: rebalance hooks finished so far (counted at the end of each, after its seeks): a
        #: batch whose poll began before a hook finished is stale (see _put)
        self._generation = 0
        #: where the last assignment resumed partitions
        self._resumed_at: dict[Partition, int] = {}
        #: per revoked partition, the first offset this source handed out and dropped
        #: unlearned: where it resumes if the next assignment hands it straight back
        #: and the learner has no offset for it (kafka-python keeps the position of a
        #: partition that stays assigned, which is past the dropped records)
        self._unlearned_from: dict[Partition, int] = {}
        #: a revoke ran and the assignment that ends its rebalance has not
        self._revoke_pending = False
        #: per partition, the offset after the last reject this source dead-lettered
        self._dead_lettered: dict[Partition, int] = {}
        self._closing = False
        self._thread: threading.Thread | None = None
        self.consumer: MiniBatchConsumer | None = None
        #: partitions assigned now (read by the learner)
        self.assigned: frozenset[Partition] = frozenset()
        #: per-partition lag, refreshed about once a second
        self.lag: dict[Partition, int] = {}
        #: monotonic time of the last answer from the cluster (a lag refresh with
        #: partitions, else a metadata request), None before the first; the learner
        #: exports its age, which grows while Kafka is unreachable
        self.kafka_contact_at: float | None = None
        self._probed_at = -self.CONTACT_PROBE_S
        #: the last metadata request found no partition of the topic (it does not exist,
        #: or this principal may not see it): what a member without partitions waits for
        self.topic_missing = False
        self._started_at = time.monotonic()
        #: polls that failed, commits made, commits that failed, rejects the
        #: dead-letter topic did not take (exported by the learner; counted here, so
        #: that they survive a rebuilt consumer)
        self.errors = 0
        self.commits_total = 0
        self.commit_errors = 0
        self.dlq_failures = 0
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ learner side

    def kafka_contact_age(self) -> float:
        """Seconds since the cluster last answered (since :meth:`start` before it ever
        did)."""
        since = self.kafka_contact_at if self.kafka_contact_at is not None else self._started_at
        return max(0.0, time.monotonic() - since)

    def start(self) -> None:
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="liverec-source", daemon=True)
        self._thread.start()

    def get(self, timeout_s: float) -> PolledBatch | None:
        """The next decoded batch, or None when none came within ``timeout_s``."""
        try:
            batch = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        self._space.set()
        return batch

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit these next-offsets (of a durable snapshot) before the next poll."""
        if offsets:
            self._commits.put(dict(offsets))

    def stop_reading(self) -> None:
        """The learner wants no more batches (its final snapshot comes next): a hint for
        work that may end early. Here nothing: the thread keeps serving the group until
        :meth:`stop`."""

    def stop(self, final_offsets: Mapping[Partition, int] | None, timeout_s: float = 30.0
             ) -> None:
        """Stop polling, commit ``final_offsets`` (a durable snapshot's), leave the group."""
        self._stop.set()
        self._space.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("the source thread did not stop within %.0f s", timeout_s)
                return
        self._closing = True
        consumer = self.consumer
        if consumer is None:
            return
        try:
            self._drain_commits()
            if final_offsets:
                self._commit_assigned(final_offsets)
        finally:
            try:
                consumer.close()
            except Exception:
                log.exception("closing the consumer failed")

    # ------------------------------------------------------------------ source thread

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the learner sees it and stops
            self.error = exc
            log.exception("the source thread failed")

    def _new_consumer(self) -> MiniBatchConsumer:
        self.assigned = frozenset()
        self._unlearned_from, self._revoke_pending = {}, False
        self._unassigned_since = time.monotonic()
        return self._factory(on_assign=self._assigned, on_revoke=self._revoked)

    def _loop(self) -> None:
        self.consumer = self._new_consumer()
        last_lag = 0.0
        while not self._stop.is_set():
            self._drain_commits()
            # The watchdog: a member that has held no partitions this long -- since it
            # joined, or since a rebalance took its last ones -- is rebuilt. (A
            # kafka-python member can lose its group membership without noticing, and
            # then never rejoins.) In a group with more members than partitions an idle
            # member rebuilds too, each time twice as late.
            since = self._unassigned_since
            if not self.assigned and since is not None and \
                    time.monotonic() - since > self._join_timeout:
                log.warning("no partitions for %.0f s: rebuilding the consumer",
                            self._join_timeout)
                self.errors += 1
                self._close_quietly()
                self.consumer = self._new_consumer()
                self._join_timeout *= 2
            try:
                got = self._fetch()
            except DeadLetterError:
                log.info("stopping while rejects await the dead-letter topic: the batch "
                         "is not learned and its offsets are not committed")
                return
            except _PollFailed:
                self.errors += 1
                log.exception("polling failed; retrying")
                self._stop.wait(0.5)
                continue
            if got is not None:
                self._put(*got)
            if time.monotonic() - last_lag >= 1.0:
                last_lag = time.monotonic()
                try:
                    self.lag = self._lag()
                    if self.assigned or self._metadata_answers():
                        self.kafka_contact_at = time.monotonic()
                except Exception:
                    log.debug("lag not available", exc_info=True)

    def _fetch(self) -> tuple[PolledBatch, int] | None:
        """The next decoded batch and the rebalance generation it was polled in, or
        None (nothing came, or a rebalance made it stale)."""
        generation = self._generation
        try:
            records = self._poll()
        except Exception as exc:
            raise _PollFailed from exc
        if not records:
            return None
        if generation != self._generation:
            # A rebalance ended during the poll: drop it undecoded (_put would drop
            # it too), writing no reject of a record that may be another owner's.
            with self._hand_over:
                self._drop_stale(records.first_offsets(), len(records))
            return None
        return self._decode(records), generation

    def _lag(self) -> dict[Partition, int]:
        assert self.consumer is not None
        return self.consumer.lag()

    def _metadata_answers(self) -> bool:
        """Whether the cluster answers a metadata request (without partitions the lag
        asks it nothing): at most every :attr:`CONTACT_PROBE_S`."""
        assert self.consumer is not None
        now = time.monotonic()
        if now - self._probed_at < self.CONTACT_PROBE_S:
            return False
        self._probed_at = now
        parts = self.consumer.partitions_for(self.consumer.topic, timeout_s=self.CONTACT_PROBE_S)
        self.topic_missing = not parts
        return True

    def _poll(self) -> RecordBatch:
        """Up to ``batch_size`` records within ``max_wait_s``, polled in slices of at
        most :attr:`STOP_CHECK_S` so that :meth:`stop` never waits for a whole idle
        poll (a slice that fills the batch returns at once).

        Records in hand are not held back once the stream has gone quiet: a slice that
        brings nothing ends the wait (the end of a burst, or of a replayed file, is
        learned one slice after it arrived, not ``max_wait_s`` later); while records
        keep coming the batch fills up to ``max_wait_s`` as before."""
        assert self.consumer is not None
        deadline = time.monotonic() + self.max_wait_s
        got = self.consumer.poll_batch(self.batch_size, min(self.STOP_CHECK_S, self.max_wait_s))
        while len(got) < self.batch_size and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            more = self.consumer.poll_batch(self.batch_size - len(got),
                                            min(self.STOP_CHECK_S, remaining))
            if not more and len(got):
                break
            got = got.extend(more)
        return got

    def _decode(self, records: RecordBatch) -> PolledBatch:
        cols, rejects = decode_columns(records.values, limits=self.limits,
                                       weights=self.weights)
        offsets, first = records.next_offsets(), records.first_offsets()
        rejected = [(rej, records.topics[i], records.partitions[i], records.offsets[i])
                    for i, rej in rejects]
        self._dead_letter(rejected)
        return PolledBatch(cols, rejected, offsets, first, len(records))

    def _dead_letter(self, rejected: list[tuple[Rejected, str, int, int]]) -> None:
        """Write ``rejected`` to the dead-letter topic, except those written before."""
        # A batch dropped by a rebalance is read again: its rejects are in the DLQ already.
        marks = self._dead_lettered
        fresh = [r for r in rejected if r[3] >= marks.get((r[1], r[2]), 0)]
        if fresh:
            assert self.consumer is not None
            # Bounded retries inside; a record it cannot write is counted and skipped.
            failed_before = self.consumer.dlq_failures_total
            try:
                self.consumer.dead_letter(fresh)
            finally:
                self.dlq_failures += self.consumer.dlq_failures_total - failed_before
            for _, topic, partition, offset in fresh:
                marks[topic, partition] = max(offset + 1, marks.get((topic, partition), 0))

    def _put(self, batch: PolledBatch, generation: int) -> None:
        parts = set(batch.offsets)
        while not self._stop.is_set():
            # Cleared before trying: a get() from here on sets it, so the wait below
            # returns as soon as the learner makes room.
            self._space.clear()
            # Under the hand-over lock: kafka-python rebalances on its IO thread, and a
            # batch queued after a revoke drained the queue would be learned here
            # *and* by the next owner.
            with self._hand_over:
                if generation != self._generation:
                    self._drop_stale(batch.first_offsets, batch.records)
                    return
                if not parts <= self.assigned:
                    # revoked meanwhile: the next owner reads it
                    self._forget([batch.first_offsets])
                    return
                try:
                    self._queue.put_nowait(batch)
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("queued %s", {p: (batch.first_offsets[p], o)
                                                for p, o in batch.offsets.items()})
                    return
                except queue.Full:
                    pass
            self._drain_commits()
            self._space.wait(self.STOP_CHECK_S)

    def _take_commits(self) -> dict[Partition, int]:
        """The queued commits, merged (later snapshots' offsets win)."""
        merged: dict[Partition, int] = {}
        while True:
            try:
                merged.update(self._commits.get_nowait())
            except queue.Empty:
                return merged

    def _drain_commits(self) -> None:
        merged = self._take_commits()
        if merged:
            self._commit_assigned(merged)

    def _commit_assigned(self, offsets: Mapping[Partition, int]) -> None:
        to_commit = {p: o for p, o in offsets.items() if p in self.assigned}
        if not to_commit or self.consumer is None:
            return
        try:
            self.consumer.commit(to_commit)
            self.commits_total += 1
        except Exception as exc:
            # Harmless: the snapshot holds the offsets; a restart seeks to them.
            self.commit_errors += 1
            log.warning("offset commit failed (%s); harmless for the model: the durable "
                        "snapshot holds these offsets and a restart resumes there; the group's "
                        "committed offsets lag until a later commit succeeds", exc)

    def _close_quietly(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception:
                log.exception("closing the consumer failed")

    # ------------------------------------------------------------------ rebalance hooks

    def _forget(self, firsts: list[Mapping[Partition, int]],
                resume_at: Mapping[Partition, int] | None = None) -> None:
        """Drop unlearned batches (given by their first offsets); partitions still ours
        are read again from their first record there, or from ``resume_at`` where it
        names one."""
        rewind: dict[Partition, int] = {}
        for first in firsts:
            for part, off in first.items():
                if part in self.assigned:
                    rewind[part] = min(off, rewind.get(part, off))
                elif self._revoke_pending:  # in case it comes straight back
                    held = self._unlearned_from
                    held[part] = min(off, held.get(part, off))
        rewind.update({p: o for p, o in (resume_at or {}).items() if p in rewind})
        if rewind and self.consumer is not None:
            self.consumer.seek(rewind)

    def _drop_stale(self, first: Mapping[Partition, int], records: int) -> None:
        """Drop a batch polled while a rebalance ran, and put its partitions back where
        the assignment resumed them: kafka-python can hand out records fetched before
        the rebalance's seek and move the position past it (its fetcher checks the
        position, then updates it, on the polling thread, while the IO thread seeks)."""
        log.info("dropping a batch polled across a rebalance (%d records)", records)
        self._forget([first], self._resumed_at)

    def _assigned(self, parts: set[Partition]) -> None:
        with self._hand_over:
            self.assigned = frozenset(self.assigned | parts)
            if self.assigned:
                self._unassigned_since, self._join_timeout = None, self.join_timeout_s
            log.info("assigned %s", sorted(parts))
            # The learner's offsets first; a partition handed straight back that it has
            # none for resumes at the first record dropped unlearned by the revoke.
            back = {p: o for p, o in self._unlearned_from.items() if p in parts}
            self._unlearned_from, self._revoke_pending = {}, False
            resume = {**back, **self.on_assign(parts)}
            self._resumed_at = dict(resume)
            if resume and self.consumer is not None:
                self.consumer.seek(resume)
                log.info("resuming %s at the snapshot's offsets", resume)
            # Last, after the seek: a poll that began before this line -- even one that
            # began inside this hook -- may return records from before the seek.
            self._generation += 1

    def _revoked(self, parts: set[Partition]) -> None:
        with self._hand_over:
            self._resumed_at = {}
            self._revoke_pending = True
            self.assigned = frozenset(self.assigned - parts)
            if not self.assigned and self._unassigned_since is None:
                self._unassigned_since = time.monotonic()
            dropped: list[PolledBatch] = []
            while True:  # polled, not learned: the next owner resumes from the commit
                try:
                    dropped.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # still-assigned partitions are rewound; revoked ones remembered (_assigned)
            self._forget([b.first_offsets for b in dropped])
            self._generation += 1  # last, as in _assigned
        if self._closing:
            return
        log.info("partitions %s revoked (%d queued batches dropped): checkpoint, then "
                 "commit", sorted(parts), len(dropped))
        offsets = dict(self.on_revoke(parts) or {})
        # Commits the learner queued before the revoke's snapshot (a background write
        # that finished while the revoke waited for it) hold older offsets: committed
        # after this one, once a partition is handed straight back, they would move the
        # group's offset backwards. Durable offsets only grow, so the larger one wins.
        for p, o in self._take_commits().items():
            offsets[p] = max(o, offsets.get(p, o))
        if offsets:
            to_commit = {p: o for p, o in offsets.items() if p in parts or p in self.assigned}
            if to_commit and self.consumer is not None:
                try:
                    self.consumer.commit(to_commit)
                    self.commits_total += 1
                except Exception as exc:  # Kafka away: the snapshot holds these offsets
                    self.commit_errors += 1
                    log.warning("commit before revoke failed (%s: %s); the snapshot holds "
                                "these offsets, a restart resumes from it",
                                type(exc).__name__, exc)
