"""The scale-out item state as a fold of the update topic (:class:`UpdateFold`).

A scale-out trainer that folds (see :mod:`trainer.partitioned`) reads every trainer's
committed update messages (``read_committed``) and folds their item-side deltas into
its models, per model in topic order, a batch at a time. The item state is then a
function of the update topic alone: :attr:`UpdateFold.offsets` says how far into the
topic it is, :attr:`UpdateFold.coverage` how many events of each input partition it
holds. Messages that name another consumer group (another deployment learning the
same click topic) are skipped: their events are not this group's to count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from online_models.base import OnlineModel, learning_order
from online_models.deltas import ItemDelta, SharedIds, decode_deltas
from stream.kafka.confluent import ConfluentConsumer
from trainer.metrics import TrainerMetrics

__all__ = ["PendingFold", "UpdateFold", "foreign_group"]

log = logging.getLogger(__name__)


def foreign_group(meta: Mapping[str, Any], group: str | None) -> str | None:
    """The consumer group an update message names when it is not ``group`` (None: it
    is this group's, or it names none, as messages of liverec before 2026-12-08 do).

    >>> foreign_group({"partition": 0, "group": "other"}, "mine")
    'other'
    >>> foreign_group({"partition": 0, "group": "mine"}, "mine"), foreign_group({}, "mine")
    (None, None)
    """
    other = meta.get("group")
    if group is None or not isinstance(other, str) or other == group:
        return None
    return other


class UpdateFold:
    """Reads the update topic and folds it into ``models`` (the trainer's own dict:
    models it replaces are the ones folded into).

    Parameters
    ----------
    models
        The trainer's models by name.
    updates
        The update topic (``<topic>.updates``).
    topic
        The input topic (labels of ``liverec_trainer_partition_events``).
    metrics
        Where the bytes and messages read and each partition's events go.
    fold_every_s
        Seconds between folds: messages read meanwhile wait in memory.
    group
        This trainer's consumer group: messages naming another are skipped.
    """

    #: most update messages one read takes
    READ_MAX = 1000
    #: decoded deltas held before they are folded, whatever ``fold_every_s`` says
    BATCH_BYTES = 16 * 1024 * 1024

    def __init__(self, models: dict[str, OnlineModel], updates: str, topic: str,
                 metrics: TrainerMetrics, fold_every_s: float, group: str | None = None
                 ) -> None:
        self.models = models
        self.group = group
        #: other groups whose update messages were skipped (each logged once)
        self.foreign: set[str] = set()
        self.updates = updates
        self.topic = topic
        self.metrics = metrics
        self.fold_every_s = fold_every_s
        #: the ``read_committed`` reader of the update topic (assigned while folding)
        self.consumer: ConfluentConsumer | None = None
        #: the update topic's offsets the item state reflects (messages folded)
        self.offsets: dict[int, int] = {}
        #: events of each input partition the item state holds
        self.coverage: dict[int, int] = {}
        self._pending = PendingFold()
        self._last_fold = time.monotonic()

    def discard_pending(self) -> None:
        """Forget the messages read and not folded (they are read again from
        :attr:`offsets` after a re-assignment)."""
        self._pending = PendingFold()

    def read(self, max_messages: int = READ_MAX, timeout_s: float = 0.0,
             fold_now: bool = False) -> int:
        """Read committed update messages (everyone's, this trainer's too) and fold
        them into the models once ``fold_every_s`` has passed since the last fold (or
        ``fold_now``, or once :attr:`BATCH_BYTES` are held); returns the number of
        messages read."""
        upd = self.consumer
        if upd is None:
            return 0
        got = upd.poll_batch(max_messages, timeout_s)
        pending = self._pending
        for value, p, o in zip(got.values, got.partitions, got.offsets, strict=True):
            pending.offsets[p] = o + 1
            if not value:
                continue
            try:
                meta, deltas = decode_deltas(value)
            except Exception:
                self.metrics.loop_errors.labels(stage="process").inc()
                log.exception("update %s[%d]@%d unreadable: skipped", self.updates, p, o)
                continue
            other = foreign_group(meta, self.group)
            if other is not None:
                if other not in self.foreign:
                    self.foreign.add(other)
                    log.warning(
                        "%s holds update messages of consumer group %r (another deployment "
                        "learning %s): skipped, only those of group %r are folded (groups "
                        "on one click topic share its update topic, and each reads the "
                        "others' messages too)", self.updates, other, self.topic,
                        self.group)
                continue
            pending.add(deltas, meta, len(value))
            self.metrics.update_bytes.labels(direction="in").inc(len(value))
            if pending.nbytes >= self.BATCH_BYTES:
                self.fold()
                pending = self._pending
        self.metrics.update_messages.labels(direction="in").inc(len(got))
        if fold_now or time.monotonic() - self._last_fold >= self.fold_every_s:
            self.fold()
        return len(got)

    def fold(self) -> None:
        """Fold the update messages read so far into the item state, per model in
        order (models fold independently); the item state then reflects
        :attr:`offsets`."""
        pending, self._pending = self._pending, PendingFold()
        self._last_fold = time.monotonic()
        for name in learning_order(self.models):
            deltas = pending.deltas.get(name)
            if deltas:
                self.models[name].apply_deltas(deltas)  # type: ignore[attr-defined]
        self.offsets.update(pending.offsets)
        for part, n in pending.events.items():
            total = self.coverage[part] = self.coverage.get(part, 0) + n
            self.metrics.partition_events.labels(
                topic=self.topic, partition=str(part)).set(total)

    def drain(self, timeout_s: float) -> bool:
        """Read and fold until the update topic is read to its end (or ``timeout_s``);
        returns whether the end was reached."""
        if self.consumer is None:
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.read(timeout_s=0.2, fold_now=True)
            if not got and self.lag() == 0:
                return True
        log.warning("the update topic was not read to its end within %.0f s (%d records "
                    "left): the last item snapshot and merge lag behind", timeout_s,
                    self.lag())
        return False

    def lag(self) -> int:
        """Records (transaction markers included) between the read position and the end."""
        upd = self.consumer
        if upd is None:
            return 0
        parts = sorted(upd.assignment())
        ends = upd.end_offsets(parts)
        lag = 0
        for part, end in ends.items():
            pos = upd.position(part)
            lag += max(0, end - (pos if pos is not None else self.offsets.get(part[1], 0)))
        return lag


@dataclass
class PendingFold:
    """Update messages read and not folded yet: each model's deltas in topic order
    (their ids in one shared table), the update offsets and the input partitions'
    events they bring."""

    deltas: dict[str, list[ItemDelta]] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    events: dict[int, int] = field(default_factory=dict)
    nbytes: int = 0
    #: one id table for all the messages held: each model looks an id up once a fold
    ids: SharedIds = field(default_factory=SharedIds)

    def add(self, deltas: Mapping[str, ItemDelta], meta: Mapping[str, Any], nbytes: int
            ) -> None:
        self.ids.adopt(deltas.values())
        for name, d in deltas.items():
            self.deltas.setdefault(name, []).append(d)
        part = meta.get("partition")
        if part is not None:
            self.events[int(part)] = self.events.get(int(part), 0) + int(meta.get("events", 0))
        self.nbytes += nbytes
