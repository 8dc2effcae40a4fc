"""Scale-out trainer: N processes in one consumer group share one model through Kafka.

``liverec train --scale-out`` runs :class:`ScaleOutTrainer`. Kafka is the
parameter server (see DEVELOPING.md, "Scale-out", for the picture):

* **User side, by partition** (:mod:`trainer.user_side`). The click topic is keyed
  by ``user_id``, so a user's events all come from one partition. Each trainer keeps
  its partitions' user state (:class:`~trainer.partition_state.PartitionState`) and
  snapshots it per partition; a new owner of a partition re-learns user-side only
  what the partition's last snapshot lacks.
* **Item side, through the update topic.** Learning a batch is ``learn_local``
  (user side) and yields an item-side delta per model, published to
  ``<topic>.updates`` (:mod:`trainer.poll_learning`). Only the **merge writer** (the
  owner of the topic's last partition) folds the update topic into its models' item
  state, snapshots it, writes the merged, servable model (every owner of partitions
  also merges at shutdown) and evaluates its own partitions' events
  (:mod:`trainer.item_side`, with :mod:`trainer.folding` and :mod:`trainer.merged`).
* **A lost directory is not a fresh start** (:mod:`trainer.lost_snapshot`). An
  assigned partition that the group has committed but whose directory holds no valid
  state stops the trainer before it learns, commits or writes anything
  (``on_missing_snapshot`` "refuse", the default; "resume" re-learns what the topics
  still hold, with a warning).
* **Exactly once** (:mod:`trainer.transactions`). One Kafka transaction holds the
  update messages, the dead-lettered rejects and the input offsets of the polls
  learned while it was open, so an input record's effect on the item state is in the
  update topic iff its offset is committed.

Only models implementing :class:`~online_models.deltas.SharesItemState`
(popularity, itemknn, sequence, bpr) can learn here; others are refused at start.
With bpr, whose steps read item factors, every trainer folds the update topic.

:class:`ScaleOutTrainer` opens the Kafka clients, runs the loop (poll, learn, commit,
fold, checkpoint), answers the group's rebalances and shuts down; the modules above
do each side's work.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from online_models import registry
from online_models.base import OnlineModel
from online_models.deltas import missing_share_methods, unsupported
from stream.dlq_guard import ensure_dead_letter_topic
from stream.kafka import ConsumerOptions, RecordBatch, create_topics
from stream.kafka.base import Partition
from stream.kafka.confluent import ConfluentConsumer
from stream.kafka.transactional import TransactionalProducer, TransactionFailed
from stream.settings import KafkaSettings
from stream.signals import stop_on_signals
from trainer.checkpoint import lock_location
from trainer.evaluation import TrainerEvaluation, eval_users
from trainer.flood import FloodSettings
from trainer.folding import UpdateFold
from trainer.item_side import ItemSide
from trainer.lost_snapshot import MissingSnapshotError, check_partitions
from trainer.metrics import PhaseClock, TrainerMetrics
from trainer.partition_state import PartitionState
from trainer.poll_learning import PollLearner
from trainer.rebalance_gap import RebalanceGap
from trainer.settings import TrainerSettings
from trainer.transactions import UpdateTransactions
from trainer.user_side import UserSide

__all__ = ["ScaleOutResult", "ScaleOutTrainer", "eval_users", "updates_topic"]

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
        # Not measured here (its transactions fail and it exits in an outage): NaN, not
        # a 0 that would read "Kafka answers" and keep LiverecTrainerKafkaUnreachable off.
        self.metrics.kafka_contact_age.set(math.nan)
        self.flood_settings = flood or FloodSettings()
        self.root = Path(settings.snapshots)
        self.stop_event = threading.Event()
        if settings.follow:
            raise ValueError("--follow is for a single trainer: scale-out trainers learn "
                             "only models that share item-side deltas")
        if settings.until_events_total is not None:
            raise ValueError("--until-events-total is for a single trainer: a scale-out "
                             "trainer holds only its partitions' events; stop it with "
                             "--max-events, --max-seconds or --idle-exit-s")
        if settings.source == "process":
            raise ValueError("--source process is for a single trainer: scale-out "
                             "trainers poll in their transactional loop")
        models = {n: registry.create(n, **settings.model_params.get(n, {}))
                  for n in self.names}
        if kafka.client != "confluent":
            raise ValueError(
                f"scale-out mode needs the confluent Kafka client (librdkafka transactions); "
                f"client={kafka.client!r} has no exactly-once path here")
        bad = [f"{n} (lacks {', '.join(missing_share_methods(models[n]))})"
               for n in unsupported(models)]
        if bad:
            raise ValueError(
                f"model(s) {'; '.join(bad)} cannot learn in scale-out mode: only models "
                "that share item-side deltas can (online_models.deltas.SharesItemState; "
                "built-in: popularity, itemknn, sequence, bpr); train them with a single "
                "trainer")
        self.models: dict[str, OnlineModel] = models
        self.parts: dict[int, PartitionState] = {}
        #: the item state's fold of the update topic (its reader, offsets, coverage)
        self.fold = UpdateFold(self.models, self.updates, self.topic, self.metrics,
                               settings.fold_every_s, group=settings.group)
        #: where the loop's time goes (``liverec_trainer_loop_seconds_total``)
        self.clock = PhaseClock(self.metrics.loop_seconds)
        #: the owned partitions' take-over, snapshots and release
        self.user_side = UserSide(settings, self.models, self.metrics, self.root, self.topic,
                                  self.instance, self.flood_settings)
        #: folding, evaluation, the item and merged snapshots
        self.item_side = ItemSide(settings, self.models, self.fold, self.metrics, self.root,
                                  self.instance, self.user_side.fresh_state)
        #: the open transaction and the one committing in the background
        self.txn = UpdateTransactions(settings, kafka, self.topic, self.updates,
                                      self.metrics, on_abort=self._fail)
        #: learns a poll and publishes it through ``txn``
        self.learner = PollLearner(settings, kafka, self.models, self.metrics, self.clock,
                                   self.instance, self.item_side, self.txn,
                                   on_fail=self._fail)
        self.consumer: ConfluentConsumer | None = None
        self._lock: IO[str] | None = None
        self._failed = False
        #: why this trainer stops: an assigned partition's state is lost (see
        #: :func:`~trainer.lost_snapshot.check_partitions`); nothing is written then
        self.refusal: str | None = None
        self._closing = False
        self._last_snapshot = 0.0
        #: the input topic's partitions are recounted after an assignment
        self._recount = False
        #: a rebalance revoked this trainer's partitions; its assignment is awaited
        #: (bounded by the group consumer's max.poll.interval.ms, its options' default)
        self._gap = RebalanceGap(ConsumerOptions().max_poll_interval_ms / 1000)
        #: (monotonic time, events learned) at the last status line
        self._status_mark = (time.monotonic(), 0)
        TrainerEvaluation.clear_gauges(self.metrics, self.names)

    @property
    def evaluation(self) -> TrainerEvaluation | None:
        """Prequential evaluation of the own partitions' events, while folding and
        current (see :class:`~trainer.item_side.ItemSide`)."""
        return self.item_side.evaluation

    @property
    def events_learned(self) -> int:
        """Events learned."""
        return self.learner.events_learned

    @property
    def events_replayed(self) -> int:
        """Events re-learned user-side only after a takeover."""
        return self.learner.events_replayed

    @property
    def transactions(self) -> int:
        """Transactions committed."""
        return self.txn.transactions

    @property
    def updates_published(self) -> int:
        """Update messages of committed transactions."""
        return self.txn.updates_published

    def _fail(self) -> None:
        """A transaction failed: this trainer exits without a snapshot."""
        self._failed = True

    # ------------------------------------------------------------------ start-up

    def _claim(self) -> None:
        self._lock = lock_location(
            self.root, {"pid": os.getpid(), "host": socket.gethostname(),
                        "instance": self.instance, "mode": "scale-out"},
            shared=True, group=self.settings.group, topic=self.topic)

    def _open_kafka(self) -> None:
        k, s = self.kafka, self.settings
        probe = ConfluentConsumer(k, ConsumerOptions(client_id="liverec-probe"))
        try:
            n_parts = len(probe.partitions_for(self.topic)) or 1
        finally:
            probe.close()
        create_topics(k, {self.updates: n_parts})
        ensure_dead_letter_topic(k, consequence=(
            "the first reject will fail its transaction and stop this trainer (rejects "
            "are sent inside the transaction)"))
        self.item_side.n_input = n_parts
        self.txn.producer = TransactionalProducer(
            k, f"liverec-{s.group}-{self.instance}", client_id=f"liverec-trainer-{self.instance}",
            timeout_ms=s.transaction_timeout_ms)
        self.txn.producer.init()
        upd = ConfluentConsumer(k, ConsumerOptions(
            client_id=f"liverec-updates-{self.instance}", isolation_level="read_committed",
            max_poll_records=1000, fetch_max_wait_ms=50))
        self.item_side.n_updates = len(upd.partitions_for(self.updates))
        self.fold.consumer = upd  # assigned while this trainer folds
        self.consumer = self.txn.consumer = ConfluentConsumer(k, ConsumerOptions(
            group_id=s.group, client_id=f"liverec-trainer-{self.instance}",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(100, s.session_timeout_ms // 3),
            isolation_level="read_committed", max_poll_records=s.batch_size,
            fetch_max_wait_ms=min(s.max_wait_ms, 500)))
        self.consumer.subscribe([self.topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke)

    def _sync_role(self) -> None:
        """Fold the update topic exactly while this trainer owns the last partition
        (always, when a model's learning reads item state), once a rebalance's
        assignment has arrived: a trainer handed the last partition straight back keeps
        folding, and its evaluation, through the rebalance."""
        if not self.parts and self.consumer is not None \
                and self._gap.open(self.consumer.assignments):
            return
        if self._recount and self.consumer is not None:
            # after a rebalance (outside its callback): partitions may have been added
            self.item_side.n_input = (len(self.consumer.partitions_for(self.topic))
                                      or self.item_side.n_input)
            self._recount = False
        self.item_side.sync_role(self.parts)

    # ------------------------------------------------------------------ rebalance

    def _fresh_state(self, p: int) -> PartitionState:
        return self.user_side.fresh_state(p)

    def _on_assign(self, parts: set[Partition]) -> None:
        assert self.consumer is not None
        committed = self.consumer.committed(parts, timeout_s=max(
            30.0, 2 * self.settings.transaction_timeout_ms / 1000))
        restored = {part: self.user_side.restore(part[1]) for part in sorted(parts)}
        lost = {p: c for (t, p), c in committed.items()
                if c is not None and restored.get((t, p)) is None}
        self.refusal = self.refusal or check_partitions(
            lost, root=self.root, group=self.settings.group, topic=self.topic,
            updates=self.updates, policy=self.settings.on_missing_snapshot)
        if self.refusal is not None:
            self.stop_event.set()  # none taken over: nothing of them learned or written
            return
        for part in sorted(parts):
            try:
                self.user_side.take_over(part, committed.get(part), self.consumer,
                                         self.parts, restored[part])
            except OSError as exc:  # its first state could not be written
                self.refusal = (
                    f"cannot write the first state of partition {part[1]} under "
                    f"{self.root / 'partitions'} ({exc}): a partition is taken over only "
                    "with its state on disk, or a commit would later look like a lost "
                    "snapshot. Fix the location (space, permissions) and start again")
                self.stop_event.set()
                return
            self._recount = True

    def _on_revoke(self, parts: set[Partition]) -> None:
        if not (self._closing or self._failed):
            self.txn.settle()  # the snapshots below hold what its offsets commit
            if self.consumer is not None:
                self._gap.revoked(self.consumer.assignments)
        for _, p in sorted(parts):
            st = self.parts.pop(p, None)
            if st is not None:
                self.user_side.release(st, snapshot=not self._failed)

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
        self._status_mark = (t_start, self.events_learned)
        try:
            self.metrics.update_lag.set(float("nan"))
            self._open_kafka()
            assert self.consumer is not None
            while not self.stop_event.is_set():
                with self.clock("poll"):
                    records = self.consumer.poll_batch(s.batch_size, s.max_wait_ms / 1000.0)
                if self.refusal is not None:
                    break
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
                if self.txn.due(now):
                    self.txn.commit_open()
                self._sync_role()
                if self.item_side.folding:
                    with self.clock("fold"):
                        self.item_side.read()
                if time.time() - self._last_snapshot >= s.snapshot_every_s:
                    with self.clock("snapshot"):
                        self.checkpoint()
                if now - self._status_mark[0] >= s.status_every_s:
                    self._status(now)
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
        if self.refusal is not None:
            raise MissingSnapshotError(self.refusal)
        return ScaleOutResult(self.events_learned, self.events_replayed,
                              self.updates_published,
                              self.txn.producer.bytes_sent if self.txn.producer else 0,
                              self.transactions, time.monotonic() - t_start)

    def _status(self, now: float) -> None:
        """Every ``status_every_s``: the learning rate since the last one
        (``liverec_trainer_events_per_second``) and a status line."""
        then, learned = self._status_mark
        rate = (self.events_learned - learned) / (now - then) if now > then else 0.0
        self._status_mark = (now, self.events_learned)
        self.metrics.events_per_second.set(rate)
        log.info("%s rate=%.0f/s", self.status_line(), rate)

    def status_line(self) -> str:
        ev = self.evaluation
        evaluated = ev.evaluator.n_evaluated if ev is not None else 0
        return (f"events learned={self.events_learned} replayed={self.events_replayed} "
                f"partitions={sorted(self.parts)} folding={self.item_side.folding} "
                f"evaluated={evaluated}" + (f" {ev.hr_line()}" if ev is not None else ""))

    def _shutdown(self) -> None:
        try:
            if not self._failed:
                try:
                    self.txn.settle()
                except Exception:
                    log.exception("the last transaction did not commit: exiting without "
                                  "a snapshot")
            if not self._failed and self.refusal is None and self.consumer is not None:
                # Every trainer that owns partitions merges at shutdown: of trainers
                # stopping together, the last merge written has seen every
                # partition's final snapshot.
                if self.parts and not self.item_side.folding:
                    log.info("shutdown: merging this trainer's partitions -- adopting the "
                             "newest item snapshot and folding the update topic to its end "
                             "(at most 60 s)")
                    self.item_side.start_folding(self.parts)
                elif self.item_side.folding:
                    log.info("shutdown: folding the update topic to its end (at most 60 s), "
                             "then the last item snapshot and merge")
                if self.item_side.folding:
                    self.item_side.drain(60.0)
                self.checkpoint(force=True)
        finally:
            self._closing = True
            for client in (self.consumer, self.fold.consumer):
                if client is not None:
                    client.close()  # revoke: partitions already snapshotted
            if self.txn.producer is not None:
                self.txn.producer.close()
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
        """Learn one poll; publish its updates, rejects and offsets in one transaction
        (:meth:`~trainer.poll_learning.PollLearner.handle`)."""
        return self.learner.handle(records, self.parts, self._closing)

    # ------------------------------------------------------------------ snapshots

    def _export_lag(self) -> None:
        """The owned partitions' consumer lag (:meth:`~trainer.user_side.UserSide.export_lag`)."""
        self.user_side.export_lag(self.consumer, self.parts)

    def checkpoint(self, force: bool = False) -> None:
        """Partition snapshots (those that moved) every ``snapshot_every_s``; while
        folding, the update lag every ``merge_every_s`` and, once the update topic was
        read to its end (or past the served merge's offsets), the item snapshot and the
        merge
        (:meth:`~trainer.item_side.ItemSide.checkpoint`)."""
        self._last_snapshot = time.time()
        self.txn.settle()  # partition snapshots hold only committed input
        m = self.metrics
        m.users_tracked.set(sum(len(st.history) for st in self.parts.values()))
        if self.evaluation is not None:
            try:
                self.evaluation.update_gauges()
            except Exception:
                m.loop_errors.labels(stage="metrics").inc()
                log.exception("updating the accuracy gauges failed")
        self.user_side.snapshot(self.parts)
        self._export_lag()
        self.item_side.checkpoint(self.parts, force)

    def write_merged(self) -> int:
        """Write the servable merged model into ``<snapshots>/``; returns its version."""
        return self.item_side.write_merged(self.parts)
