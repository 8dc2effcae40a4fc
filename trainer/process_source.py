"""The trainer's input read by a child process (``--source process``; confluent only).

:class:`ProcessBatchSource` is a :class:`~trainer.source.BatchSource` whose consumer
stays a member of the group -- rebalance hooks, commits, the dead-letter topic, all
unchanged -- but fetches nothing: it pauses every partition it is assigned. A
:class:`~stream.child_reader.ChildReader` process reads them instead, polling and
decoding on its own core, so the learner no longer pays that CPU under the GIL.

After each rebalance hook, and after each rewind, the child gets the complete
assignment with a new generation: every partition from the offset after the last
batch this source accepted (or a rewind's first offset, or where the learner's
snapshot resumes it, or the group's commit). Batches the child read under an earlier
generation are dropped, and read again from those offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from stream.child_reader import ChildReader
from stream.consumer import Partition
from stream.kafka.base import KafkaClientError
from stream.settings import KafkaSettings
from trainer.source import BatchSource, PolledBatch

__all__ = ["ProcessBatchSource"]

log = logging.getLogger(__name__)


class ProcessBatchSource(BatchSource):
    """:class:`BatchSource` with a reader process; ``kafka`` and ``group`` configure it."""

    def __init__(self, *args: Any, kafka: KafkaSettings, group: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if kafka.client != "confluent":
            raise ValueError("the process source reads with librdkafka (client confluent)")
        self._kafka, self._group = kafka, group
        self._reader: ChildReader | None = None
        #: per partition, where the reader must go on from (None: the group's commit)
        self._next: dict[int, int | None] = {}
        #: reader processes that died in a row before sending a frame
        self._failed_starts = 0
        #: when to start a reader after one died (None: the reader is running)
        self._restart_at: float | None = None
        #: records the paused group consumer returned anyway (ignored)
        self.stray_records = 0

    def start(self) -> None:
        # Started first: the child's imports overlap the group join.
        self._reader = self._new_reader()
        super().start()

    def _new_reader(self) -> ChildReader:
        reader = ChildReader(
            self._kafka, self._group, batch_size=self.batch_size,
            max_wait_s=self.max_wait_s, limits=self.limits, weights=self.weights)
        log.info("polling and decoding in a child process (pid %d)", reader.proc.pid)
        return reader

    def _reader_died(self, why: BaseException) -> None:
        """A reader that died (killed, out of memory) or hung (silent for
        :attr:`ChildReader.silence_s`: stopped, deadlocked) is replaced (a hung one is
        killed after a second): the new one reads
        from the offsets after the last batch accepted, so frames lost in the old
        one's pipe are read again and none twice. One that cannot start at all is
        tried again ever less often, up to every 30 s; meanwhile this thread goes on
        serving the group (rebalance hooks, commits)."""
        assert self._reader is not None
        self.errors += 1
        delay = min(30.0, 0.5 * 2 ** self._failed_starts)
        self._failed_starts += 1
        log.warning("%s: starting another reader process in %.1f s", why, delay)
        self._reader.stop(timeout_s=1.0)
        self._restart_at = time.monotonic() + delay

    # ------------------------------------------------------------------ source thread

    def _fetch(self) -> tuple[PolledBatch, int] | None:
        assert self.consumer is not None and self._reader is not None
        # Serves the rebalance callbacks; the partitions are paused, so no records.
        stray = self.consumer.poll_batch(1, 0.0)
        if len(stray):
            self.stray_records += len(stray)
            log.debug("a paused consumer returned %d records (ignored)", len(stray))
        if self._restart_at is not None:  # the reader died: wait, then start another
            if time.monotonic() < self._restart_at:
                self._stop.wait(self.STOP_CHECK_S)
                return None
            self._restart_at = None
            self._reader = self._new_reader()
            self._sync_reader()
        try:
            frame = self._reader.read(self.STOP_CHECK_S)
        except (EOFError, TimeoutError) as exc:  # ended, or hung
            if self._reader.stopping:  # told to stop (shutdown): it did
                self._stop.wait(0.05)
            else:
                self._reader_died(exc)
            return None
        if frame is not None:
            self._failed_starts = 0  # this reader works
        if frame is None or frame.gen != self._generation:
            return None  # nothing, or read before the last command: read again
        topic = self._kafka.topic
        rejected = [(rej, topic, p, off) for _, p, off, rej in frame.rejects]
        self._dead_letter(rejected)
        self._next.update(frame.next)
        return PolledBatch(frame.columns, rejected,
                           {(topic, p): o for p, o in frame.next.items()},
                           {(topic, p): o for p, o in frame.first.items()},
                           frame.records), frame.gen

    def _lag(self) -> dict[Partition, int]:
        assert self.consumer is not None
        parts = sorted(self.assigned)
        ends = self.consumer.end_offsets(parts) if parts else {}
        return {p: max(0, ends[p] - o) for p in parts
                if (o := self._next.get(p[1])) is not None and p in ends}

    def _sync_reader(self) -> None:
        """Send the reader the complete assignment under the current generation."""
        if self._reader is None or self._reader.stopping:
            return  # (the group leave at shutdown revokes too: nothing left to read)
        mine = {p for t, p in self.assigned if t == self._kafka.topic}
        self._next = {p: self._next.get(p) for p in mine}
        self._reader.assign(self._generation, self._next)

    def _resolve_starts(self, parts: set[Partition]) -> None:
        """Turn "where the group resumes" into offsets here, where the coordinator and
        the leaders are known: the group's commit, else the log's start (the reader's
        ``auto_offset_reset`` is "earliest"). Left to the reader, the commit costs it a
        coordinator lookup (0.1-0.2 s before its first frame on a local broker) and the
        log's start a 0.5 s retry backoff in librdkafka."""
        assert self.consumer is not None and self._reader is not None
        todo = {(t, p) for t, p in parts if self._next.get(p) is None}
        try:
            got = self.consumer.committed(todo, timeout_s=5.0) if todo else {}
            fresh = {part for part, off in got.items() if off is None}
            if fresh and self._reader.auto_offset_reset == "earliest":
                got.update(self.consumer.beginning_offsets(fresh))
        except KafkaClientError as exc:
            log.warning("could not read the group's offsets (%s): the reader process "
                        "looks them up", exc)
            return
        for (_, p), off in got.items():
            self._next[p] = off

    # ------------------------------------------------------------------ hooks

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        self._next = {}
        self._sync_reader()
        return consumer

    def _forget(self, firsts: list[Mapping[Partition, int]],
                resume_at: Mapping[Partition, int] | None = None) -> None:
        super()._forget(firsts, resume_at)
        for first in firsts:
            for (t, p), off in first.items():
                if (t, p) in self.assigned:
                    now = self._next.get(p)
                    self._next[p] = off if now is None else min(off, now)
        for (t, p), off in (resume_at or {}).items():
            if (t, p) in self.assigned and p in self._next:
                self._next[p] = off

    def _assigned(self, parts: set[Partition]) -> None:
        super()._assigned(parts)
        assert self.consumer is not None
        self.consumer.pause(parts)
        for t, p in parts:
            self._next[p] = self._resumed_at.get((t, p))
        self._resolve_starts(parts)
        self._sync_reader()

    def _revoked(self, parts: set[Partition]) -> None:
        super()._revoked(parts)
        self._sync_reader()

    def stop_reading(self) -> None:
        # The reader holds no state (no group, no commits): told to stop now, it exits
        # (50 ms here) while the trainer writes its final snapshot.
        if self._reader is not None:
            self._reader.request_stop()

    def stop(self, final_offsets: Mapping[Partition, int] | None, timeout_s: float = 30.0
             ) -> None:
        self.stop_reading()  # (if the trainer has not yet)
        try:
            super().stop(final_offsets, timeout_s)
        finally:
            if self._reader is not None:
                self._reader.stop()
