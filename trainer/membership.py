"""The trainer as a member of its consumer group (:class:`GroupMembership`).

:class:`~trainer.service.Trainer` reads through a source
(:class:`~trainer.source.BatchSource`, or a reader process) whose consumer calls two
rebalance hooks: ``on_assign`` says where each assigned partition resumes (the
restored snapshot's offset on the first assignment; this trainer's own offset for a
partition the same rebalance revoked and gave back; else the group's commit), and
``on_revoke`` asks the learner for a synchronous checkpoint and waits for it (the
learner serves it between batches, ``_serve_revoke``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from stream.consumer import MiniBatchConsumer, Partition
from stream.settings import KafkaSettings
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings
from trainer.source import BatchSource

if TYPE_CHECKING:
    from trainer.checkpoint import Written

__all__ = ["GroupMembership"]

# Log lines keep the trainer's one logger name (every log line shows it).
log = logging.getLogger("trainer.service")


class GroupMembership:
    """The source, its consumer and the rebalance hooks: a part of
    :class:`~trainer.service.Trainer` (see the module docstring), which sets the
    state named here."""

    settings: TrainerSettings
    kafka: KafkaSettings
    metrics: TrainerMetrics
    stop_event: threading.Event
    offsets: dict[Partition, int]
    source_kind: Literal["thread", "process"]
    _consumer_factory: Callable[..., MiniBatchConsumer] | None
    _snap_offsets: dict[Partition, int]
    _learning: bool
    _revoke_request: threading.Event
    _revoke_done: threading.Event
    _revoke_offsets: dict[Partition, int] | None
    _revoke_parts: set[Partition]
    _just_revoked: dict[Partition, int]
    _first_assignment: bool

    if TYPE_CHECKING:
        # trainer.persistence.TrainerPersistence.checkpoint
        def checkpoint(self, reason: str = "periodic", wait: bool = False
                       ) -> Written | None: ...

    # ------------------------------------------------------------------ rebalance hooks
    # Both run in the consumer's thread: the source thread's poll (librdkafka), or
    # kafka-python's IO thread.

    def _on_assign(self, parts: set[Partition]) -> dict[Partition, int]:
        for _, partition in parts:
            self.metrics.partition(partition)
        # Partitions the snapshot does not know start from the group's committed
        # offset (else the earliest), which the consumer does by itself (or, handed
        # straight back, where the source dropped unlearned records: see BatchSource).
        # A partition handed straight back by the rebalance that revoked it resumes at
        # this trainer's own offset (the one it just committed, unless that commit failed).
        back = {p: o for p, o in self._just_revoked.items() if p in parts}
        self._just_revoked = {}
        if self._first_assignment:
            # Partitions the restored snapshot knows but the group gave to another
            # member are stale here as revoked ones are: should one come later, the
            # other member will have learned on, and the group's commit decides.
            self._first_assignment = False
            for p in [p for p in self.offsets if p not in parts]:
                log.info("%s is not assigned: it follows the group's commit if it "
                         "comes back (not the snapshot's offset %d)", p, self.offsets[p])
                del self.offsets[p]
        self.offsets.update(back)
        return {p: self.offsets[p] for p in parts if p in self.offsets}

    def _on_revoke(self, parts: set[Partition]) -> dict[Partition, int] | None:
        """Ask the learner for a synchronous checkpoint and wait for it."""
        self._revoke_done.clear()
        self._revoke_parts = set(parts)
        self._revoke_request.set()
        while not self._revoke_done.wait(0.1):
            if self.stop_event.is_set() or not self._learning:
                return self._snap_offsets  # the learner is stopping: its last snapshot
        return self._revoke_offsets

    def _serve_revoke(self) -> None:
        if self._revoke_request.is_set():
            self._revoke_request.clear()
            written = self.checkpoint("revoke", wait=True)
            # Nothing moved since a restore, or the write failed: the last durable
            # snapshot's offsets (a restored trainer has no ``checkpointer.last``).
            self._revoke_offsets = written.offsets if written else self._snap_offsets
            # The next owner resumes these partitions from the commit. Should one come
            # back here later, it resumes from the group's commit too: this trainer's
            # own offset would be stale by then (re-learning what another learned).
            self._just_revoked = {p: self.offsets.pop(p) for p in self._revoke_parts
                                  if p in self.offsets}
            self._revoke_done.set()

    # ------------------------------------------------------------------ source

    def _new_source(self) -> BatchSource:
        """The source of this run's batches: a thread polling and decoding here, or
        (``source_kind`` "process") a reader process that does it."""
        s = self.settings
        common: dict[str, Any] = dict(
            batch_size=s.batch_size, max_wait_s=s.max_wait_ms / 1000.0,
            prefetch=s.prefetch_batches, limits=self.kafka.limits,
            weights=self.kafka.event_weights, on_assign=self._on_assign,
            on_revoke=self._on_revoke, join_timeout_s=s.join_timeout_s)
        factory = self._consumer_factory or self._make_consumer
        if self.source_kind == "process":
            from trainer.process_source import ProcessBatchSource

            return ProcessBatchSource(factory, kafka=self.kafka, group=s.group, **common)
        return BatchSource(factory, **common)

    def _make_consumer(self, **hooks: Any) -> MiniBatchConsumer:
        s = self.settings
        return MiniBatchConsumer(
            self.kafka, s.group, batch_size=s.batch_size, max_wait_ms=s.max_wait_ms,
            client_id="liverec-trainer", session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(100, s.session_timeout_ms // 3),
            stop=self.stop_event, **hooks,
        )
