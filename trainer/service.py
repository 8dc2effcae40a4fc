"""The trainer service loop: poll, de-duplicate, evaluate a sample, learn, snapshot, commit.

:class:`Trainer` is one consumer-group member of the click topic. A
:class:`~trainer.source.BatchSource` thread polls and decodes mini-batches into
columns ahead of learning. Per batch the learner

1. drops events whose ``event_id`` it already learned (:class:`~trainer.dedup.DedupWindow`,
   bounded, event-time windowed, part of every snapshot);
2. evaluates a seeded sample of the evaluable events prequentially for every model
   (``eval_sample``: a fraction, capped at ``eval_budget_per_s`` evaluated events per
   second) and feeds each model's sampled hit stream to its concept-drift monitor;
3. lets every model learn the whole batch (a model that raises is logged and counted;
   the batch still goes to the others).

Every ``snapshot_every_s`` seconds it copies its state and a background thread writes
the snapshot (:mod:`trainer.checkpoint`); once durable, the snapshot's offsets are
committed. Before partitions are revoked and on shutdown it checkpoints synchronously.
On start it restores the newest valid snapshot and every partition of its first
assignment that the snapshot knows resumes at the snapshot's offsets, so after any crash
the models equal a crash-free run's. A partition the group gives it only later follows
the group's commit (another member learned it meanwhile), as one revoked and given back
later does.

This module holds the loop, the per-batch work and the snapshot cadence; the rest of
:class:`Trainer` is in its parts: :mod:`trainer.persistence` (restore, capture,
checkpoint, commit), :mod:`trainer.membership` (the source, its consumer, the
rebalance hooks) and :mod:`trainer.status` (gauges, the status line).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from online_models import registry
from online_models.base import Batch, OnlineModel, UserHistory, learning_order
from online_models.drift import ConceptDriftMonitor, DataDriftTracker
from online_models.evaluation import PrequentialEvaluator
from online_models.snapshot import SnapshotStore
from stream.consumer import MiniBatchConsumer, Partition
from stream.dlq_guard import ensure_dead_letter_topic_for_source
from stream.settings import KafkaSettings
from stream.signals import stop_on_signals
from trainer.adaptation import DriftAdaptation
from trainer.checkpoint import Checkpointer
from trainer.content import TrainerContent
from trainer.dedup import DedupWindow
from trainer.embedding_watch import EmbeddingDriftWatch
from trainer.evaluation import TrainerEvaluation
from trainer.flood import FloodGuard, FloodSettings
from trainer.follow import Followed, FollowedModel
from trainer.follow_swap import FollowedInUse
from trainer.lost_snapshot import LostSnapshotGuard, MissingSnapshotError
from trainer.membership import GroupMembership
from trainer.metrics import TrainerMetrics
from trainer.persistence import TrainerPersistence
from trainer.settings import TrainerSettings
from trainer.source import BatchSource, PolledBatch
from trainer.status import TrainerStatus

__all__ = ["IDLE_COPY_FRACTION", "Trainer", "TrainerResult"]

log = logging.getLogger(__name__)

#: the share of the learner's idle time (waiting for records, over the last second)
#: that snapshot copies may take beyond ``snapshot_max_share``: a trainer that keeps
#: up snapshots every ``snapshot_every_s`` with a large state, one with a backlog
#: keeps its time for learning
IDLE_COPY_FRACTION = 0.5


@dataclass(frozen=True, slots=True)
class TrainerResult:
    """What a :meth:`Trainer.run` did."""

    events_learned: int
    events_total: int
    duplicates: int
    rejected: int
    snapshot_version: int | None
    #: the whole run: joining the group, learning, and the shutdown
    seconds: float
    #: from the start until the first batch came (the group join; None: none came)
    first_batch_s: float | None = None
    #: the shutdown: the last snapshot, committing its offsets, leaving the group
    shutdown_s: float = 0.0
    #: events the flood guard kept out of learning, by reason
    capped: Mapping[str, int] = field(default_factory=dict)
    #: time spent handling batches (evaluating and learning them): ``learning_s``
    #: without the waits for records, so a run that idled is not read as slow
    busy_s: float = 0.0

    @property
    def learning_s(self) -> float:
        """From the first batch to the start of the shutdown (idle waits included):
        the run without its fixed costs, join and shutdown, which a long-running
        trainer pays once."""
        if self.first_batch_s is None:
            return 0.0
        return max(0.0, self.seconds - self.first_batch_s - self.shutdown_s)


class Trainer(TrainerPersistence, GroupMembership, TrainerStatus):
    """The trainer service (see the module docstring).

    Parameters
    ----------
    settings
        What to learn and how (:class:`~trainer.settings.TrainerSettings`).
    kafka
        Where the stream comes from (:class:`~stream.settings.KafkaSettings`).
    metrics
        Metrics to update; fresh ones (own registry) when ``None``.
    consumer_factory
        Builds the consumer (tests may pass a differently configured one); it
        receives the ``on_assign`` / ``on_revoke`` hooks as keyword arguments.
    flood
        Flood guard settings (:class:`~trainer.flood.FloodSettings`; default: from
        ``LIVEREC_FLOOD_*``).
    """

    def __init__(
        self,
        settings: TrainerSettings,
        kafka: KafkaSettings,
        metrics: TrainerMetrics | None = None,
        consumer_factory: Callable[..., MiniBatchConsumer] | None = None,
        flood: FloodSettings | None = None,
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.flood = FloodGuard(flood or FloodSettings())
        self.names = settings.model_names()
        self.metrics = metrics or TrainerMetrics(self.names, kafka.topic)
        self.checkpointer = Checkpointer(
            SnapshotStore(settings.snapshots, keep=settings.keep_snapshots), self.metrics
        )
        self.stop_event = threading.Event()
        self._consumer_factory = consumer_factory

        self.models: dict[str, OnlineModel] = {}
        self.history = UserHistory(max_items=settings.history_items,
                                   max_users=settings.history_max_users)
        self.offsets: dict[Partition, int] = {}
        self.events_total = 0
        self.watermark: float | None = None
        self.dedup = DedupWindow(settings.dedup_window_s, settings.dedup_max_ids)
        self.data_drift = DataDriftTracker(settings.drift_buckets, settings.drift_window)
        self.monitors = {n: ConceptDriftMonitor() for n in self.names}
        self.adaptation = DriftAdaptation(
            settings.drift_half_life_factor, settings.drift_lr_factor,
            settings.drift_adapt_events,
        )
        self.embedding_watch = EmbeddingDriftWatch(settings.embedding_drift_every_s,
                                                   self.metrics)
        self.snapshot_version: int | None = None
        self._snap_offsets: dict[Partition, int] = {}
        self._snap_events_total = 0
        self._rate = 0.0
        #: source-thread counters already added to the metrics
        self._seen: dict[str, int] = {}
        self.source: BatchSource | None = None
        self.events_learned = 0
        self.duplicates = 0
        self.rejected = 0
        #: events the flood guard kept out of learning, by reason
        self.capped: dict[str, int] = {}
        self._revoke_request: threading.Event = threading.Event()
        self._revoke_done: threading.Event = threading.Event()
        self._revoke_offsets: dict[Partition, int] | None = None
        self._revoke_parts: set[Partition] = set()
        #: offsets of the partitions the last revoke took away (see _serve_revoke)
        self._just_revoked: dict[Partition, int] = {}
        #: no assignment yet since the start (see _on_assign)
        self._first_assignment = True
        if settings.source == "process" and kafka.client != "confluent":
            raise ValueError("--source process reads with librdkafka: it needs client "
                             f"confluent, not {kafka.client}")
        #: who polls and decodes ("auto" resolved: a reader process on librdkafka)
        self.source_kind: Literal["thread", "process"] = (
            settings.source if settings.source != "auto"
            else "process" if kafka.client == "confluent" else "thread")
        blending = [n for n in settings.follow
                    if callable(getattr(registry.model_class(n), "bind", None))]
        if blending:
            raise ValueError(f"--follow takes models that learn on their own, not {blending} "
                             "(they blend this trainer's models)")
        #: models another trainer learns (``--follow``): evaluated, blended, not learned
        self.followed = (Followed(settings.follow, settings.follow_every_s)
                         if settings.follow else None)
        #: the followed versions the restored snapshot recorded (extra_meta.followed)
        self._restored_followed: dict[str, Any] = {}
        self.checkpointer.probe(group=settings.group, topic=kafka.topic)
        self._restore()
        # The setting rules, not the bound a snapshot was written with (users beyond
        # it are forgotten after the first batch).
        self.history.evicted = []
        self.history.limit_users(settings.history_max_users)
        self.content = TrainerContent(settings, kafka)
        # A followed model keeps the content its own trainer gave it.
        self.content.attach({n: m for n, m in self.models.items() if n not in settings.follow})
        #: what this trainer learns, in order (followed models: another trainer learns them)
        self._order = [n for n in learning_order(self.models) if n not in settings.follow]
        self.evaluation = TrainerEvaluation(self.models, self.history, settings,
                                            self.metrics, on_drift=self._on_drift,
                                            monitors=self.monitors)
        #: seconds the latest snapshot's state copy paused learning
        self._capture_s = 0.0
        #: the share of the last second the learner waited for records
        self._idle_share = 0.0
        #: the followed models' versions in use (``--follow``)
        self.followed_versions = FollowedInUse(
            self.models, settings.follow, self.metrics, on_swap=self.evaluator.replace_model)
        if self.followed is not None:
            self.followed_versions.keep_restored(self._restored_followed)
            self.take_followed(self.followed.load_now())

    # ------------------------------------------------------------------ loop

    def stop(self) -> None:
        self.stop_event.set()

    _learning = False
    #: the check a trainer that restored no snapshot makes (see trainer.lost_snapshot)
    _lost: LostSnapshotGuard | None = None

    def run(self) -> TrainerResult:
        """Consume until stopped (signal, :meth:`stop` or a configured limit)."""
        s = self.settings
        for name, model in self.models.items():
            device = getattr(model, "torch_device", None)  # torch models that place tensors
            if device is not None:
                log.info("%s %s on %s", name,
                         "is followed, scored" if name in s.follow else "learns",
                         device)
        self.checkpointer.acquire(group=s.group, topic=self.kafka.topic)
        threading.Thread(target=ensure_dead_letter_topic_for_source,
                         args=(self.kafka, self.stop_event),
                         name="liverec-dlq-check", daemon=True).start()
        if self.snapshot_version is None:
            self._lost = LostSnapshotGuard(self.kafka, s.group, self.checkpointer.store.root,
                                           s.on_missing_snapshot, on_refuse=self.stop_event.set,
                                           refused=self.checkpointer.store.refusals)
            self._lost.start()
        t_start = time.monotonic()
        restore_signals = stop_on_signals(self.stop_event, "final snapshot + commit")
        last_status = last_record = t_start
        first_batch_at: float | None = None
        busy_s = 0.0
        window_events, window_start, window_wait = 0, t_start, 0.0
        self.source = self._new_source()
        self._learning = True
        self.source.start()
        self.content.start()
        try:
            while not self.stop_event.is_set():
                self._serve_revoke()
                self.content.apply_pending()
                if self.source.error is not None:
                    raise RuntimeError("the Kafka source failed") from self.source.error
                asked = time.monotonic()
                batch = self.source.get(timeout_s=0.05)
                now = time.monotonic()
                window_wait += now - asked
                if batch is not None:
                    last_record = now
                    if first_batch_at is None:
                        first_batch_at = now
                    try:
                        window_events += self.handle(batch)
                    except Exception:
                        self.metrics.loop_errors.labels(stage="process").inc()
                        log.exception("processing a batch failed")
                    busy_s += time.monotonic() - now
                elif not self.source.assigned:
                    last_record = now  # idle time counts only while holding partitions
                if now - window_start >= 1.0:
                    self._rate = window_events / (now - window_start)
                    self.metrics.events_per_second.set(self._rate)
                    # A batch was (nearly) always waiting: the learner is the bottleneck.
                    self._idle_share = min(1.0, window_wait / (now - window_start))
                    self.evaluation.backlog = self._idle_share < 0.05
                    window_events, window_start, window_wait = 0, now, 0.0
                if self.followed is not None:
                    self.take_followed(self.followed.poll(now))
                self._finish_checkpoint()
                if time.time() - self.checkpointer.last_attempt_wall >= self._snapshot_gap():
                    self.checkpoint("periodic")
                if now - last_status >= s.status_every_s:
                    self._update_gauges()
                    log.info(self.status_line())
                    last_status = now
                if self._limit_reached(now - t_start, now - last_record):
                    break
        finally:
            self._learning = False
            self.stop_event.set()  # also after a --max-* limit: the run is stopping
            t_stop = time.monotonic()
            try:
                log.info("stopping: waiting for the last snapshot, then committing its "
                         "offsets and leaving the group")
                self.source.stop_reading()
                written = self.checkpoint("shutdown", wait=True)
                final = written.offsets if written else self._snap_offsets
            finally:
                self.content.stop()
                if self._lost is not None:
                    self._lost.close()
                if self.followed is not None:
                    self.followed.close()
                self.source.stop(final)
                self.checkpointer.close()
                restore_signals()
            self._update_gauges()
            t_end = time.monotonic()
            log.info("stopped after a %.2f s shutdown: %s", t_end - t_stop,
                     self.status_line())
        if self._lost is not None and self._lost.refusal is not None:
            raise MissingSnapshotError(self._lost.refusal)
        return TrainerResult(
            self.events_learned, self.events_total, self.duplicates, self.rejected,
            self.snapshot_version, t_end - t_start,
            None if first_batch_at is None else first_batch_at - t_start, t_end - t_stop,
            dict(self.capped), busy_s,
        )

    def _limit_reached(self, elapsed: float, idle: float) -> bool:
        s = self.settings
        if s.max_events is not None and self.events_learned >= s.max_events:
            log.info("learned %d events: stopping", self.events_learned)
            return True
        if s.until_events_total is not None and self.events_total >= s.until_events_total:
            log.info("events_total reached %d: stopping", self.events_total)
            return True
        if s.max_seconds is not None and elapsed >= s.max_seconds:
            log.info("ran %.1f s: stopping", elapsed)
            return True
        if s.idle_exit_s is not None and idle >= s.idle_exit_s:
            log.info("no records for %.1f s: stopping", idle)
            return True
        return False

    # ------------------------------------------------------------------ one batch

    def handle(self, polled: PolledBatch) -> int:
        """De-duplicate, evaluate, learn one polled batch; returns events learned."""
        m = self.metrics
        topic = self.kafka.topic
        m.batch_size.observe(polled.records)
        for rej, *_ in polled.rejected:
            m.events_rejected.labels(topic=topic, reason=rej.reason).inc()
        self.rejected += len(polled.rejected)
        cols = polled.columns
        m.events_consumed.labels(topic=topic).inc(len(cols))
        fresh = self.dedup.add_many(cols.event_ids, cols.timestamps)
        dups = len(cols) - int(fresh.sum())
        if dups:
            self.duplicates += dups
            m.duplicates_dropped.labels(topic=topic).inc(dups)
            cols = cols.take(fresh)
        admitted, capped = self.flood.admit(cols.users, cols.items, cols.timestamps)
        if capped:
            for reason, count in capped.items():
                m.events_capped.labels(reason=reason).inc(count)
                self.capped[reason] = self.capped.get(reason, 0) + count
            cols = cols.take(admitted)
        n = len(cols)
        if n:
            batch = Batch.from_columns(cols.users, cols.items, cols.weights, cols.timestamps)
            self._evaluate(batch)
            self._learn(batch)
            self.data_drift.update(batch.users, batch.items)
            self._forget_evicted()
            self.events_total += n
            self.events_learned += n
            wm = float(batch.timestamps.max())
            self.watermark = wm if self.watermark is None else max(self.watermark, wm)
            m.events_learned.labels(topic=topic).inc(n)
            for name in self.adaptation.expire(self.models, self.events_total):
                m.drift_adapting.labels(model=name).set(0)
        # Offsets move for every record handled -- rejects and duplicates included.
        self.offsets.update(polled.offsets)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("handled %s", {p: (polled.first_offsets[p], o)
                                     for p, o in polled.offsets.items()})
        return n

    @property
    def evaluator(self) -> PrequentialEvaluator:
        """The evaluation's prequential evaluator."""
        return self.evaluation.evaluator

    def _evaluate(self, batch: Batch) -> None:
        """Evaluate the batch's sample (the history moves for every event)."""
        self.evaluation.evaluate(batch)

    def _on_drift(self, name: str) -> None:
        if name in self.settings.follow:
            return  # its own trainer adapts it
        if self.settings.drift_adapt and self.adaptation.start(
                name, self.models[name], self.events_total):
            self.metrics.drift_adaptations.labels(model=name).inc()
            self.metrics.drift_adapting.labels(model=name).set(1)

    def _learn(self, batch: Batch) -> None:
        # A bound hybrid reads its components' state as of the batch's start: first.
        for name in self._order:
            model = self.models[name]
            t0 = time.perf_counter()
            try:
                model.learn(batch)
            except Exception:
                self.metrics.learn_errors.labels(model=name).inc()
                log.exception("model %s failed to learn a batch of %d events", name, len(batch))
                continue
            self.metrics.learn_duration.labels(model=name).observe(time.perf_counter() - t0)
            steps = getattr(model, "last_steps", None)
            if isinstance(steps, int) and steps > 0:
                self.metrics.train_steps.labels(model=name).inc(steps)

    def _forget_evicted(self) -> None:
        """Forget, beyond the history, the users it dropped for ``history_max_users``:
        the evaluator's counts and every model's state of them."""
        gone = self.history.take_evicted()
        if not gone:
            return
        self.evaluator.forget_users(gone)
        for name, model in self.models.items():
            if name in self.settings.follow:
                continue  # its own trainer bounds its users
            try:
                model.forget_users(gone)
            except Exception:
                self.metrics.loop_errors.labels(stage="process").inc()
                log.exception("model %s failed to forget %d users", name, len(gone))
        self.metrics.users_forgotten.inc(len(gone))

    def take_followed(self, new: list[FollowedModel]) -> None:
        """Swap followed models' new versions in once this trainer has passed every
        event they learned (:meth:`~trainer.follow_swap.FollowedInUse.take`)."""
        self.followed_versions.take(new, self.kafka.topic, self.offsets, self.watermark)

    # ------------------------------------------------------------------ snapshot cadence

    def _snapshot_gap(self) -> float:
        """Seconds between periodic snapshots: ``snapshot_every_s``, or longer when
        copying the state (the learner's only pause) would take more than
        ``snapshot_max_share`` of the time -- or, when more, :data:`IDLE_COPY_FRACTION`
        of the time the learner waited for records -- or writing it (the background
        thread's) more than ``snapshot_write_share``."""
        s = self.settings
        gap = s.snapshot_every_s
        if s.snapshot_max_share:
            share = max(s.snapshot_max_share, IDLE_COPY_FRACTION * self._idle_share)
            gap = max(gap, self._capture_s / share)
        if s.snapshot_write_share:
            gap = max(gap, self.checkpointer.last_write_s / s.snapshot_write_share)
        return gap
