"""How a scale-out trainer learns one poll (:class:`PollLearner`).

Learning a batch is ``learn_local`` (user side) and yields an item-side delta per
model (:mod:`online_models.deltas`). The deltas of a partition's slice of the batch go
to ``<topic>.updates`` as one message, or several for a slice that would make a
message far above ~256 KiB (the broker refuses messages over ~1 MB by default,
failing the transaction). Records below a partition's replay cut (learned by its
previous owner after its last partition snapshot) are re-learned user-side only. The
poll's update messages, rejects and offsets go into the open transaction
(:mod:`trainer.transactions`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from online_models.base import Batch, OnlineModel, learning_order
from online_models.deltas import ItemDelta, encode_deltas
from stream.columns import decode_columns
from stream.kafka import RecordBatch
from stream.kafka.base import Partition
from stream.settings import KafkaSettings
from trainer.evaluation import eval_users
from trainer.item_side import ItemSide
from trainer.metrics import PhaseClock, TrainerMetrics
from trainer.partition_state import PartitionState
from trainer.settings import TrainerSettings
from trainer.transactions import UpdateTransactions

__all__ = ["PollLearner"]


class PollLearner:
    """Learns the polls of one scale-out trainer (see the module docstring).

    Parameters
    ----------
    settings, kafka
        The trainer's settings (``batch_size``, ``eval_users``) and Kafka settings
        (decoding limits and event weights).
    models
        The trainer's models by name.
    metrics, clock
        The trainer's metrics and loop clock.
    instance
        This trainer's instance id (in every update message).
    item_side
        The trainer's item side: whether to evaluate, the update topic's partitions.
    txn
        The trainer's transactions.
    on_fail
        Called when a poll's transaction fails: the trainer must then exit without a
        snapshot.
    """

    #: an update message aims at this size: a quarter of the broker's and producer's
    #: default limit (~1 MB; a larger message fails the whole transaction)
    UPDATE_TARGET_BYTES = 256 * 1024
    #: fewest events of a message whose size sizes the next chunks
    UPDATE_SIZING_EVENTS = 256

    def __init__(self, settings: TrainerSettings, kafka: KafkaSettings,
                 models: dict[str, OnlineModel], metrics: TrainerMetrics, clock: PhaseClock,
                 instance: str, item_side: ItemSide, txn: UpdateTransactions,
                 on_fail: Callable[[], None]) -> None:
        self.settings = settings
        self.kafka = kafka
        self.topic = kafka.topic
        self.models = models
        self.metrics = metrics
        self.clock = clock
        self.instance = instance
        self.item_side = item_side
        self.txn = txn
        self.on_fail = on_fail
        self.events_learned = 0
        self.events_replayed = 0
        #: bytes per event of the last update message (sizes the next; a cautious
        #: first guess: a young stream's messages carry many new item ids)
        self._bytes_per_event = 1024.0

    def handle(self, records: RecordBatch, parts: Mapping[int, PartitionState],
               closing: bool = False) -> int:
        """Learn one poll of the partitions in ``parts``; publish its updates, rejects
        and offsets in one transaction."""
        assert self.txn.producer is not None and self.txn.consumer is not None
        m, topic = self.metrics, self.topic
        cols, rejects = decode_columns(records.values, limits=self.kafka.limits,
                                       weights=self.kafka.event_weights)
        parts_of = np.asarray(records.partitions, np.int64)
        offs = np.asarray(records.offsets, np.int64)
        ev_part = parts_of[np.asarray(cols.positions, np.int64)] if len(cols) else parts_of[:0]
        ev_off = offs[np.asarray(cols.positions, np.int64)] if len(cols) else offs[:0]
        m.events_consumed.labels(topic=topic).inc(len(cols))
        messages: list[tuple[int, bytes]] = []
        commit: dict[Partition, int] = {}
        dead: list[tuple[Any, str, int, int]] = []
        learned = 0
        for p in np.unique(parts_of).tolist():
            st = parts.get(p)
            if st is None:
                continue  # revoked inside this poll: its next owner reads it
            p_offs = offs[parts_of == p]
            nxt = int(p_offs.max()) + 1
            mine = ev_part == p
            cut = st.replay_until
            if cut is not None:
                replay = mine & (ev_off < cut)
                if replay.any():
                    self.events_replayed += self.learn(st, cols.take(replay),
                                                       evaluate=False)[0]
                mine = mine & (ev_off >= cut)
            for chunk in self.update_chunks(mine):
                n, deltas = self.learn(st, cols.take(chunk), closing=closing)
                learned += n
                if n:
                    msg = encode_deltas(deltas, {"partition": p, "events": n,
                                                 "instance": self.instance,
                                                 "group": self.settings.group})
                    if n >= self.UPDATE_SIZING_EVENTS:
                        # A small message's ids and header make its bytes per event
                        # read high; sized by those, chunks would shrink for nothing.
                        self._bytes_per_event = len(msg) / n
                    messages.append((p, msg))
            # Rejects below the cut were dead-lettered by the previous owner already.
            dead.extend((rej, records.topics[i], p, records.offsets[i]) for i, rej in rejects
                        if records.partitions[i] == p and records.offsets[i] >= (cut or 0))
            st.offset = nxt
            if cut is None or nxt > cut:
                commit[(topic, p)] = nxt
            if cut is not None and nxt >= cut:
                st.replay_until = None
        for rej, *_ in dead:
            m.events_rejected.labels(topic=topic, reason=rej.reason).inc()
        if commit:
            try:
                with self.clock("transaction"):
                    self.txn.publish(messages, dead, commit, self.item_side.n_updates,
                                     caught_up=len(records) < self.settings.batch_size)
            except BaseException:
                # The user side learned what Kafka did not take: never snapshot it.
                self.on_fail()
                raise
        self.events_learned += learned
        m.events_learned.labels(topic=topic).inc(learned)
        return learned

    def update_chunks(self, mine: np.ndarray) -> list[np.ndarray]:
        """``mine`` (a mask of a poll's events) cut into masks of consecutive events,
        each learned and published as one update message of about
        :attr:`UPDATE_TARGET_BYTES` (sized by the last message's bytes per event)."""
        idx = np.flatnonzero(mine)
        step = max(16, int(self.UPDATE_TARGET_BYTES / max(self._bytes_per_event, 1.0)))
        out = []
        for lo in range(0, len(idx), step):
            keep = np.zeros(len(mine), bool)
            keep[idx[lo : lo + step]] = True
            out.append(keep)
        return out

    def learn(self, st: PartitionState, cols: Any, evaluate: bool = True,
              closing: bool = False) -> tuple[int, dict[str, ItemDelta]]:
        """Learn a partition's events user-side (``evaluate``: scoring its sample
        first, see :mod:`trainer.item_side`); returns their count and item deltas."""
        fresh = st.dedup.add_many(cols.event_ids, cols.timestamps)
        if not fresh.all():
            self.metrics.duplicates_dropped.labels(topic=self.topic).inc(
                len(cols) - int(fresh.sum()))
            cols = cols.take(fresh)
        admitted, capped = st.flood.admit(cols.users, cols.items, cols.timestamps)
        if capped:
            for reason, count in capped.items():
                self.metrics.events_capped.labels(reason=reason).inc(count)
            cols = cols.take(admitted)
        n = len(cols)
        deltas: dict[str, ItemDelta] = {}
        if not n:
            return 0, deltas
        batch = Batch.from_columns(cols.users, cols.items, cols.weights, cols.timestamps)
        ev = self.item_side.evaluating(closing) if evaluate else None
        if ev is not None:
            sampled = np.flatnonzero(eval_users(batch.users, self.settings.eval_users))
            if len(sampled):
                ev.evaluate(batch[sampled])
        for name in learning_order(self.models):
            deltas[name] = self.models[name].learn_local(batch)  # type: ignore[attr-defined]
        gone = st.learned(cols.users, cols.items)
        if gone:
            for model in self.models.values():
                model.forget_users(gone)
            if self.item_side.evaluation is not None:
                self.item_side.evaluation.evaluator.forget_users(gone)
            self.metrics.users_forgotten.inc(len(gone))
        st.events_total += n
        wm = float(batch.timestamps.max())
        st.watermark = wm if st.watermark is None else max(st.watermark, wm)
        return n, deltas
