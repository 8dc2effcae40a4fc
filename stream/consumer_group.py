"""A consumer's group membership and positions (:class:`GroupMember`).

A part of :class:`~stream.consumer.MiniBatchConsumer`: the rebalance hooks'
bookkeeping (where a revoked partition stopped, polled records of revoked partitions
dropped, resuming a partition the same rebalance gives back, the count of hooks that
makes records polled across one stale) and the partitions' offsets: commit, committed,
seek, pause, watermarks and lag.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

from stream.events import ClickEvent, Rejected
from stream.kafka import Consumer, KafkaClientError, Partition, RecordBatch
from stream.kafka.base import partition_lag

__all__ = ["GroupMember"]

# Log lines keep the consumer's one logger name (every log line shows it).
log = logging.getLogger("stream.consumer")


class GroupMember:
    """Rebalance hooks and offsets of :class:`~stream.consumer.MiniBatchConsumer` (see
    the module docstring), which sets the state named here."""

    on_assign: Callable[[set[Partition]], None] | None
    on_revoke: Callable[[set[Partition]], None] | None
    commits_total: int
    assigned: frozenset[Partition]
    _client: Consumer
    _recent: OrderedDict[str, None]
    _pending: list[tuple[Partition, int, ClickEvent | Rejected | None]]
    _handed_out: dict[Partition, int]
    _resume: dict[Partition, int]
    _hook_lock: threading.RLock
    _generation: int
    _hooks_running: int
    _unassigned_since: float | None

    # ------------------------------------------------------------------ rebalance

    def _hook_started(self) -> None:
        with self._hook_lock:
            self._hooks_running += 1

    def _hook_finished(self) -> None:
        # Counted after every seek a hook made: a poll that began before this, even
        # inside the hook, may return records fetched before them (see next_batch).
        with self._hook_lock:
            self._hooks_running -= 1
            self._generation += 1

    def _revoked(self, parts: set[Partition]) -> None:
        self._hook_started()
        try:
            self._revoke(parts)
        finally:
            self._hook_finished()

    def _revoke(self, parts: set[Partition]) -> None:
        if self.on_revoke is not None and parts:
            try:
                self.on_revoke(parts)
            except Exception:
                log.exception("on_revoke hook failed for %s", sorted(parts))
        # Where this member stopped in each revoked partition: if the same rebalance
        # gives a partition back, reading continues there (librdkafka would restart at
        # the committed offset and kafka-python at its fetch position, past records
        # dropped below; the two clients behave the same this way).
        with self._hook_lock:
            self._resume = {p: off for p, off in self._handed_out.items() if p in parts}
            dropped = [p for p in self._pending if p[0] in parts]
            if dropped:
                for part, offset, item in dropped:
                    self._resume[part] = min(offset, self._resume.get(part, offset))
                    if isinstance(item, ClickEvent):
                        self._recent.pop(item.event_id, None)  # it will be read again
                log.info("dropping %d polled records of revoked partitions (read again "
                         "from the last commit, or from here if they come back)",
                         len(dropped))
                self._pending = [p for p in self._pending if p[0] not in parts]
            for part in parts:
                self._handed_out.pop(part, None)
            self.assigned = self.assigned - parts
            if not self.assigned and self._unassigned_since is None:
                self._unassigned_since = time.monotonic()

    def _assigned(self, parts: set[Partition]) -> None:
        self._hook_started()
        try:
            self._assign(parts)
        finally:
            self._hook_finished()

    def _assign(self, parts: set[Partition]) -> None:
        log.info("assigned %s", sorted(parts))
        with self._hook_lock:
            self.assigned = self.assigned | parts
            if self.assigned:
                self._unassigned_since = None
            resume, self._resume = self._resume, {}
            for part in parts & resume.keys():
                try:
                    self._client.seek(part, resume[part])
                    self._handed_out[part] = resume[part]
                except KafkaClientError:
                    log.warning("could not resume %s at %d", part, resume[part],
                                exc_info=True)
        if self.on_assign is not None and parts:
            try:
                self.on_assign(parts)
            except Exception:
                log.exception("on_assign hook failed for %s", sorted(parts))

    def _discard_stale(self, got: RecordBatch) -> None:
        """Drop records polled while a rebalance hook ran and rewind their partitions:
        kafka-python's fetcher can hand out records fetched before the hook's seek and
        move the position past it (it checks, then updates, on the polling thread)."""
        first = got.first_offsets()
        if not first:
            return
        self.seek({part: self._handed_out.get(part, offset) for part, offset in first.items()})
        log.info("dropped %d records polled across a rebalance", len(got))

    # ------------------------------------------------------------------ offsets

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit exactly these next-offsets (synchronously; inside ``on_revoke`` too).

        Raises
        ------
        KafkaClientError
            The broker refused the commit (e.g. the member left the group).
        """
        if not offsets:
            return
        self._client.commit(offsets)
        self.commits_total += 1

    def committed(self, parts: Iterable[Partition] | None = None, timeout_s: float = 10.0
                  ) -> dict[Partition, int | None]:
        """The group's committed next-offset of ``parts`` (default: every assigned
        partition); None where the group has none."""
        wanted = self.assignment() if parts is None else parts
        return self._client.committed(sorted(wanted), timeout_s)

    def seek(self, offsets: Mapping[Partition, int]) -> None:
        """Move the read position of assigned partitions (others are ignored, also one
        that kafka-python's IO thread revokes between the check and the seek)."""
        assigned = self.assignment()
        for part, offset in offsets.items():
            if part not in assigned:
                log.debug("not seeking unassigned partition %s", part)
                continue
            try:
                self._client.seek(part, offset)
            except KafkaClientError:
                if part in self.assignment():
                    raise
                log.info("not seeking %s: revoked meanwhile", part)
                continue
            self._handed_out[part] = offset
        self._pending = [p for p in self._pending if p[0] not in offsets]

    def pause(self, parts: Iterable[Partition]) -> None:
        """Stop fetching these assigned partitions; the member keeps them (another
        reader -- :mod:`stream.child_reader` -- reads them)."""
        self._client.pause(parts)

    def beginning_offsets(self, parts: Iterable[Partition]) -> dict[Partition, int]:
        """The oldest offset each partition still holds (the low watermark)."""
        return self._client.beginning_offsets(parts)

    def end_offsets(self, parts: Iterable[Partition]) -> dict[Partition, int]:
        """The offset after the last record of each partition (the high watermark)."""
        return self._client.end_offsets(parts)

    def assignment(self) -> set[Partition]:
        """Partitions currently assigned to this member."""
        return self._client.assignment()

    def partitions_for(self, topic: str, timeout_s: float = 10.0) -> set[int]:
        """Partition numbers of ``topic`` (a metadata round trip to the cluster)."""
        return self._client.partitions_for(topic, timeout_s)

    def lag(self) -> dict[Partition, int]:
        """Records not yet read per assigned partition (end offset - position);
        partitions whose position is not known yet are left out."""
        return partition_lag(self._client, self.assignment())
