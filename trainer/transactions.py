"""A scale-out trainer's Kafka transactions (:class:`UpdateTransactions`).

One Kafka transaction holds the update messages, the dead-lettered rejects and the
input offsets (``send_offsets_to_transaction``) of the polls learned while it was open
(``commit_every_s``; 0: one poll), committed on a thread while the next poll is
learned; the next transaction, partition snapshots, a revocation and shutdown commit
the open one and wait for it (:meth:`UpdateTransactions.settle`). Update readers use
``read_committed``. So an input record's effect on the item state is in the update
topic iff its offset is committed (what a new owner of a partition makes of that: see
:mod:`trainer.partitioned`). A SIGKILLed trainer's open transaction is aborted (by its
restart's ``init_transactions`` with the same instance id, or by the broker after
``transaction_timeout_ms``); a member that lost its partitions is fenced by the group
generation. Any transaction that aborts fails the trainer: its polls were learned
user-side, so it exits without a snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from stream.events import dlq_payload
from stream.kafka.base import Partition
from stream.kafka.confluent import ConfluentConsumer
from stream.kafka.transactional import TransactionalProducer
from stream.settings import KafkaSettings
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings

__all__ = ["UpdateTransactions"]


class UpdateTransactions:
    """The open transaction of a scale-out trainer and the one committing in the
    background (see the module docstring).

    Parameters
    ----------
    settings
        ``commit_every_s``: how long a transaction stays open over full polls.
    kafka
        The dead-letter topic (default ``<topic>.dlq``) and its record size limit.
    topic
        The input topic.
    updates
        The update topic (``<topic>.updates``).
    metrics
        Where the transactions and update messages sent go.
    on_abort
        Called first when a transaction aborts: the trainer must then exit without a
        snapshot.
    """

    def __init__(self, settings: TrainerSettings, kafka: KafkaSettings, topic: str,
                 updates: str, metrics: TrainerMetrics, on_abort: Callable[[], None]
                 ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.topic = topic
        self.updates = updates
        self.metrics = metrics
        self.on_abort = on_abort
        #: the transactional producer and the group's consumer (whose offsets a
        #: transaction commits), set once the trainer has opened Kafka
        self.producer: TransactionalProducer | None = None
        self.consumer: ConfluentConsumer | None = None
        self.transactions = 0
        self.updates_published = 0
        #: update messages of the transaction committing in the background
        self._committing_messages = 0
        #: the open transaction (see :meth:`publish`): when it began, the input
        #: offsets it commits and its update messages
        self._txn_open = False
        self._txn_since = 0.0
        self._txn_offsets: dict[Partition, int] = {}
        self._txn_messages = 0

    def publish(self, messages: list[tuple[int, bytes]], dead: list[Any],
                commit: Mapping[Partition, int], n_updates: int,
                caught_up: bool = False) -> None:
        """Publish a poll's updates and rejects in the open transaction (beginning one
        if none is open) with its offsets; once the transaction has been open
        ``commit_every_s``, or when the poll was not full (``caught_up``: the trainer
        has read what there was, so nothing gains from waiting), commit it in the
        background: the next poll is read and learned while the broker commits (the
        next transaction begins after this one is settled, see :meth:`settle`).
        An update message for input partition ``p`` goes to the update topic's
        partition ``p % n_updates``."""
        assert self.producer is not None and self.consumer is not None
        prod = self.producer
        n_upd = max(1, n_updates)
        if not self._txn_open:
            self.settle()
            prod.begin()
            self._txn_open, self._txn_since = True, time.monotonic()
        try:
            for p, msg in messages:
                prod.send(self.updates, msg, key=str(p).encode(), partition=p % n_upd)
                self.metrics.update_bytes.labels(direction="out").inc(len(msg))
            for rej, t, p, o in dead:
                value, headers = dlq_payload(rej, topic=t, partition=p, offset=o,
                                             max_bytes=self.kafka.dlq_max_bytes)
                prod.send(self.kafka.dlq_topic or f"{self.topic}.dlq", value,
                          headers=headers)
        except BaseException:
            self.abort()
            raise
        self._txn_offsets.update(commit)
        self._txn_messages += len(messages)
        if caught_up or self.due(time.monotonic()):
            self.commit_open()

    def due(self, now: float) -> bool:
        """A transaction is open and has been for ``commit_every_s``."""
        return self._txn_open and now - self._txn_since >= self.settings.commit_every_s

    def abort(self) -> None:
        """Abort the open transaction (its polls were learned user-side: the caller
        exits without a snapshot)."""
        self.on_abort()
        self._txn_open = False
        self.metrics.transactions.labels(outcome="aborted").inc()
        assert self.producer is not None
        self.producer.abort()

    def commit_open(self) -> None:
        """Start committing the open transaction (its updates with its polls' input
        offsets) in the background."""
        assert self.producer is not None and self.consumer is not None
        try:
            self.producer.commit_in_background(self._txn_offsets, self.consumer)
        except BaseException:
            self.abort()
            raise
        self._committing_messages = self._txn_messages
        self._txn_open, self._txn_offsets, self._txn_messages = False, {}, 0

    def settle(self) -> None:
        """Commit the open transaction, if any, and wait for the one committing in the
        background. Everything that relies on the learned offsets being committed waits
        here first: the next transaction, partition snapshots (a checkpoint, a
        revocation) and shutdown."""
        if self._txn_open:
            self.commit_open()
        prod = self.producer
        if prod is None or not prod.committing:
            return
        try:
            prod.wait_committed()
        except BaseException:
            # The user side learned what Kafka did not take: never snapshot it.
            self.abort()
            raise
        self.transactions += 1
        self.updates_published += self._committing_messages
        self.metrics.transactions.labels(outcome="committed").inc()
        self.metrics.update_messages.labels(direction="out").inc(self._committing_messages)
