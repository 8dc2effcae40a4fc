"""What one serving process holds: the loaded snapshot, hot reload, live context.

The loaded snapshot is a single reference (:attr:`ServingState.current`). A request
reads it once and uses that object to the end, so swapping in a new snapshot (a
plain attribute assignment, atomic in Python) never disturbs a request in flight.
New versions are loaded and verified *beside* the old one in a worker thread; a
snapshot that fails verification is refused and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from online_models.ownership import unowned_partitions
from online_models.roots import ExtraRoots
from online_models.snapshot import Snapshot, SnapshotError, SnapshotStore
from serving.content import ContentIndex, snapshot_features
from serving.ingest import EventProducer, Ingestor
from serving.live import LiveContext, LiveTail
from serving.metrics import BatcherCollector, ServingMetrics
from serving.ranking import LoadedSnapshot, ScoreBatcher
from serving.settings import ServeSettings
from stream.item_features import ItemFeaturesTail

__all__ = ["ServingState"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class ServingState:
    """Loaded snapshot + reload bookkeeping + live context + recent latencies.

    Parameters
    ----------
    settings
        The process settings.
    metrics
        The app's metrics.
    """

    def __init__(self, settings: ServeSettings, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = SnapshotStore(settings.snapshots)
        self.extras = ExtraRoots(settings.extra_snapshots)
        #: the main root's snapshot as loaded (``current`` serves it with the extras' models)
        self._main: Snapshot | None = None
        self.current: LoadedSnapshot | None = None
        self.refused: dict[int, str] = {}
        self.live = LiveContext(
            items_per_user=settings.live_items_per_user,
            max_users=settings.live_max_users,
            half_life_s=settings.live_popularity_half_life_s,
            max_items=settings.live_max_new_items,
        )
        self.tail: LiveTail | None = None
        self.ingestor = Ingestor(
            self._producer_factory if settings.bootstrap else None,
            queue_max=settings.ingest_queue_max,
            delivery_timeout_s=settings.delivery_timeout_s,
            metrics=metrics,
            probe=self._kafka_answers,
            probe_interval_s=2.0,
        )
        # A few dedicated threads (not the 40-thread default pool): each holds its own
        # score buffer, and more threads than cores would only queue on the same cores.
        # With batching a request thread mostly waits for its batch, so the pool is as
        # large as a batch (threads start on demand).
        self.batcher: ScoreBatcher | None = None
        threads = settings.rank_threads
        if settings.rank_batch and threads > 0:
            self.batcher = ScoreBatcher(
                settings.rank_batch_max,
                inline=settings.rank_batch_inline,
                slots=settings.rank_batch_slots,
            )
            threads = max(threads, settings.rank_batch_max)
            metrics.registry.register(BatcherCollector(self.batcher))
        self.rank_pool = (
            ThreadPoolExecutor(threads, thread_name_prefix="liverec-rank") if threads > 0 else None
        )
        self.content = ContentIndex()
        self._features_file_read = False
        self.features_tail: ItemFeaturesTail | None = None
        self.started_at = time.time()
        # Recent latencies per route template for the dashboard's p50/p99.
        self.latencies: dict[str, deque[float]] = {}

    # ------------------------------------------------------------------ loading
    def _swap(self, loaded: LoadedSnapshot) -> None:
        self.content.merge(snapshot_features(loaded.snapshot.models))
        self.metrics.content_items.set(len(self.content))
        self.current = loaded
        # A snapshot is ~10^5-10^6 long-lived Python objects (id maps, histories); a
        # full collection walking them stalls every request for a long time (measured
        # 0.8 s at 100k items on the shared box). Frozen objects are still freed by
        # refcount when the snapshot is dropped; only cyclic garbage among them leaks.
        gc.freeze()
        self.metrics.snapshot_version.set(loaded.version)
        self.metrics.snapshot_loaded_timestamp.set(loaded.loaded_at)
        self.metrics.reloads.labels(outcome="ok").inc()
        log.info(
            "serving snapshot %d (models %s)",
            loaded.version,
            sorted(loaded.manifest.get("models", {})),
        )

    def _wrap(self, snap: Snapshot) -> LoadedSnapshot:
        s = self.settings
        return LoadedSnapshot(
            self.extras.compose(snap),
            s.default_model,
            s.model_fallbacks,
            ann=s.ann,
            ann_min_items=s.ann_min_items,
            ann_ef=s.ann_ef,
            previous=self.current,
            batcher=self.batcher,
        )

    def read_item_features_file(self) -> None:
        """Read ``settings.item_features`` once (at start-up; a bad file fails loudly)."""
        path = self.settings.item_features
        if path is None or self._features_file_read:
            return
        from online_models.datasets import read_item_texts

        n = self.content.update(read_item_texts(path, self.settings.item_features_preset))
        self._features_file_read = True
        self.metrics.content_items.set(len(self.content))
        log.info("item content of %d items from %s", n, path)

    def load_initial(self) -> bool:
        """Load the newest valid snapshot, if any. Returns whether one is loaded."""
        self.read_item_features_file()
        t0 = time.perf_counter()
        self.extras.poll()
        try:
            snap = self.store.load_latest_valid()
            if snap is None:
                return False
            loaded = self._wrap(snap)
        except Exception as exc:
            log.warning("no snapshot loaded yet: %s", exc)
            return False
        self.metrics.reload_seconds.observe(time.perf_counter() - t0)
        self._main = snap
        self._swap(loaded)
        return True

    def check_reload(self) -> bool:
        """Load ``LATEST`` if it names a new version; True when a new one was swapped in.

        Never raises: a corrupt snapshot is refused (and remembered, so it is not
        retried every tick) and the current one keeps serving. Also applies the item
        content read from the item-features topic since the last tick.
        """
        self.apply_item_features()
        try:
            latest = self.store.latest_version()
        except OSError as exc:
            log.warning("cannot read LATEST: %s", exc)
            return False
        if latest is None:
            return False
        cur, main = self.current, self._main
        if cur is None or main is None:
            return self.load_initial()
        extras_moved = self.extras.poll()
        main_moved = latest != main.version and latest not in self.refused
        if not main_moved and not extras_moved:
            return False
        t0 = time.perf_counter()
        try:
            if main_moved:
                main = self.store.load(latest)
            loaded = self._wrap(main)
        except Exception as exc:  # a half-written or surprising snapshot must not kill us
            self.metrics.reloads.labels(outcome="refused").inc()
            if not main_moved:
                log.exception("extra snapshot roots: new models not served, keeping %d "
                              "as it was", cur.version)
                return False
            known = isinstance(exc, (SnapshotError, ValueError))
            self.refused[latest] = str(exc) if known else f"{type(exc).__name__}: {exc}"
            log.warning("refused snapshot %d, keeping %d: %s", latest, cur.version, exc,
                        exc_info=not known)
            return False
        self.metrics.reload_seconds.observe(time.perf_counter() - t0)
        self._main = main
        self._swap(loaded)
        return True

    def refresh_indexes(self, now: float | None = None) -> bool:
        """Rebuild the current snapshot's ANN indexes once older than ``ann_rebuild_s``."""
        cur = self.current
        if cur is None or not cur.ann:
            return False
        now = time.time() if now is None else now
        if now - min(ix.built_at for ix in cur.ann.values()) < self.settings.ann_rebuild_s:
            return False
        cur.rebuild_indexes()
        return True

    # ------------------------------------------------------------------ live
    def start_tail(self) -> None:
        s = self.settings
        if not s.bootstrap:
            return

        def offsets() -> dict[int, int]:
            cur = self.current
            return cur.snapshot.offsets.get(s.topic, {}) if cur is not None else {}

        self.tail = LiveTail(
            s.kafka, s.topic, self.live, start_offsets=offsets,
            weights=s.kafka.event_weights, metrics=self.metrics,
        )
        self.tail.start()

    def start_features_tail(self) -> None:
        s = self.settings
        if not s.bootstrap or not s.item_features_topic or self.features_tail is not None:
            return
        self.features_tail = ItemFeaturesTail(s.kafka, s.item_features_topic,
                                              client_id="liverec-serving-features")
        self.features_tail.start()

    def apply_item_features(self) -> int:
        """Apply the item-features topic's updates read so far; returns how many."""
        tail = self.features_tail
        if tail is None or not tail.pending:
            return 0
        n = self.content.update(tail.drain())
        self.metrics.content_updates.inc(n)
        self.metrics.content_items.set(len(self.content))
        return n

    def _producer_factory(self) -> EventProducer:
        from stream.kafka import make_producer

        timeout_ms = max(1000, int(self.settings.delivery_timeout_s * 1000))
        return make_producer(
            self.settings.kafka, client_id="liverec-serving", max_block_ms=timeout_ms,
            delivery_timeout_ms=timeout_ms, linger_ms=2,
        )

    def _kafka_answers(self) -> bool:
        from stream.kafka import cluster_ready

        return cluster_ready(self.settings.kafka, timeout_ms=2000)

    def start_background(self) -> None:
        """Start the live tail and the event sender (both connect in the background)."""
        self.start_tail()
        self.start_features_tail()
        self.ingestor.start()

    async def rank(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the rank pool, in the request's context (its request id:
        ``run_in_executor`` does not carry it), so the event loop keeps answering while
        a model scores; inline when ``rank_threads`` is 0."""
        if self.rank_pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(
            self.rank_pool, contextvars.copy_context().run, fn, *args)

    def stop(self) -> None:
        if self.tail is not None:
            self.tail.stop()
        if self.features_tail is not None:
            self.features_tail.stop()
        self.ingestor.stop()
        if self.rank_pool is not None:
            self.rank_pool.shutdown(wait=False, cancel_futures=True)
        if self.batcher is not None:
            self.batcher.stop()

    # ------------------------------------------------------------------ health
    def dependencies(self) -> tuple[bool, dict[str, dict[str, object]]]:
        """(ready, each dependency's state); also sets ``liverec_serving_degraded``.

        Ready needs a loaded snapshot and, with a bootstrap configured and
        ``ready_requires_kafka``, a connected live tail and event producer. An extra
        snapshot root without a valid snapshot is reported (degraded) but does not
        make the server unready: the main root's models serve.
        """
        s = self.settings
        cur = self.current
        deps: dict[str, dict[str, object]] = {
            "snapshot": (
                {"state": "loaded", "version": cur.version}
                if cur is not None
                else {"state": "missing", "reason": f"no valid snapshot under {s.snapshots}"}
            )
        }
        degraded = {"no_snapshot": cur is None}
        unowned = self._unowned_partitions()
        if unowned is not None:
            deps["partitions"] = {"state": "unowned" if unowned else "owned"}
            if unowned:
                deps["partitions"]["unowned"] = {
                    str(p): (None if age is None else round(age, 1))
                    for p, age in unowned.items()}
                deps["partitions"]["reason"] = (
                    f"no trainer heartbeat for over {s.partition_owner_timeout_s:.0f} s: "
                    "these partitions' users are not being learned")
        degraded["partition_unowned"] = bool(unowned)
        self.metrics.partitions_unowned.set(len(unowned or {}))
        missing = [str(st.root) for st in self.extras.stores if st.root not in self.extras.loaded]
        if s.extra_snapshots:
            deps["extra_snapshots"] = {
                "state": "missing" if missing else "loaded",
                "versions": {str(r): snap.version for r, snap in self.extras.loaded.items()},
            }
            if missing:
                deps["extra_snapshots"]["reason"] = (
                    f"no valid snapshot under {', '.join(missing)}: its models are not "
                    "served (the main root's are)")
        degraded["extra_snapshot_missing"] = bool(missing)
        if s.bootstrap:
            tail = self.tail
            tail_state = tail.state if tail is not None else "stopped"
            deps["kafka_tail"] = {"state": tail_state, "topic": s.topic}
            if tail is not None and tail.lag is not None:
                deps["kafka_tail"]["lag_messages"] = tail.lag
            if tail_state != "connected":
                deps["kafka_tail"]["reason"] = tail.reason if tail is not None else "not started"
            ing = self.ingestor
            deps["kafka_producer"] = {"state": ing.state, "queued": ing.queued}
            if ing.state != "connected":
                deps["kafka_producer"]["reason"] = ing.reason
            degraded["kafka_tail_disconnected"] = tail_state != "connected"
            degraded["kafka_producer_unavailable"] = ing.state != "connected"
        else:
            reason = "no Kafka bootstrap configured: no live context, POST /v1/events answers 503"
            deps["kafka_tail"] = {"state": "disabled", "reason": reason}
            deps["kafka_producer"] = {"state": "disabled", "reason": reason}
            degraded["kafka_tail_disconnected"] = False
            degraded["kafka_producer_unavailable"] = False
        for reason, on in degraded.items():
            self.metrics.degraded.labels(reason=reason).set(1.0 if on else 0.0)
        kafka_down = degraded["kafka_tail_disconnected"] or degraded["kafka_producer_unavailable"]
        ready = cur is not None and not (kafka_down and s.ready_requires_kafka)
        return ready, deps

    def _unowned_partitions(self) -> dict[int, float | None] | None:
        """Unowned partitions of a scale-out location (None: not a scale-out location)."""
        root = self.settings.snapshots
        if not (root / "partitions").is_dir():
            return None
        cur = self.current
        known: list[int] = []
        if cur is not None:
            parts = cur.manifest.get("extra_meta", {}).get("scale_out", {}).get("partitions", {})
            known = [int(p) for p in parts]
        try:
            return unowned_partitions(root, self.settings.partition_owner_timeout_s, known)
        except OSError:
            log.warning("cannot read partition heartbeats under %s", root, exc_info=True)
            return None

    # ------------------------------------------------------------------ gauges
    def update_gauges(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.dependencies()
        cur = self.current
        if cur is None:
            return
        if cur.created_at is not None:
            self.metrics.snapshot_age.set(now - cur.created_at)
        if cur.watermark is not None:
            self.metrics.freshness.set(now - cur.watermark)
        self.metrics.live_users.set(len(self.live))

    def observe_latency(self, route: str, seconds: float) -> None:
        q = self.latencies.get(route)
        if q is None:
            q = self.latencies[route] = deque(maxlen=2000)
        q.append(seconds)

    def latency_quantiles(self, route: str) -> tuple[float | None, float | None]:
        q = self.latencies.get(route)
        if not q:
            return None, None
        arr = np.fromiter(q, np.float64, count=len(q))
        p50, p99 = np.quantile(arr, [0.5, 0.99])
        return float(p50), float(p99)
