"""The trainer service: consume -> de-duplicate -> evaluate -> learn -> snapshot -> commit.

:class:`Trainer` is one consumer-group member of the click topic. Per mini-batch it

1. drops events whose ``event_id`` it already learned (:class:`DedupWindow`, a
   bounded, event-time-windowed set that is part of every snapshot);
2. evaluates the batch prequentially for every model
   (:class:`~online_models.evaluation.PrequentialEvaluator`, test-then-train) and feeds
   each model's hit/miss stream to its concept-drift monitor;
3. lets every model learn it (a model that raises is logged and counted; the batch
   still goes to the others);

and every ``snapshot_every_s`` seconds (also before partitions are revoked and on
shutdown) writes a snapshot, then commits the Kafka offsets it contains. On start it
loads the newest valid snapshot and seeks every partition it knows to the offsets
stored there, so after any crash the models equal a crash-free run's: events after
the snapshot are re-read and re-learned, events before it are never learned twice.

Drift adaptation (``drift_adapt``): when a model's concept-drift monitor alarms,
numeric hyperparameters the model reads while learning are overridden for
``drift_adapt_events`` events -- half-lives (``half_life_seconds``) multiplied by
``drift_half_life_factor`` and learning rates (``learning_rate``) by
``drift_lr_factor`` -- then restored. The originals travel in the snapshot, so a
restart mid-adaptation still restores them.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from online_models import registry
from online_models.base import Batch, OnlineModel, UserHistory, pack_strings, unpack_strings
from online_models.drift import ConceptDriftMonitor, DataDriftTracker, embedding_drift
from online_models.evaluation import PrequentialEvaluator
from online_models.snapshot import SnapshotError, SnapshotStore
from stream.consumer import ConsumedBatch, MiniBatchConsumer, Partition
from stream.metrics import TrainerMetrics

__all__ = ["DedupWindow", "Trainer", "TrainerResult", "TrainerSettings"]

log = logging.getLogger(__name__)

#: hyperparameters drift adaptation shortens / raises
_HALF_LIFE_ATTRS = ("half_life_seconds",)
_LEARNING_RATE_ATTRS = ("learning_rate",)


class TrainerSettings(BaseSettings):
    """Settings of ``liverec train`` (every field also from ``LIVEREC_<FIELD>``).

    Examples
    --------
    >>> s = TrainerSettings(topic="clicks", models="popularity,itemknn")
    >>> s.model_names(), s.batch_size, s.drift_adapt
    (['popularity', 'itemknn'], 256, True)
    """

    model_config = SettingsConfigDict(env_prefix="LIVEREC_", extra="ignore")

    bootstrap: str = Field(
        default="localhost:9092",
        validation_alias=AliasChoices("bootstrap", "LIVEREC_BOOTSTRAP", "LIVEREC_KAFKA_BOOTSTRAP"),
    )
    topic: str = "clicks"
    group: str = "liverec-trainer"
    snapshots: Path = Path("snapshots")
    models: str = "all"
    #: JSON ``{"model": {"param": value}}`` passed to fresh models' constructors
    model_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    batch_size: int = Field(default=256, ge=1)
    max_wait_ms: int = Field(default=200, ge=0)
    snapshot_every_s: float = Field(default=1.0, gt=0)
    keep_snapshots: int = Field(default=5, ge=1)
    #: 0 picks a free port; -1 serves no metrics
    metrics_port: int = Field(default=9101, ge=-1)
    metrics_addr: str = "0.0.0.0"
    k: int = Field(default=10, ge=1)
    rolling_window: int = Field(default=1000, ge=1)
    #: evaluate one mini-batch in this many (1: all); skipped batches only update history
    eval_every: int = Field(default=1, ge=1)
    history_items: int = Field(default=200, ge=1)
    dedup_window_s: float = Field(default=86_400.0, gt=0)
    dedup_max_ids: int = Field(default=500_000, ge=1)
    drift_adapt: bool = True
    drift_half_life_factor: float = Field(default=0.25, gt=0)
    drift_lr_factor: float = Field(default=2.0, gt=0)
    drift_adapt_events: int = Field(default=5_000, ge=1)
    drift_buckets: int = Field(default=64, ge=2)
    drift_window: int = Field(default=5_000, ge=10)
    status_every_s: float = Field(default=5.0, gt=0)
    #: rebuild the consumer when it has had no partitions this long since (re)joining
    #: (doubling each time); guards against a group join that never completes
    join_timeout_s: float = Field(default=60.0, gt=0)
    #: group session timeout: how soon a crashed trainer's partitions are reassigned
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    #: stop after this many events learned by this process
    max_events: int | None = Field(default=None, ge=1)
    #: stop once ``events_total`` (across restarts) reaches this
    until_events_total: int | None = Field(default=None, ge=1)
    #: stop after this many seconds
    max_seconds: float | None = Field(default=None, gt=0)
    #: stop after this many seconds without a single record
    idle_exit_s: float | None = Field(default=None, gt=0)

    def model_names(self) -> list[str]:
        return registry.parse_models(self.models)


class DedupWindow:
    """Recently learned ``event_id`` s, bounded by event time and by count.

    An id is remembered until the watermark is ``window_s`` past its event time, or
    until ``max_ids`` newer ids pushed it out. A duplicate older than that is not
    recognised (and learned again): size the window to the longest replay overlap.

    >>> d = DedupWindow(window_s=10, max_ids=100)
    >>> d.add("a", 1.0), d.add("a", 2.0), d.add("b", 20.0), d.add("a", 21.0)
    (True, False, True, True)
    """

    def __init__(self, window_s: float = 86_400.0, max_ids: int = 500_000) -> None:
        self.window_s = window_s
        self.max_ids = max_ids
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._watermark = -math.inf

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str, ts: float) -> bool:
        """Remember ``event_id``; False when it was already there (a duplicate)."""
        if event_id in self._ids:
            return False
        self._ids[event_id] = ts
        if ts > self._watermark:
            self._watermark = ts
            self._expire()
        if len(self._ids) > self.max_ids:
            self._ids.popitem(last=False)
        return True

    def _expire(self) -> None:
        horizon = self._watermark - self.window_s
        # Ids arrive roughly in event-time order, so expired ones sit at the front.
        while self._ids:
            first_id = next(iter(self._ids))
            if self._ids[first_id] >= horizon:
                break
            self._ids.popitem(last=False)

    def to_arrays(self, prefix: str = "dedup") -> dict[str, np.ndarray]:
        data, offsets = pack_strings(list(self._ids))
        return {
            f"{prefix}.ids.data": data,
            f"{prefix}.ids.offsets": offsets,
            f"{prefix}.ts": np.fromiter(self._ids.values(), np.float64, len(self._ids)),
        }

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], prefix: str = "dedup", **kwargs: Any
    ) -> DedupWindow:
        d = cls(**kwargs)
        if f"{prefix}.ts" not in arrays:
            return d
        ids = unpack_strings(arrays[f"{prefix}.ids.data"], arrays[f"{prefix}.ids.offsets"])
        d._ids = OrderedDict(zip(ids, arrays[f"{prefix}.ts"].tolist(), strict=True))
        d._watermark = max(d._ids.values(), default=-math.inf)
        return d


@dataclass(frozen=True, slots=True)
class TrainerResult:
    """What a :meth:`Trainer.run` did."""

    events_learned: int
    events_total: int
    duplicates: int
    rejected: int
    snapshot_version: int | None
    seconds: float


class Trainer:
    """The trainer service loop (see the module docstring).

    Parameters
    ----------
    settings
        The process's settings.
    metrics
        Metrics to update; fresh ones (own registry) when ``None``.
    consumer_factory
        Builds the consumer (tests may pass a differently configured one); it
        receives the ``on_assign`` / ``on_revoke`` hooks as keyword arguments.
    """

    def __init__(
        self,
        settings: TrainerSettings,
        metrics: TrainerMetrics | None = None,
        consumer_factory: Callable[..., MiniBatchConsumer] | None = None,
    ) -> None:
        self.settings = settings
        self.names = settings.model_names()
        self.metrics = metrics or TrainerMetrics(self.names, settings.topic)
        self.store = SnapshotStore(settings.snapshots, keep=settings.keep_snapshots)
        self.stop_event = threading.Event()
        self._consumer_factory = consumer_factory

        self.models: dict[str, OnlineModel] = {}
        self.history = UserHistory(max_items=settings.history_items)
        self.offsets: dict[Partition, int] = {}
        self.events_total = 0
        self.watermark: float | None = None
        self.dedup = DedupWindow(settings.dedup_window_s, settings.dedup_max_ids)
        self.data_drift = DataDriftTracker(settings.drift_buckets, settings.drift_window)
        self.monitors = {n: ConceptDriftMonitor() for n in self.names}
        self._adapt: dict[str, dict[str, Any]] = {}
        self._alarm_wall: dict[str, float] = {}
        self._prev_vectors: dict[str, tuple[list[str | None], np.ndarray]] = {}
        self.snapshot_version: int | None = None
        self._snap_offsets: dict[Partition, int] = {}
        self._snap_events_total = 0
        self._last_snapshot_wall = 0.0
        self._rate = 0.0
        self.consumer: MiniBatchConsumer | None = None
        self.events_learned = 0
        self._batches = 0
        self.duplicates = 0
        self.rejected = 0
        self._restore()
        self.evaluator = PrequentialEvaluator(
            self.models, k=settings.k, history=self.history,
            rolling_window=settings.rolling_window,
        )
        self.metrics.snapshot_age.set_function(
            lambda: time.time() - self._last_snapshot_wall if self._last_snapshot_wall else -1.0
        )

    # ------------------------------------------------------------------ restore

    def _restore(self) -> None:
        snap = None
        latest = self.store.latest_version()
        for v in sorted((v for v in self.store.versions() if latest is None or v <= latest),
                        reverse=True):
            try:
                snap = self.store.load(v)
                break
            except SnapshotError as exc:
                self.metrics.snapshots_refused.inc()
                log.warning("refusing snapshot: %s; falling back to the previous one", exc)
        if snap is None:
            log.info("no valid snapshot in %s: starting from scratch", self.store.root)
            for name in self.names:
                self.models[name] = registry.create(
                    name, **self.settings.model_params.get(name, {})
                )
            return
        for name in self.names:
            if name in snap.models:
                self.models[name] = snap.models[name]
            else:
                log.warning("model %s is not in snapshot %d: starting it fresh", name,
                            snap.version)
                self.models[name] = registry.create(
                    name, **self.settings.model_params.get(name, {})
                )
        self.history = snap.history
        self.events_total = snap.events_total
        self.watermark = snap.watermark
        self.offsets = {
            (t, p): o for t, parts in snap.offsets.items() for p, o in parts.items()
        }
        self._snap_offsets = dict(self.offsets)
        self._snap_events_total = self.events_total
        self.snapshot_version = snap.version
        self.dedup = DedupWindow.from_arrays(
            snap.extra_arrays, window_s=self.settings.dedup_window_s,
            max_ids=self.settings.dedup_max_ids,
        )
        self.data_drift.load_arrays(snap.extra_arrays)
        meta = snap.extra_meta
        for name, st in meta.get("drift", {}).items():
            mon = self.monitors.get(name)
            if mon is not None:
                mon.alarms.update(st.get("alarms", {}))
                mon.last_alarm_time = st.get("last_alarm_time")
        for name, ad in meta.get("adapt", {}).items():
            if name in self.models:
                self._adapt[name] = ad
                self.metrics.drift_adapting.labels(model=name).set(1)
        for name, m in self.models.items():
            vec = m.item_vectors()
            if vec is not None:
                self._prev_vectors[name] = (list(m.items.ids), np.array(vec, copy=True))
        self.metrics.snapshot_version.set(snap.version)
        self.metrics.events_total.set(self.events_total)
        log.info("restored snapshot %d: events_total=%d, offsets=%s, models=%s",
                 snap.version, self.events_total, snap.offsets, sorted(snap.models))

    # ------------------------------------------------------------------ rebalance

    def _on_assign(self, parts: set[Partition]) -> None:
        known = {p: self.offsets[p] for p in parts if p in self.offsets}
        for _, partition in parts:
            self.metrics.partition(partition)
        if known and self.consumer is not None:
            # Partitions the snapshot does not know start from the group's committed
            # offset (else the earliest), which the consumer does by itself.
            self.consumer.seek(known)
            log.info("seeked %s to the snapshot's offsets", known)

    def _on_revoke(self, parts: set[Partition]) -> None:
        log.info("partitions %s revoked: snapshot and commit first", sorted(parts))
        self.checkpoint("revoke")

    # ------------------------------------------------------------------ loop

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> TrainerResult:
        """Consume until stopped (signal, :meth:`stop` or a configured limit)."""
        s = self.settings
        t_start = time.monotonic()
        restore_signals = self._install_signals()
        last_status = last_record = t_start
        window_events, window_start = 0, t_start
        join_timeout = s.join_timeout_s
        try:
            self.consumer = self._new_consumer()
            joined_at, ever_assigned = time.monotonic(), False
            while not self.stop_event.is_set():
                if not ever_assigned:
                    if self.consumer.assignment():
                        ever_assigned = True
                        last_record = time.monotonic()  # idle time counts from here
                    elif time.monotonic() - joined_at > join_timeout:
                        log.warning("no partitions %.0f s after joining group %s: rebuilding "
                                    "the consumer", join_timeout, s.group)
                        self.metrics.loop_errors.labels(stage="consume").inc()
                        self._close_consumer()
                        self.consumer = self._new_consumer()
                        joined_at, join_timeout = time.monotonic(), join_timeout * 2
                try:
                    batch = self.consumer.next_batch()
                except Exception:
                    self.metrics.loop_errors.labels(stage="consume").inc()
                    log.exception("consume failed; retrying")
                    self.stop_event.wait(0.5)
                    continue
                now = time.monotonic()
                if not batch.empty:
                    last_record = now
                    try:
                        window_events += self.handle(batch)
                    except Exception:
                        self.metrics.loop_errors.labels(stage="process").inc()
                        log.exception("processing a batch failed")
                if now - window_start >= 1.0:
                    self._rate = window_events / (now - window_start)
                    self.metrics.events_per_second.set(self._rate)
                    window_events, window_start = 0, now
                if time.time() - self._last_snapshot_wall >= s.snapshot_every_s:
                    self.checkpoint("periodic")
                if now - last_status >= s.status_every_s:
                    self._update_gauges()
                    log.info(self.status_line())
                    last_status = now
                idle = now - last_record if ever_assigned else 0.0
                if self._limit_reached(now - t_start, idle):
                    break
        finally:
            try:
                self.checkpoint("shutdown")
            finally:
                self._close_consumer()
                restore_signals()
            self._update_gauges()
            log.info("stopped: %s", self.status_line())
        return TrainerResult(
            self.events_learned, self.events_total, self.duplicates, self.rejected,
            self.snapshot_version, time.monotonic() - t_start,
        )

    def _new_consumer(self) -> MiniBatchConsumer:
        s = self.settings
        factory = self._consumer_factory or MiniBatchConsumer
        consumer = factory(
            s.bootstrap, s.topic, s.group, batch_size=s.batch_size,
            max_wait_ms=s.max_wait_ms, on_assign=self._on_assign,
            on_revoke=self._on_revoke, client_id="liverec-trainer",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(100, s.session_timeout_ms // 3),
        )
        # Fetch the topic's metadata before the first poll joins the group. Without it
        # the first join often assigns nothing ("no partition metadata") and the
        # immediate re-join that follows has been seen to hang in kafka-python 3.0.
        inner = getattr(consumer, "_consumer", None)
        if inner is not None:
            try:
                inner.partitions_for_topic(s.topic)
            except Exception:
                log.warning("could not prefetch metadata of %s", s.topic, exc_info=True)
        return consumer

    def _close_consumer(self) -> None:
        if self.consumer is None:
            return
        try:
            self.consumer.close()
        except Exception:
            log.exception("closing the consumer failed")

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

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: Any) -> None:
            log.info("signal %d: finishing the batch, then final snapshot + commit", signum)
            self.stop_event.set()

        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, h in old.items():
                signal.signal(sig, h)

        return restore

    # ------------------------------------------------------------------ one batch

    def handle(self, consumed: ConsumedBatch) -> int:
        """De-duplicate, evaluate, learn one consumed batch; returns events learned."""
        m = self.metrics
        topic = self.settings.topic
        m.batch_size.observe(len(consumed))
        for rej, *_ in consumed.rejected:
            m.events_rejected.labels(topic=topic, reason=rej.reason).inc()
        self.rejected += len(consumed.rejected)
        m.events_consumed.labels(topic=topic).inc(len(consumed.events))

        fresh = [ev for ev in consumed.events if self.dedup.add(ev.event_id, ev.ts)]
        dups = len(consumed.events) - len(fresh) + consumed.duplicates
        if dups:
            self.duplicates += dups
            m.duplicates_dropped.labels(topic=topic).inc(dups)
        if fresh:
            batch = Batch.from_columns(
                [ev.user_id for ev in fresh], [ev.item_id for ev in fresh],
                [ev.weight for ev in fresh], [ev.ts for ev in fresh],
            )
            self._batches += 1
            if self._batches % self.settings.eval_every == 0:
                self._evaluate(batch)
            else:
                self.history.extend(batch.users, batch.items)
            self._learn(batch)
            self.data_drift.update(batch.users, batch.items)
            n = len(batch)
            self.events_total += n
            self.events_learned += n
            wm = float(batch.timestamps.max())
            self.watermark = wm if self.watermark is None else max(self.watermark, wm)
            m.events_learned.labels(topic=topic).inc(n)
            self._expire_adaptations()
        # Offsets move for every record handled -- rejects and duplicates included.
        self.offsets.update(consumed.offsets)
        return len(fresh)

    def _evaluate(self, batch: Batch) -> None:
        m = self.metrics
        t0 = time.perf_counter()
        try:
            outcome = self.evaluator.process(batch, learn=False)
        except Exception:
            m.evaluate_errors.inc()
            log.exception("prequential evaluation failed on a batch (it is still learned)")
            return
        m.evaluate_duration.observe(time.perf_counter() - t0)
        times = batch.timestamps[outcome.positions]
        for name, out in outcome.models.items():
            m.evaluated.labels(model=name).inc(len(out.hits))
            m.hits.labels(model=name).inc(int(out.hits.sum()))
            fired = self.monitors[name].update_many(out.hits.tolist(), times.tolist())
            for det in fired:
                m.drift_alarms.labels(model=name, detector=det).inc()
            if fired:
                self._alarm_wall[name] = time.time()
                log.warning("concept drift on %s (%s) at event time %s", name,
                            ",".join(sorted(set(fired))), self.monitors[name].last_alarm_time)
                if self.settings.drift_adapt:
                    self._start_adaptation(name)

    def _learn(self, batch: Batch) -> None:
        for name, model in self.models.items():
            t0 = time.perf_counter()
            try:
                model.learn(batch)
            except Exception:
                self.metrics.learn_errors.labels(model=name).inc()
                log.exception("model %s failed to learn a batch of %d events", name, len(batch))
                continue
            self.metrics.learn_duration.labels(model=name).observe(time.perf_counter() - t0)

    # ------------------------------------------------------------------ drift adaptation

    def _start_adaptation(self, name: str) -> None:
        s = self.settings
        until = self.events_total + s.drift_adapt_events
        if name in self._adapt:
            self._adapt[name]["until"] = until  # still drifting: extend the span
            return
        model = self.models[name]
        originals: dict[str, float] = {}
        for attr, factor in [(a, s.drift_half_life_factor) for a in _HALF_LIFE_ATTRS] + [
            (a, s.drift_lr_factor) for a in _LEARNING_RATE_ATTRS
        ]:
            value = getattr(model, attr, None)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                originals[attr] = float(value)
                setattr(model, attr, type(value)(value * factor))
        if not originals:
            return
        self._adapt[name] = {"until": until, "originals": originals}
        self.metrics.drift_adaptations.labels(model=name).inc()
        self.metrics.drift_adapting.labels(model=name).set(1)
        log.warning("drift adaptation on %s for %d events: %s", name, s.drift_adapt_events,
                    {a: (v, getattr(model, a)) for a, v in originals.items()})

    def _expire_adaptations(self) -> None:
        for name in [n for n, ad in self._adapt.items() if self.events_total >= ad["until"]]:
            ad = self._adapt.pop(name)
            for attr, value in ad["originals"].items():
                setattr(self.models[name], attr, value)
            self.metrics.drift_adapting.labels(model=name).set(0)
            log.info("drift adaptation on %s ended: restored %s", name, ad["originals"])

    # ------------------------------------------------------------------ snapshot + commit

    def checkpoint(self, reason: str = "periodic") -> bool:
        """Snapshot if anything moved, then commit the snapshot's offsets. Never raises."""
        changed = self.offsets != self._snap_offsets or self.events_total != self._snap_events_total
        if not changed:
            self._last_snapshot_wall = self._last_snapshot_wall or time.time()
            return True
        offsets = dict(self.offsets)
        try:
            info = self.store.write(
                self.models,
                history=self.history,
                offsets=_nest(offsets),
                events_total=self.events_total,
                watermark=self.watermark,
                metrics=self._metric_summary(),
                extra_arrays={**self.dedup.to_arrays(), **self.data_drift.to_arrays()},
                extra_meta=self._extra_meta(),
            )
        except Exception:
            self.metrics.snapshot_errors.inc()
            self.metrics.loop_errors.labels(stage="snapshot").inc()
            log.exception("snapshot (%s) failed; offsets not committed", reason)
            self._last_snapshot_wall = time.time()  # retry at the next period, not at once
            return False
        self._snap_offsets = offsets
        self._snap_events_total = self.events_total
        self.snapshot_version = info.version
        self._last_snapshot_wall = time.time()
        m = self.metrics
        m.snapshot_duration.observe(info.seconds)
        m.snapshot_size.set(info.bytes)
        m.snapshot_version.set(info.version)
        m.snapshot_timestamp.set(self._last_snapshot_wall)
        log.debug("snapshot %d (%s): %d bytes in %.3f s", info.version, reason, info.bytes,
                  info.seconds)
        self._embedding_drift()
        if self.consumer is not None:
            assigned = self.consumer.assignment()
            to_commit = {p: o for p, o in offsets.items() if p in assigned}
            try:
                self.consumer.commit(to_commit)
                if to_commit:
                    m.offset_commits.inc()
            except Exception:
                m.loop_errors.labels(stage="commit").inc()
                # Harmless: the snapshot holds the offsets; a restart seeks to them.
                log.exception("offset commit after snapshot %d failed", info.version)
        return True

    def _embedding_drift(self) -> None:
        for name, model in self.models.items():
            try:
                vec = model.item_vectors()
                if vec is None:
                    continue
                cur = (list(model.items.ids), np.array(vec, copy=True))
                prev = self._prev_vectors.get(name)
                if prev is not None:
                    d = embedding_drift(prev[0], prev[1], cur[0], cur[1])
                    if d is not None:
                        self.metrics.embedding_drift.labels(model=name).set(d)
                self._prev_vectors[name] = cur
            except Exception:
                self.metrics.loop_errors.labels(stage="metrics").inc()
                log.exception("embedding drift of %s failed", name)

    def _metric_summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.models:
            try:
                roll = self.evaluator.rolling(name)
                tot = self.evaluator.totals(name)
            except Exception:
                continue
            out[name] = {
                "rolling": {k: _finite(roll.get(k)) for k in ("n", "hr", "ndcg", "coverage")},
                "total": {k: _finite(tot.get(k)) for k in ("n", "hr", "ndcg", "coverage")},
            }
        out["data_drift"] = self.data_drift.values()
        return out

    def _extra_meta(self) -> dict[str, Any]:
        return {
            "trainer": {"group": self.settings.group, "topic": self.settings.topic},
            "dedup": {"window_s": self.dedup.window_s, "max_ids": self.dedup.max_ids},
            "drift": {n: mon.state() for n, mon in self.monitors.items()},
            "adapt": self._adapt,
        }

    # ------------------------------------------------------------------ metrics + status

    def _update_gauges(self) -> None:
        m = self.metrics
        try:
            for name, model in self.models.items():
                m.users_known.labels(model=name).set(model.n_users)
                m.items_known.labels(model=name).set(model.n_items)
                roll = self.evaluator.rolling(name)
                tot = self.evaluator.totals(name)
                m.rolling_hr.labels(model=name).set(_finite(roll["hr"]) or 0.0)
                m.rolling_ndcg.labels(model=name).set(_finite(roll["ndcg"]) or 0.0)
                m.rolling_coverage.labels(model=name).set(_finite(roll["coverage"]) or 0.0)
                m.hr_total.labels(model=name).set(_finite(tot["hr"]) or 0.0)
                m.ndcg_total.labels(model=name).set(_finite(tot["ndcg"]) or 0.0)
                wall = self._alarm_wall.get(name)
                m.drift_last_alarm_age.labels(model=name).set(
                    time.time() - wall if wall is not None else -1.0
                )
            for dist, vals in self.data_drift.values().items():
                if vals["psi"] is not None:
                    m.data_drift_psi.labels(distribution=dist).set(vals["psi"])
                if vals["js"] is not None:
                    m.data_drift_js.labels(distribution=dist).set(vals["js"])
            m.events_total.set(self.events_total)
            if self.watermark is not None:
                m.watermark.set(self.watermark)
                m.event_time_lag.set(time.time() - self.watermark)
            if self.consumer is not None:
                for (t, p), lag in self.consumer.lag().items():
                    m.consumer_lag.labels(topic=t, partition=str(p)).set(lag)
        except Exception:
            m.loop_errors.labels(stage="metrics").inc()
            log.exception("updating gauges failed")

    def status_line(self) -> str:
        hr = []
        for name in self.models:
            try:
                v = _finite(self.evaluator.rolling(name)["hr"])
            except Exception:
                v = None
            hr.append(f"{name}={v:.3f}" if v is not None else f"{name}=-")
        return (
            f"events learned={self.events_learned} total={self.events_total} "
            f"dup={self.duplicates} rejected={self.rejected} rate={self._rate:.0f}/s "
            f"hr@{self.settings.k}[{' '.join(hr)}] snapshot={self.snapshot_version}"
        )


def _nest(offsets: Mapping[Partition, int]) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    for (t, p), o in offsets.items():
        out.setdefault(t, {})[p] = o
    return out


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
