"""Every Prometheus metric of the trainer service, declared in one place.

:class:`TrainerMetrics` owns its own ``CollectorRegistry`` (no global state, so
tests build as many as they like) and creates every labelled series up front so
dashboards see zeros rather than gaps. Names carry the ``liverec_trainer_`` prefix
and base units; labels come from bounded sets only (model, topic, partition,
reason, detector, distribution) -- never user or item ids.

Examples
--------
>>> m = TrainerMetrics(models=["popularity"], topic="clicks")
>>> m.events_rejected.labels(topic="clicks", reason="not_json").inc()
>>> m.registry.get_sample_value(
...     "liverec_trainer_events_rejected_total", {"topic": "clicks", "reason": "not_json"})
1.0
>>> m.registry.get_sample_value("liverec_trainer_concept_drift_alarms_total",
...     {"model": "popularity", "detector": "adwin"})
0.0
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from online_models.drift import DETECTORS, DataDriftTracker
from stream.buildinfo import register_build_info
from stream.events import REJECT_REASONS
from stream.kafka.base import Partition
from trainer.flood import CAP_REASONS

__all__ = ["LOOP_PHASES", "PhaseClock", "TrainerMetrics"]

#: the phases of the scale-out trainer's loop (``liverec_trainer_loop_seconds_total``)
LOOP_PHASES = ("poll", "learn", "transaction", "fold", "snapshot")

_P = "liverec_trainer_"

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_LEARN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_SNAPSHOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class TrainerMetrics:
    """The trainer's metrics on a private registry.

    Parameters
    ----------
    models
        Model names (the ``model`` label values).
    topic
        The consumed topic (the ``topic`` label value).
    registry
        Registry to register on; a fresh one when ``None``.
    """

    def __init__(
        self,
        models: Sequence[str],
        topic: str,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.models = list(models)
        self.topic = topic
        #: (topic, partition) of the lag series exported now (set on the consumer's
        #: thread at assignment, on the learner's after: under the lock)
        self._lag_series: set[Partition] = set()
        self._lag_lock = threading.Lock()
        register_build_info(r, "trainer")

        # ---------------------------------------------------------------- ingest
        self.events_consumed = Counter(
            _P + "events_consumed", "Valid events read from Kafka (before de-duplication).",
            ["topic"], registry=r)
        self.events_learned = Counter(
            _P + "events_learned", "Events evaluated and learned by the models.",
            ["topic"], registry=r)
        self.duplicates_dropped = Counter(
            _P + "duplicates_dropped",
            "Events dropped because their event_id was already learned (replay, redelivery).",
            ["topic"], registry=r)
        self.events_rejected = Counter(
            _P + "events_rejected", "Messages that failed validation, by reason (sent to DLQ).",
            ["topic", "reason"], registry=r)
        self.batch_size = Histogram(
            _P + "batch_size_events", "Records per consumed mini-batch.",
            buckets=_BATCH_BUCKETS, registry=r)
        self.consumer_lag = Gauge(
            _P + "consumer_lag_messages", "Records not yet read, per partition.",
            ["topic", "partition"], registry=r)
        self.kafka_contact_age = Gauge(
            _P + "kafka_contact_age_seconds",
            "Seconds since Kafka last answered the trainer (its partitions' end offsets "
            "about every second; without partitions, metadata every 5 s, which "
            "kafka-python may answer from its cache): grows while Kafka is unreachable. "
            "NaN on scale-out trainers, which exit when a transaction fails.",
            registry=r)
        self.events_per_second = Gauge(
            _P + "events_per_second", "Learned events per second (recent average).", registry=r)
        self.event_time_lag = Gauge(
            _P + "event_time_lag_seconds",
            "Wall-clock now minus the newest event time learned (watermark).", registry=r)
        self.events_total = Gauge(
            _P + "events_learned_since_start",
            "Events learned since the very first snapshot (survives restarts).", registry=r)
        self.watermark = Gauge(
            _P + "watermark_timestamp_seconds", "Newest event time learned (epoch).", registry=r)
        self.dlq_failures = Counter(
            _P + "dlq_failures",
            "Rejected records whose dead-letter copy could not be written after retries "
            "(counted, logged and skipped).", registry=r)
        self.events_capped = Counter(
            _P + "events_capped",
            "Events the flood guard kept out of learning, by reason (offsets still move).",
            ["reason"], registry=r)
        self.loop_errors = Counter(
            _P + "loop_errors", "Unexpected errors caught by the main loop, by stage.",
            ["stage"], registry=r)
        self.users_tracked = Gauge(
            _P + "users_tracked",
            "Users whose history the trainer holds (at most history_max_users).", registry=r)
        self.users_forgotten = Counter(
            _P + "users_forgotten",
            "Least recently active users dropped beyond history_max_users: their history, "
            "evaluation counts and every model's state of them.",
            registry=r)

        # ---------------------------------------------------------------- learning
        self.learn_duration = Histogram(
            _P + "learn_duration_seconds", "Time to learn one mini-batch, per model.",
            ["model"], buckets=_LEARN_BUCKETS, registry=r)
        self.evaluate_duration = Histogram(
            _P + "evaluate_duration_seconds",
            "Time to evaluate one mini-batch prequentially (all models).",
            buckets=_LEARN_BUCKETS, registry=r)
        self.evaluate_cpu = Counter(
            _P + "evaluate_cpu_seconds",
            "CPU time of the learner thread spent evaluating (bookkeeping for every event "
            "and scoring the sample); the evaluation governor holds it near "
            "eval_cpu_share of the process's CPU time.",
            registry=r)
        self.learn_errors = Counter(
            _P + "learn_errors", "Mini-batches a model failed to learn (logged).",
            ["model"], registry=r)
        self.train_steps = Counter(
            _P + "model_train_steps",
            "Optimiser steps of models that take several per batch (seqnn: replay steps "
            "drop under its compute budget, the batch's own step never).",
            ["model"], registry=r)
        self.users_known = Gauge(_P + "model_users", "Users a model knows.", ["model"],
                                 registry=r)
        self.items_known = Gauge(_P + "model_items", "Items a model knows.", ["model"],
                                 registry=r)
        self.followed_version = Gauge(
            _P + "followed_snapshot_version",
            "Snapshot version of a followed model (--follow) in use: another trainer "
            "learns it, this one evaluates and blends it (-1: none loaded yet).",
            ["model"], registry=r)
        self.followed_age = Gauge(
            _P + "followed_snapshot_age_seconds",
            "Age of the followed model's snapshot in use (how far behind the stream its "
            "trainer may be; -1: none loaded yet).", ["model"], registry=r)
        self.snapshot_duration = Histogram(
            _P + "snapshot_duration_seconds", "Time to write and publish a snapshot.",
            buckets=_SNAPSHOT_BUCKETS, registry=r)
        self.snapshot_size = Gauge(_P + "snapshot_size_bytes", "Size of the latest snapshot.",
                                   registry=r)
        self.snapshot_version = Gauge(_P + "snapshot_version", "Latest snapshot version.",
                                      registry=r)
        self.snapshot_timestamp = Gauge(
            _P + "snapshot_timestamp_seconds", "Wall-clock time of the latest snapshot (epoch).",
            registry=r)
        self.snapshot_age = Gauge(
            _P + "snapshot_age_seconds",
            "Seconds since the newest snapshot actually written (failed writes do not reset "
            "it; -1: none yet).", registry=r)
        self.snapshot_errors = Counter(
            _P + "snapshot_errors", "Snapshot writes that failed (offsets not committed).",
            registry=r)
        self.offset_commits = Counter(
            _P + "offset_commits", "Offset commits made after a durable snapshot.", registry=r)
        self.snapshots_refused = Counter(
            _P + "snapshots_refused", "Snapshots refused on load (corrupt or tampered).",
            registry=r)

        # ---------------------------------------------------------------- accuracy
        self.rolling_hr = Gauge(
            _P + "rolling_hit_ratio", "Prequential HR@10 over the last N evaluated events.",
            ["model"], registry=r)
        self.rolling_ndcg = Gauge(
            _P + "rolling_ndcg", "Prequential NDCG@10 over the last N evaluated events.",
            ["model"], registry=r)
        self.rolling_coverage = Gauge(
            _P + "rolling_coverage_ratio",
            "Share of known items recommended in the last N top-10 lists.", ["model"], registry=r)
        self.hr_total = Gauge(
            _P + "hit_ratio", "Prequential HR@10 over every event evaluated by this process.",
            ["model"], registry=r)
        self.ndcg_total = Gauge(
            _P + "ndcg", "Prequential NDCG@10 over every event evaluated by this process.",
            ["model"], registry=r)
        self.evaluated = Counter(
            _P + "evaluated_events",
            "Events evaluated prequentially (a seeded sample of the evaluable ones).",
            ["model"], registry=r)
        self.rolling_evaluated = Gauge(
            _P + "rolling_evaluated_events",
            "Evaluated events behind the rolling accuracy figures (the evidence they rest on).",
            ["model"], registry=r)
        self.hits = Counter(_P + "hits", "Prequential hits (true item in the top 10).",
                            ["model"], registry=r)
        self.evaluate_errors = Counter(
            _P + "evaluate_errors", "Mini-batches whose evaluation failed (still learned).",
            registry=r)

        # ---------------------------------------------------------------- drift
        self.drift_alarms = Counter(
            _P + "concept_drift_alarms", "Concept-drift alarms on the prequential miss stream.",
            ["model", "detector"], registry=r)
        self.drift_last_alarm_age = Gauge(
            _P + "concept_drift_last_alarm_age_seconds",
            "Seconds since the model's last concept-drift alarm (-1: never).",
            ["model"], registry=r)
        self.drift_adaptations = Counter(
            _P + "drift_adaptations",
            "Times a drift alarm shortened half-lives / raised learning rates.",
            ["model"], registry=r)
        self.drift_adapting = Gauge(
            _P + "drift_adaptation_active",
            "1 while the model runs with drift-adapted hyperparameters.", ["model"], registry=r)
        self.data_drift_psi = Gauge(
            _P + "data_drift_psi",
            "Population stability index, latest window vs the one before (hashed ids); "
            "NaN until two windows have filled.",
            ["distribution"], registry=r)
        self.data_drift_js = Gauge(
            _P + "data_drift_js_divergence",
            "Jensen-Shannon divergence (base 2), latest window vs the one before; NaN "
            "until two windows have filled.",
            ["distribution"], registry=r)
        self.embedding_drift = Gauge(
            _P + "embedding_drift_cosine_distance",
            "Mean cosine distance of item embeddings since the last comparison "
            "(every embedding_drift_every_s, at a durable snapshot).",
            ["model"], registry=r)

        # Scale-out mode (trainer.partitioned): who owns what, and the update topic.
        self.partition_owned = Gauge(
            _P + "partition_owned", "1 for each input partition this trainer owns now.",
            ["topic", "partition"], registry=r)
        self.partition_events = Gauge(
            _P + "partition_events",
            "Events of an input partition the item state holds (every owner's, counted "
            "from the update topic): the model's coverage of each partition. Exported "
            "by the trainer that folds the update topic (the owner of the last partition).",
            ["topic", "partition"], registry=r)
        self.update_lag = Gauge(
            _P + "update_lag_records",
            "Records of the update topic not yet folded into this trainer's item state "
            "(NaN on trainers that do not fold it: only the owner of the last partition "
            "does).",
            registry=r)
        self.update_bytes = Counter(
            _P + "update_bytes", "Bytes of item-side updates, published (out) and applied "
            "(in).", ["direction"], registry=r)
        self.update_messages = Counter(
            _P + "update_messages", "Item-side update messages, published (out) and "
            "applied (in).", ["direction"], registry=r)
        self.transactions = Counter(
            _P + "transactions", "Transactions (updates + input offsets) by outcome.",
            ["outcome"], registry=r)
        self.loop_seconds = Counter(
            _P + "loop_seconds", "Wall time of the scale-out trainer's loop by phase "
            "(poll, learn, transaction, fold, snapshot; a phase's time excludes the "
            "phases inside it).", ["phase"], registry=r)
        for phase in LOOP_PHASES:
            self.loop_seconds.labels(phase=phase)
        for direction in ("in", "out"):
            self.update_bytes.labels(direction=direction)
            self.update_messages.labels(direction=direction)
        for outcome in ("committed", "aborted"):
            self.transactions.labels(outcome=outcome)

        for reason in REJECT_REASONS:
            self.events_rejected.labels(topic=topic, reason=reason)
        for c in (self.events_consumed, self.events_learned, self.duplicates_dropped):
            c.labels(topic=topic)
        for reason in CAP_REASONS:
            self.events_capped.labels(reason=reason)
        for stage in ("consume", "process", "snapshot", "commit", "metrics"):
            self.loop_errors.labels(stage=stage)
        for m in self.models:
            for metric in (
                self.learn_duration, self.learn_errors, self.users_known, self.items_known,
                self.rolling_hr, self.rolling_ndcg, self.rolling_coverage, self.hr_total,
                self.ndcg_total, self.evaluated, self.rolling_evaluated, self.hits,
                self.drift_adaptations,
                self.drift_adapting, self.embedding_drift,
            ):
                metric.labels(model=m)
            # NaN until an event is evaluated (as update_gauges sets them): a 0 drew every
            # model at HR 0 on the dashboard until the first status period
            for figure in (self.rolling_hr, self.rolling_ndcg, self.rolling_coverage,
                           self.hr_total, self.ndcg_total):
                figure.labels(model=m).set(math.nan)
            self.drift_last_alarm_age.labels(model=m).set(-1)
            for d in DETECTORS:
                self.drift_alarms.labels(model=m, detector=d)
        for dist in DataDriftTracker.DISTRIBUTIONS:  # NaN until two windows are full: a 0
            self.data_drift_psi.labels(distribution=dist).set(math.nan)  # read "no drift"
            self.data_drift_js.labels(distribution=dist).set(math.nan)

    def partition(self, partition: int) -> None:
        """Create the lag series of a newly assigned partition."""
        with self._lag_lock:
            self.consumer_lag.labels(topic=self.topic, partition=str(partition))
            self._lag_series.add((self.topic, partition))

    def export_lag(self, lag: Mapping[Partition, int]) -> None:
        """Set the lag of the partitions in ``lag`` (those assigned) and drop the series
        of any other: a partition another member owns now must not count twice in a
        sum over the group."""
        gauge = self.consumer_lag
        with self._lag_lock:
            for t, p in self._lag_series - lag.keys():
                with suppress(KeyError):
                    gauge.remove(t, str(p))
            for (t, p), n in lag.items():
                gauge.labels(topic=t, partition=str(p)).set(n)
            self._lag_series = set(lag)

    def drop_partition(self, partition: int) -> None:
        """Drop a revoked partition's lag series now (its new owner exports it)."""
        with self._lag_lock:
            with suppress(KeyError):
                self.consumer_lag.remove(self.topic, str(partition))
            self._lag_series.discard((self.topic, partition))


class PhaseClock:
    """Wall and CPU seconds of a loop by phase, each phase's own time only (a phase
    timed inside another is taken out of the outer one); wall time also goes to
    ``counter`` (labelled ``phase``). CPU is the calling thread's, so wall minus CPU
    is what the phase waited: for the broker, for I/O, or for a core."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._inner: list[list[float]] = []  # per open phase: its inner phases' time

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.thread_time()
        self._inner.append([0.0, 0.0])
        try:
            yield
        finally:
            wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
            inner_wall, inner_cpu = self._inner.pop()
            self.wall[phase] = self.wall.get(phase, 0.0) + wall - inner_wall
            self.cpu[phase] = self.cpu.get(phase, 0.0) + cpu - inner_cpu
            self.counter.labels(phase=phase).inc(max(wall - inner_wall, 0.0))
            if self._inner:
                self._inner[-1][0] += wall
                self._inner[-1][1] += cpu

    def line(self) -> str:
        """``phase wall/cpu s`` for each phase timed, e.g. for a shutdown log line."""
        return ", ".join(f"{p} {self.wall[p]:.1f}/{self.cpu.get(p, 0.0):.1f}"
                         for p in self.wall)
