"""Scale-out trainer: N processes in one consumer group share one model through Kafka.

``liverec train --scale-out`` runs :class:`ScaleOutTrainer`. Kafka is the
parameter server (see DEVELOPING.md, "Scale-out", for the picture):

* **User side, by partition.** The click topic is keyed by ``user_id``, so a
  user's events all come from one partition. Each trainer keeps its partitions'
  user state (:class:`~trainer.partition_state.PartitionState`: history, de-dup
  window, flood counts, the models' user windows) and snapshots it per partition
  under ``<snapshots>/partitions/<p>/``.
* **Item side, through the update topic.** Learning a batch is
  ``learn_local`` (user side) and yields an item-side delta per model
  (:mod:`online_models.deltas`). The deltas of a partition's slice of the batch go
  to ``<topic>.updates`` as one message, or several for a slice that would make a
  message far above ~256 KiB (the broker refuses messages over ~1 MB by default,
  failing the transaction). The count models' learning never reads
  item state, so only the **merge writer** (the owner of the topic's last partition,
  which the range assignor gives the fewest partitions) folds the committed update
  messages (everyone's, its own too) into its models' item state,
  those read in each ``fold_every_s`` at once (``apply_deltas``;
  :class:`~trainer.folding.UpdateFold`);
  the others skip that work (with bpr, whose steps read item factors, every trainer
  folds). The item state is therefore a function of the update topic alone; the
  merge writer snapshots it with the update-topic offsets it reflects under
  ``<snapshots>/items/<instance>/``. A trainer that becomes the merge writer (or
  merges at shutdown) first adopts the most advanced item snapshot, keeping its own
  users' state, and folds the topic from that snapshot's offsets.
* **Exactly once.** One Kafka transaction holds the update messages, the
  dead-lettered rejects and the input offsets (``send_offsets_to_transaction``) of
  the polls learned while it was open (``commit_every_s``; 0: one poll), committed
  on a thread while the next poll is learned; the next transaction, partition
  snapshots, a revocation and shutdown commit the open one and wait for it
  (:meth:`ScaleOutTrainer._settle`). Update readers use ``read_committed``. So an
  input record's effect on the item state is in the update topic iff its offset
  is committed. A new owner of partition ``p`` loads ``p``'s newest snapshot
  (offset ``S``), reads the group's committed offset ``C >= S`` and re-learns
  ``[S, C)`` *user-side only* (the item side of those records is in the update
  topic already), then learns normally from ``C``. A SIGKILLed trainer's open
  transaction is aborted (by its restart's ``init_transactions`` with the same
  instance id, or by the broker after ``transaction_timeout_ms``); a member that
  lost its partitions is fenced by the group generation.
* **Serving.** The merge writer writes, every ``merge_every_s`` once it has read
  the update topic to its end, an ordinary snapshot into ``<snapshots>/`` (the
  merged model: its item state plus every partition's latest user state;
  ``events_total`` summed over partitions), which ``liverec serve --snapshots``
  loads like any other.

Only models implementing :class:`~online_models.deltas.SharesItemState`
(popularity, itemknn, sequence, bpr) can learn here; others are refused at start.
With bpr, whose steps read item factors, every trainer folds the update topic.

**Evaluation.** A trainer that folds the update topic and has read it to its end
holds the whole item state, so it evaluates its own partitions' events
prequentially before learning them (:class:`~trainer.evaluation.TrainerEvaluation`:
the same sample, governor, concept-drift monitors and metrics as a single trainer),
and the merged snapshot carries the figures for the server's dashboard. With the
count models only the merge writer folds, so the figures rest on the last partition's
owner's partitions, a sample of the users by partition; with bpr every trainer
evaluates its own. The evaluator keeps its own user histories, which start empty
whenever a trainer takes up folding (its item state was just replaced): a user's
events are evaluable from their second one after that. Drift adaptation and data
drift do not run in this mode.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from online_models import registry
from online_models.base import Batch, OnlineModel, UserHistory, learning_order
from online_models.deltas import (
    ItemDelta,
    encode_deltas,
    learns_from_item_state,
    unsupported,
)
from online_models.drift import stable_buckets
from online_models.ownership import write_heartbeat
from online_models.snapshot import SnapshotError, SnapshotStore
from stream.columns import decode_columns
from stream.events import dlq_payload
from stream.kafka import ConsumerOptions, RecordBatch, create_topics
from stream.kafka.base import Partition, partition_lag
from stream.kafka.confluent import ConfluentConsumer
from stream.kafka.transactional import TransactionalProducer, TransactionFailed
from stream.settings import KafkaSettings
from stream.signals import stop_on_signals
from trainer.checkpoint import lock_location
from trainer.evaluation import TrainerEvaluation
from trainer.flood import FloodSettings
from trainer.folding import UpdateFold
from trainer.merged import best_item_snapshot, gather_partitions
from trainer.metrics import PhaseClock, TrainerMetrics
from trainer.partition_state import PartitionState, PartitionStore, merge_histories
from trainer.settings import TrainerSettings

__all__ = ["ScaleOutResult", "ScaleOutTrainer", "updates_topic"]

log = logging.getLogger(__name__)


def updates_topic(topic: str) -> str:
    """The item-side update topic of a click topic."""
    return f"{topic}.updates"


@dataclass(frozen=True, slots=True)
class ScaleOutResult:
    """What a :meth:`ScaleOutTrainer.run` did."""

    events_learned: int
    events_replayed: int
    updates_published: int
    update_bytes: int
    transactions: int
    seconds: float


class ScaleOutTrainer:
    """One member of a scale-out trainer group (see the module docstring).

    Parameters
    ----------
    settings
        What to learn (``scale_out`` need not be set here; ``instance_id`` names
        this trainer, default the host name).
    kafka
        Where the stream comes from; the ``confluent`` client is required.
    metrics
        Metrics to update; fresh ones when ``None``.
    flood
        Flood guard settings (applied per partition).
    """

    def __init__(self, settings: TrainerSettings, kafka: KafkaSettings,
                 metrics: TrainerMetrics | None = None, flood: FloodSettings | None = None
                 ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.topic = kafka.topic
        self.updates = updates_topic(kafka.topic)
        self.instance = settings.instance_id or socket.gethostname()
        self.names = settings.model_names()
        self.metrics = metrics or TrainerMetrics(self.names, kafka.topic)
        self.flood_settings = flood or FloodSettings()
        self.root = Path(settings.snapshots)
        self.stop_event = threading.Event()
        if settings.follow:
            raise ValueError("--follow is for a single trainer: scale-out trainers learn "
                             "only models that share item-side deltas")
        if settings.source == "process":
            raise ValueError("--source process is for a single trainer: scale-out "
                             "trainers poll in their transactional loop")
        models = {n: registry.create(n, **settings.model_params.get(n, {}))
                  for n in self.names}
        if kafka.client != "confluent":
            raise ValueError(
                f"scale-out mode needs the confluent Kafka client (librdkafka transactions); "
                f"client={kafka.client!r} has no exactly-once path here")
        bad = unsupported(models)
        if bad:
            raise ValueError(
                f"model(s) {', '.join(bad)} cannot learn in scale-out mode: only models "
                "that share item-side deltas can (popularity, itemknn, sequence, bpr); "
                "train them with a single trainer")
        self.models: dict[str, OnlineModel] = models
        self.parts: dict[int, PartitionState] = {}
        #: the item state's fold of the update topic (its reader, offsets, coverage)
        self.fold = UpdateFold(self.models, self.updates, self.topic, self.metrics,
                               settings.fold_every_s)
        #: where the loop's time goes (``liverec_trainer_loop_seconds_total``)
        self.clock = PhaseClock(self.metrics.loop_seconds)
        self.items_store = SnapshotStore(self.root / "items" / self.instance,
                                         keep=settings.keep_snapshots)
        self.merged_store = SnapshotStore(self.root, keep=settings.keep_snapshots)
        self.consumer: ConfluentConsumer | None = None
        self.producer: TransactionalProducer | None = None
        self.events_learned = 0
        self.events_replayed = 0
        self.updates_published = 0
        self.transactions = 0
        #: update messages of the transaction committing in the background
        self._committing_messages = 0
        #: the open transaction (see :meth:`_transact`): when it began, the input
        #: offsets it commits and its update messages
        self._txn_open = False
        self._txn_since = 0.0
        self._txn_offsets: dict[Partition, int] = {}
        self._txn_messages = 0
        self._lock: IO[str] | None = None
        self._failed = False
        self._closing = False
        self._last_snapshot = 0.0
        self._last_merge = 0.0
        self._n_updates = 1
        #: partitions of the input topic (its last one's owner folds); recounted
        #: after every assignment
        self._n_input = 1
        self._recount = False
        self._update_lag: int | None = None
        #: this trainer folds the update topic (it owns the last partition, or merges at
        #: shutdown); ``_caught_up``: it has read the topic to its end since it began
        self._folding = False
        #: bytes per event of the last update message (sizes the next; a cautious
        #: first guess: a young stream's messages carry many new item ids)
        self._bytes_per_event = 1024.0
        self._caught_up = False
        #: a model's learning reads item state (BPR): every trainer folds, always
        self._fold_always = any(learns_from_item_state(m) for m in models.values())
        #: prequential evaluation of the own partitions' events, while folding and
        #: current (None otherwise; rebuilt whenever the item state is replaced)
        self.evaluation: TrainerEvaluation | None = None
        #: the last fold read all the update messages that had arrived, and some were
        #: folded since folding began (a backlog read in full batches is not current)
        self._fold_current = False
        TrainerEvaluation.clear_gauges(self.metrics, self.names)

    # ------------------------------------------------------------------ start-up

    def _claim(self) -> None:
        self._lock = lock_location(
            self.root, {"pid": os.getpid(), "host": socket.gethostname(),
                        "instance": self.instance, "mode": "scale-out"},
            shared=True, group=self.settings.group, topic=self.topic)

    def _rebase_items(self) -> None:
        """Adopt the most advanced item snapshot if it is ahead of this trainer's item
        state, keeping the state of the users this trainer owns."""
        snap = best_item_snapshot(self.root, self.updates,
                                  ahead_of=sum(self.fold.offsets.values()))
        if snap is None:
            log.info("no item snapshot ahead: the item state is folded from %s",
                     self.fold.offsets or "the update topic's start")
            return
        offsets = {int(p): int(o) for p, o in snap.offsets.get(self.updates, {}).items()}
        users = sorted(set().union(*(st.users for st in self.parts.values())))
        kept = {n: m.user_state(users)  # type: ignore[attr-defined]
                for n, m in self.models.items()}
        for name in self.names:
            if name in snap.models:
                self.models[name] = snap.models[name]
        registry.bind(self.models)
        for name, model in self.models.items():
            model.forget_users([u for u in model.users.ids if u])
            if users:
                model.load_user_state(kept[name])  # type: ignore[attr-defined]
        self.fold.offsets = offsets
        self.fold.coverage = {int(p): int(n)
                              for p, n in snap.extra_meta.get("coverage", {}).items()}
        log.info("item state from %s (update offsets %s)", snap.path, self.fold.offsets)

    def _open_kafka(self) -> None:
        k, s = self.kafka, self.settings
        probe = ConfluentConsumer(k, ConsumerOptions(client_id="liverec-probe"))
        try:
            n_parts = len(probe.partitions_for(self.topic)) or 1
        finally:
            probe.close()
        create_topics(k, {self.updates: n_parts})
        self._n_input = n_parts
        self.producer = TransactionalProducer(
            k, f"liverec-{s.group}-{self.instance}", client_id=f"liverec-trainer-{self.instance}",
            timeout_ms=s.transaction_timeout_ms)
        self.producer.init()
        upd = ConfluentConsumer(k, ConsumerOptions(
            client_id=f"liverec-updates-{self.instance}", isolation_level="read_committed",
            max_poll_records=1000, fetch_max_wait_ms=50))
        self._n_updates = len(upd.partitions_for(self.updates))
        self.fold.consumer = upd  # assigned while this trainer folds
        self.consumer = ConfluentConsumer(k, ConsumerOptions(
            group_id=s.group, client_id=f"liverec-trainer-{self.instance}",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(100, s.session_timeout_ms // 3),
            isolation_level="read_committed", max_poll_records=s.batch_size,
            fetch_max_wait_ms=min(s.max_wait_ms, 500)))
        self.consumer.subscribe([self.topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke)

    # ------------------------------------------------------------------ folding

    def _start_folding(self) -> None:
        """Become the one that folds the update topic (see the module docstring)."""
        upd = self.fold.consumer
        assert upd is not None
        self.fold.discard_pending()  # re-read below, from the item state's offsets
        self._rebase_items()
        self.evaluation = None  # its evaluator maps the replaced models' rows
        parts = sorted(upd.partitions_for(self.updates))
        self._n_updates = len(parts) or self._n_updates
        begin = upd.beginning_offsets([(self.updates, p) for p in parts])
        # Every partition from the item state's offset, in one assign.
        upd.assign_at({(self.updates, p): max(self.fold.offsets.get(p, 0),
                                              begin[(self.updates, p)]) for p in parts})
        self._folding, self._caught_up, self._fold_current = True, False, False
        log.info("folding the update topic from offsets %s", self.fold.offsets or "0")

    def _stop_folding(self) -> None:
        assert self.fold.consumer is not None
        self.fold.consumer.assign([])
        self.fold.discard_pending()
        self._folding = self._caught_up = False
        self.evaluation = None
        TrainerEvaluation.clear_gauges(self.metrics, self.names)
        self.metrics.update_lag.set(float("nan"))
        self.metrics.partition_events.clear()  # only a folding trainer knows them
        log.info("partition %d went elsewhere: no longer folding the update topic",
                 self.fold_partition)

    @property
    def fold_partition(self) -> int:
        """The input partition whose owner folds: the last one.

        Under the range assignor (both clients use it) the last member of the group
        gets the last partition and the fewest partitions, so the fold lands on a
        trainer that learns no more than the others: with ``2N - 1`` partitions for
        ``N`` trainers, it learns one partition and the others two each.
        """
        return self._n_input - 1

    def _sync_role(self) -> None:
        """Fold the update topic exactly while this trainer owns the last partition
        (always, when a model's learning reads item state)."""
        if self._recount and self.consumer is not None:
            # after a rebalance (outside its callback): partitions may have been added
            self._n_input = len(self.consumer.partitions_for(self.topic)) or self._n_input
            self._recount = False
        want = self.fold_partition in self.parts or self._fold_always
        if want and not self._folding:
            self._start_folding()
        elif not want and self._folding:
            self._stop_folding()

    # ------------------------------------------------------------------ rebalance

    def _fresh_state(self, p: int) -> PartitionState:
        s = self.settings
        return PartitionState.fresh(p, history_items=s.history_items,
                                    dedup_window_s=s.dedup_window_s,
                                    dedup_max_ids=s.dedup_max_ids, flood=self.flood_settings,
                                    history_max_users=s.history_max_users)

    def _on_assign(self, parts: set[Partition]) -> None:
        assert self.consumer is not None
        committed = self.consumer.committed(parts, timeout_s=max(
            30.0, 2 * self.settings.transaction_timeout_ms / 1000))
        for part in sorted(parts):
            p = part[1]
            st = self._fresh_state(p)
            snap = PartitionStore(self.root, p, self.settings.keep_snapshots).load(self.topic)
            if snap is not None:
                st.restore(snap, self.topic, self.models,
                           dedup_window_s=self.settings.dedup_window_s,
                           dedup_max_ids=self.settings.dedup_max_ids)
            c = committed.get(part)
            start = st.offset
            if start is None and c is not None:
                start = self.consumer.beginning_offsets([part])[part]
            if c is not None and start is not None and c > start:
                st.replay_until = c
            if start is not None:
                self.consumer.seek(part, start)
            self.parts[p] = st
            self.metrics.partition_owned.labels(topic=self.topic, partition=str(p)).set(1)
            self.metrics.partition(p)
            self._recount = True
            log.info("assigned partition %d: snapshot offset %s, committed %s%s", p,
                     st.offset, c, f" (re-learning [{start}, {c}) user-side only)"
                     if st.replay_until is not None else "")

    def _on_revoke(self, parts: set[Partition]) -> None:
        if not (self._closing or self._failed):
            self._settle()  # the snapshots below hold what its offsets commit
        for _, p in sorted(parts):
            st = self.parts.pop(p, None)
            if st is None:
                continue
            if not self._failed and st.offset != st.snapshot_offset:
                self._write_partition(st)
            for model in self.models.values():
                model.forget_users(sorted(st.users))
            self.metrics.partition_owned.labels(topic=self.topic, partition=str(p)).set(0)
            self.metrics.drop_partition(p)  # its new owner exports its lag now
            log.info("partition %d revoked at offset %s", p, st.offset)

    # ------------------------------------------------------------------ loop

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> ScaleOutResult:
        """Consume until stopped (signal, :meth:`stop` or a configured limit)."""
        s = self.settings
        t_start = time.monotonic()
        self._claim()
        restore_signals = stop_on_signals(self.stop_event, "snapshots")
        last_record = t_start
        try:
            self.metrics.update_lag.set(float("nan"))
            self._open_kafka()
            assert self.consumer is not None
            while not self.stop_event.is_set():
                with self.clock("poll"):
                    records = self.consumer.poll_batch(s.batch_size, s.max_wait_ms / 1000.0)
                now = time.monotonic()
                if len(records):
                    last_record = now
                    try:
                        with self.clock("learn"):
                            self.handle(records)
                    except BaseException:
                        # Part of a poll learned user-side and not committed: a snapshot
                        # now would hold effects Kafka does not; exit without one.
                        self._failed = True
                        raise
                elif not self.parts:
                    last_record = now  # idle time counts while partitions are owned
                if self._commit_due(now):
                    self._commit_open()
                self._sync_role()
                if self._folding:
                    with self.clock("fold"):
                        folded = self.fold.read(UpdateFold.READ_MAX)
                    # Fewer than asked for: all that had arrived is folded.
                    self._fold_current = ((self._fold_current or folded > 0)
                                          and folded < UpdateFold.READ_MAX)
                if time.time() - self._last_snapshot >= s.snapshot_every_s:
                    with self.clock("snapshot"):
                        self.checkpoint()
                if self._limit_reached(now - t_start, now - last_record):
                    break
        except TransactionFailed:
            self._failed = True
            log.exception("a transaction failed: exiting without a snapshot (the batch's "
                          "user state is not durable; a restart resumes from the last "
                          "committed transaction)")
            raise
        except BaseException:
            log.exception("the scale-out trainer failed%s", ": exiting without a snapshot"
                          if self._failed else "")
            raise
        finally:
            self._shutdown()
            restore_signals()
            log.info("stopped: %s", self.status_line())
            log.info("loop time by phase (wall/CPU s of the loop's thread): %s",
                     self.clock.line())
        return ScaleOutResult(self.events_learned, self.events_replayed,
                              self.updates_published,
                              self.producer.bytes_sent if self.producer else 0,
                              self.transactions, time.monotonic() - t_start)

    def status_line(self) -> str:
        ev = self.evaluation
        evaluated = ev.evaluator.n_evaluated if ev is not None else 0
        return (f"events learned={self.events_learned} replayed={self.events_replayed} "
                f"partitions={sorted(self.parts)} folding={self._folding} "
                f"evaluated={evaluated}" + (f" {ev.hr_line()}" if ev is not None else ""))

    def _shutdown(self) -> None:
        try:
            if not self._failed:
                try:
                    self._settle()
                except Exception:
                    log.exception("the last transaction did not commit: exiting without "
                                  "a snapshot")
            if not self._failed and self.consumer is not None:
                # Every trainer that owns partitions merges at shutdown: of trainers
                # stopping together, the last merge written has seen every
                # partition's final snapshot.
                if self.parts and not self._folding:
                    log.info("shutdown: merging this trainer's partitions -- adopting the "
                             "newest item snapshot and folding the update topic to its end "
                             "(at most 60 s)")
                    self._start_folding()
                if self._folding:
                    self._caught_up = self.fold.drain(60.0) or self._caught_up
                self.checkpoint(force=True)
        finally:
            self._closing = True
            for client in (self.consumer, self.fold.consumer):
                if client is not None:
                    client.close()  # revoke: partitions already snapshotted
            if self.producer is not None:
                self.producer.close()
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def _limit_reached(self, elapsed: float, idle: float) -> bool:
        s = self.settings
        if s.max_events is not None and self.events_learned >= s.max_events:
            return True
        if s.max_seconds is not None and elapsed >= s.max_seconds:
            return True
        return s.idle_exit_s is not None and idle >= s.idle_exit_s

    # ------------------------------------------------------------------ one poll

    def handle(self, records: RecordBatch) -> int:
        """Learn one poll; publish its updates, rejects and offsets in one transaction."""
        assert self.producer is not None and self.consumer is not None
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
            st = self.parts.get(p)
            if st is None:
                continue  # revoked inside this poll: its next owner reads it
            p_offs = offs[parts_of == p]
            nxt = int(p_offs.max()) + 1
            mine = ev_part == p
            cut = st.replay_until
            if cut is not None:
                replay = mine & (ev_off < cut)
                if replay.any():
                    self.events_replayed += self._learn(st, cols.take(replay),
                                                        evaluate=False)[0]
                mine = mine & (ev_off >= cut)
            for chunk in self._update_chunks(mine):
                n, deltas = self._learn(st, cols.take(chunk))
                learned += n
                if n:
                    msg = encode_deltas(deltas, {"partition": p, "events": n,
                                                 "instance": self.instance})
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
                    self._transact(messages, dead, commit,
                                   caught_up=len(records) < self.settings.batch_size)
            except BaseException:
                # The user side learned what Kafka did not take: never snapshot it.
                self._failed = True
                raise
        self.events_learned += learned
        m.events_learned.labels(topic=topic).inc(learned)
        return learned

    #: an update message aims at this size: a quarter of the broker's and producer's
    #: default limit (~1 MB; a larger message fails the whole transaction)
    UPDATE_TARGET_BYTES = 256 * 1024
    #: fewest events of a message whose size sizes the next chunks
    UPDATE_SIZING_EVENTS = 256

    def _update_chunks(self, mine: np.ndarray) -> list[np.ndarray]:
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

    def _evaluating(self) -> TrainerEvaluation | None:
        """The evaluation, while this trainer holds the whole, current item state: it
        folds, and it has read the update topic to its end once or its last fold read
        all that had arrived (not while it folds a backlog)."""
        if not self._folding or not (self._caught_up or self._fold_current) or self._closing:
            return None
        if not any(self.fold.coverage.values()):
            # Nothing folded yet (a read waits for ``fold_every_s``; the first update
            # messages wait for ``commit_every_s``): an empty item state would score
            # every event a miss.
            return None
        if self.evaluation is None:
            self.evaluation = TrainerEvaluation(
                self.models, UserHistory(max_items=self.settings.history_items,
                                         max_users=self.settings.history_max_users),
                self.settings, self.metrics)
            log.info("evaluating this trainer's partitions prequentially")
        return self.evaluation

    def _learn(self, st: PartitionState, cols: Any, evaluate: bool = True
               ) -> tuple[int, dict[str, ItemDelta]]:
        """Learn a partition's events user-side (``evaluate``: scoring its sample
        first, see the module docstring); returns their count and item deltas."""
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
        ev = self._evaluating() if evaluate else None
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
            if self.evaluation is not None:
                self.evaluation.evaluator.forget_users(gone)
            self.metrics.users_forgotten.inc(len(gone))
        st.events_total += n
        wm = float(batch.timestamps.max())
        st.watermark = wm if st.watermark is None else max(st.watermark, wm)
        return n, deltas

    def _transact(self, messages: list[tuple[int, bytes]], dead: list[Any],
                  commit: Mapping[Partition, int], caught_up: bool = False) -> None:
        """Publish a poll's updates and rejects in the open transaction (beginning one
        if none is open) with its offsets; once the transaction has been open
        ``commit_every_s``, or when the poll was not full (``caught_up``: the trainer
        has read what there was, so nothing gains from waiting), commit it in the
        background: the next poll is read and learned while the broker commits (the
        next transaction begins after this one is settled, see :meth:`_settle`)."""
        assert self.producer is not None and self.consumer is not None
        prod = self.producer
        n_upd = max(1, self._n_updates)
        if not self._txn_open:
            self._settle()
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
            self._abort()
            raise
        self._txn_offsets.update(commit)
        self._txn_messages += len(messages)
        if caught_up or self._commit_due(time.monotonic()):
            self._commit_open()

    def _commit_due(self, now: float) -> bool:
        """A transaction is open and has been for ``commit_every_s``."""
        return self._txn_open and now - self._txn_since >= self.settings.commit_every_s

    def _abort(self) -> None:
        """Abort the open transaction (its polls were learned user-side: the caller
        exits without a snapshot)."""
        self._failed = True
        self._txn_open = False
        self.metrics.transactions.labels(outcome="aborted").inc()
        assert self.producer is not None
        self.producer.abort()

    def _commit_open(self) -> None:
        """Start committing the open transaction (its updates with its polls' input
        offsets) in the background."""
        assert self.producer is not None and self.consumer is not None
        try:
            self.producer.commit_in_background(self._txn_offsets, self.consumer)
        except BaseException:
            self._abort()
            raise
        self._committing_messages = self._txn_messages
        self._txn_open, self._txn_offsets, self._txn_messages = False, {}, 0

    def _settle(self) -> None:
        """Commit the open transaction, if any, and wait for the one committing in the
        background. Everything that relies on the learned offsets being committed waits
        here first: the next transaction, partition snapshots (a checkpoint, a
        revocation) and shutdown."""
        if self._txn_open:
            self._commit_open()
        prod = self.producer
        if prod is None or not prod.committing:
            return
        try:
            prod.wait_committed()
        except BaseException:
            # The user side learned what Kafka did not take: never snapshot it.
            self._abort()
            raise
        self.transactions += 1
        self.updates_published += self._committing_messages
        self.metrics.transactions.labels(outcome="committed").inc()
        self.metrics.update_messages.labels(direction="out").inc(self._committing_messages)

    # ------------------------------------------------------------------ snapshots

    def _write_partition(self, st: PartitionState) -> None:
        try:
            PartitionStore(self.root, st.partition, self.settings.keep_snapshots).write(
                st, self.topic, self.models, {"instance": self.instance})
        except Exception:
            self.metrics.snapshot_errors.inc()
            log.exception("partition %d snapshot failed", st.partition)

    def _heartbeat(self, p: int) -> None:
        """``partitions/<p>/OWNER``: who owns ``p`` and since when it last said so."""
        try:
            write_heartbeat(self.root, p, self.instance)
        except OSError:
            log.warning("partition %d heartbeat failed", p, exc_info=True)

    def _export_lag(self) -> None:
        """Records not yet read of each owned partition (end offset - position), as
        the single trainer exports them; a position not known yet is left out."""
        if self.consumer is None or not self.parts:
            return
        try:
            self.metrics.export_lag(
                partition_lag(self.consumer, [(self.topic, p) for p in self.parts]))
        except Exception:
            log.debug("consumer lag not available", exc_info=True)

    def checkpoint(self, force: bool = False) -> None:
        """Partition snapshots (those that moved) every ``snapshot_every_s``; while
        folding, the update lag every ``merge_every_s`` and, once the update topic was
        read to its end, the item snapshot and the merge."""
        self._last_snapshot = time.time()
        self._settle()  # partition snapshots hold only committed input
        m = self.metrics
        m.users_tracked.set(sum(len(st.history) for st in self.parts.values()))
        if self.evaluation is not None:
            try:
                self.evaluation.update_gauges()
            except Exception:
                m.loop_errors.labels(stage="metrics").inc()
                log.exception("updating the accuracy gauges failed")
        for st in self.parts.values():
            if st.offset != st.snapshot_offset:
                self._write_partition(st)
            self._heartbeat(st.partition)
        self._export_lag()
        if not self._folding or (
                not force and time.time() - self._last_merge < self.settings.merge_every_s):
            return
        self._last_merge = time.time()
        self.fold.fold()  # the item snapshot below reflects all that was read
        try:
            self._update_lag = self.fold.lag()
            m.update_lag.set(self._update_lag)
        except Exception:
            log.debug("update lag not available", exc_info=True)
        if not self._caught_up and self._update_lag != 0:
            # A merge now could hold older item state than the one being served.
            log.info("item snapshot and merge wait: %s update records to fold first",
                     self._update_lag)
            return
        self._caught_up = True
        try:
            self.items_store.write(
                self.models, history=merge_histories([], self.settings.history_items),
                offsets={self.updates: dict(self.fold.offsets)},
                events_total=0, watermark=None,
                extra_meta={"instance": self.instance, "kind": "items",
                            "coverage": {str(p): n for p, n in self.fold.coverage.items()}})
        except Exception:
            m.snapshot_errors.inc()
            log.exception("item snapshot failed")
        if self.fold_partition in self.parts or (force and self.parts):
            try:
                self.write_merged()
            except Exception:
                m.snapshot_errors.inc()
                log.exception("merged snapshot failed")

    def _merged_metrics(self) -> dict[str, Any] | None:
        """This trainer's evaluation figures; a trainer that evaluates nothing (it does
        not fold) carries the latest merged snapshot's forward, so a merge at its
        shutdown does not blank the dashboard."""
        if self.evaluation is not None:
            return self.evaluation.summary()
        try:
            previous = self.merged_store.read_manifest().get("metrics")
        except (SnapshotError, OSError, ValueError):
            return None
        return previous if isinstance(previous, dict) else None

    def write_merged(self) -> int:
        """Write the servable merged model into ``<snapshots>/``; returns its version."""
        t0 = time.perf_counter()
        clones = registry.bind({n: registry.from_state(m.get_state())
                                for n, m in self.models.items()})
        keep = self.settings.keep_snapshots
        got = gather_partitions(
            self._n_input, self.parts, lambda p: PartitionStore(self.root, p, keep), self.topic,
            clones, self._fresh_state, self.instance)
        info = self.merged_store.write(
            clones, history=merge_histories(got.histories, self.settings.history_items),
            offsets={self.topic: got.offsets}, events_total=got.events_total,
            watermark=got.watermark, metrics=self._merged_metrics(),
            extra_meta={"scale_out": {
                "group": self.settings.group, "writer": self.instance,
                "partitions": got.partitions,
                "item_coverage": {str(p): n for p, n in sorted(self.fold.coverage.items())},
                "writer_update_lag_records": self._update_lag,
                "writer_partitions": sorted(self.parts),
                "updates": {self.updates: {str(p): o for p, o in self.fold.offsets.items()}},
            }})
        log.info("merged snapshot %d: events_total=%d over %d partitions in %.2f s",
                 info.version, got.events_total, len(got.partitions),
                 time.perf_counter() - t0)
        return info.version


def eval_users(users: Sequence[str] | np.ndarray, share: float) -> np.ndarray:
    """Mask of the events whose user is in the evaluated ``share`` of users (by a CRC-32
    of the id: the same users everywhere, every time).

    >>> eval_users(["u1", "u2", "u3", "u1"], 1.0).tolist()
    [True, True, True, True]
    >>> m = eval_users([f"u{k}" for k in range(10_000)], 0.1)
    >>> bool(0.09 < m.mean() < 0.11)
    True
    """
    if share >= 1.0:
        return np.ones(len(users), bool)
    return stable_buckets(users, 1 << 32) < int(share * (1 << 32))
