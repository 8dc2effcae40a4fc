"""A scale-out trainer's user side (:class:`UserSide`): the partitions it owns.

The click topic is keyed by ``user_id``, so a user's events all come from one
partition. Each trainer keeps its partitions' user state
(:class:`~trainer.partition_state.PartitionState`: history, de-dup window, flood
counts, the models' user windows) and snapshots it per partition under
``<snapshots>/partitions/<p>/``, with a heartbeat (``partitions/<p>/OWNER``) saying
who owns it. A new owner of partition ``p`` loads ``p``'s newest snapshot (offset
``S``), reads the group's committed offset ``C >= S`` and re-learns ``[S, C)``
*user-side only* (the item side of those records is in the update topic already),
then learns normally from ``C``. A partition with no valid snapshot starts at its
first offset: it gets a snapshot there at once, before anything of it is learned or
committed, so that a partition the group has committed always has state in the
directory, and one that has none is lost (the trainer checks that first:
:func:`trainer.lost_snapshot.check_partitions`). A revoked partition is snapshotted
(if it moved since its last snapshot and the trainer has not failed), then its users
leave the models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from online_models.base import OnlineModel
from online_models.ownership import write_heartbeat
from stream.kafka.base import Partition, partition_lag
from stream.kafka.confluent import ConfluentConsumer
from trainer.flood import FloodSettings
from trainer.metrics import TrainerMetrics
from trainer.partition_state import PartitionState, PartitionStore
from trainer.settings import TrainerSettings

__all__ = ["UserSide"]

# The scale-out trainer's log lines keep its one logger name (bench/bench_scale_out.py
# and operators filter on "trainer.partitioned").
log = logging.getLogger("trainer.partitioned")


class UserSide:
    """Takes over, snapshots and releases the input partitions a scale-out trainer
    owns (see the module docstring); the trainer keeps them by partition number.

    Parameters
    ----------
    settings
        The trainer's settings (history and de-dup bounds, snapshot retention).
    models
        The trainer's models by name (they hold the owned users' windows).
    metrics
        The trainer's metrics.
    root
        The snapshot location (``<snapshots>``).
    topic
        The input topic.
    instance
        This trainer's instance id.
    flood
        Flood guard settings (applied per partition).
    """

    def __init__(self, settings: TrainerSettings, models: Mapping[str, OnlineModel],
                 metrics: TrainerMetrics, root: Path, topic: str, instance: str,
                 flood: FloodSettings) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics
        self.root = root
        self.topic = topic
        self.instance = instance
        self.flood_settings = flood
        #: wall-clock time of the newest partition snapshot written (0: none yet), as
        #: ``liverec_trainer_snapshot_timestamp_seconds`` and ``..._age_seconds`` say:
        #: LiverecSnapshotStale then covers a scale-out trainer as a single one
        self.last_written_wall = 0.0
        metrics.snapshot_age.set_function(
            lambda: time.time() - self.last_written_wall if self.last_written_wall else -1.0)

    def fresh_state(self, p: int) -> PartitionState:
        s = self.settings
        return PartitionState.fresh(p, history_items=s.history_items,
                                    dedup_window_s=s.dedup_window_s,
                                    dedup_max_ids=s.dedup_max_ids, flood=self.flood_settings,
                                    history_max_users=s.history_max_users)

    def restore(self, p: int) -> PartitionState | None:
        """Partition ``p``'s state from its best valid snapshot in the directory (its
        users' state loaded into the models); None when the directory holds none (a
        snapshot without this topic's offset of ``p`` is another topic's)."""
        snap = PartitionStore(self.root, p, self.settings.keep_snapshots).load(self.topic)
        if snap is None or snap.offsets.get(self.topic, {}).get(p) is None:
            return None
        st = self.fresh_state(p)
        st.restore(snap, self.topic, self.models, dedup_window_s=self.settings.dedup_window_s,
                   dedup_max_ids=self.settings.dedup_max_ids)
        return st

    def take_over(self, part: Partition, c: int | None, consumer: ConfluentConsumer,
                  parts: MutableMapping[int, PartitionState],
                  restored: PartitionState | None) -> None:
        """Add the assigned ``part`` (its committed offset ``c``) to ``parts``:
        ``restored`` (:meth:`restore`) or, for none, a fresh state at the partition's
        start, snapshotted at once; ``consumer`` at the state's offset and what lies
        below ``c`` marked for re-learning."""
        p = part[1]
        st = restored
        if st is None:
            st = self.fresh_state(p)
            st.offset = consumer.beginning_offsets([part])[part]
            # Before anything of it is committed (see the module doc); a failure raises:
            # a commit without this state would later read as a lost snapshot.
            self.write(st, strict=True)
        start = st.offset
        assert start is not None
        if c is not None and c > start:
            st.replay_until = c
        consumer.seek(part, start)
        parts[p] = st
        self.metrics.partition_owned.labels(topic=self.topic, partition=str(p)).set(1)
        self.metrics.partition(p)
        log.info("assigned partition %d: %s offset %s, committed %s%s", p,
                 "snapshot" if restored is not None else "no snapshot, starting at", start,
                 c, f" (re-learning [{start}, {c}) user-side only)"
                 if st.replay_until is not None else "")

    def release(self, st: PartitionState, snapshot: bool) -> None:
        """Let a revoked partition go: its snapshot first (``snapshot``, if it moved),
        then its users leave the models."""
        if snapshot and st.offset != st.snapshot_offset:
            self.write(st)
        for model in self.models.values():
            model.forget_users(sorted(st.users))
        p = st.partition
        self.metrics.partition_owned.labels(topic=self.topic, partition=str(p)).set(0)
        self.metrics.drop_partition(p)  # its new owner exports its lag now
        log.info("partition %d revoked at offset %s", p, st.offset)

    def write(self, st: PartitionState, strict: bool = False) -> None:
        """Snapshot ``st``; a failure is logged and counted (and raised, ``strict``)."""
        try:
            PartitionStore(self.root, st.partition, self.settings.keep_snapshots).write(
                st, self.topic, self.models, {"instance": self.instance})
            self.last_written_wall = time.time()
            self.metrics.snapshot_timestamp.set(self.last_written_wall)
        except Exception:
            self.metrics.snapshot_errors.inc()
            if strict:
                raise
            log.exception("partition %d snapshot failed", st.partition)

    def heartbeat(self, p: int) -> None:
        """``partitions/<p>/OWNER``: who owns ``p`` and since when it last said so."""
        try:
            write_heartbeat(self.root, p, self.instance)
        except OSError:
            log.warning("partition %d heartbeat failed", p, exc_info=True)

    def snapshot(self, parts: Mapping[int, PartitionState]) -> None:
        """Snapshot the partitions that moved since their last snapshot; a heartbeat
        for each."""
        for st in parts.values():
            if st.offset != st.snapshot_offset:
                self.write(st)
            self.heartbeat(st.partition)

    def export_lag(self, consumer: ConfluentConsumer | None,
                   parts: Mapping[int, PartitionState]) -> None:
        """Records not yet read of each owned partition (end offset - position), as
        the single trainer exports them; a position not known yet is left out."""
        if consumer is None or not parts:
            return
        try:
            self.metrics.export_lag(
                partition_lag(consumer, [(self.topic, p) for p in parts]))
        except Exception:
            log.debug("consumer lag not available", exc_info=True)
