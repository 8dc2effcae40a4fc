"""What one serving process holds: the loaded snapshot, hot reload, live context.

The loaded snapshot is a single reference (:attr:`ServingState.current`). A request
reads it once and uses that object to the end, so swapping in a new snapshot (a
plain attribute assignment, atomic in Python) never disturbs a request in flight.
New versions are loaded and verified *beside* the old one in a worker thread; a
snapshot that fails verification is refused and the old one keeps serving. A refused
version is tried again later (:mod:`online_models.refusals`: a doubling delay, or at
once when its files change), and while ``LATEST`` names it ``/readyz`` says so
(degraded, still ready: see :meth:`ServingState.dependencies`). A new snapshot that
looks like a trainer that started over (a lower version, or under half the learned
events) is loaded all the same, with a warning and
``liverec_serving_snapshot_regressions_total``. The snapshot roots are only read:
until one exists the server waits for it, as for a first snapshot.
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
from online_models.refusals import Fingerprint, Refusal, Refusals
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
    clock
        Monotonic seconds that time the retries of refused versions (for tests).
    """

    def __init__(self, settings: ServeSettings, metrics: ServingMetrics, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.metrics = metrics
        # Read only: never created here (a read-only mount, a mistyped path).
        self.store = SnapshotStore(settings.snapshots, create=False)
        self.extras = ExtraRoots(settings.extra_snapshots, clock=clock)
        #: the main root's snapshot as loaded (``current`` serves it with the extras' models)
        self._main: Snapshot | None = None
        self.current: LoadedSnapshot | None = None
        #: main-root versions refused (version -> why), each with its retry schedule
        self.refused: Refusals[int] = Refusals(clock=clock)
        #: the main root's ``LATEST`` at the last check (None: none yet)
        self.latest_seen: int | None = None
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
        from online_models.item_texts import read_item_texts

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
        self.refused.forget_where(lambda v: v <= snap.version)
        self._swap(loaded)
        return True

    def load_at_start(self) -> bool:
        """The server's first load: :meth:`load_initial`, recording a refusal as
        :meth:`check_reload` does, so the first ticks wait for their turn instead of
        reading (and logging) the same refused versions again at once."""
        try:
            latest = self.store.latest_version()
        except OSError:
            latest = None  # check_reload says why, on its first tick
        return self.load_initial() if latest is None else self._load_first(latest)

    def check_reload(self) -> bool:
        """Load ``LATEST`` if it names a new version; True when a new one was swapped in.

        Never raises: a corrupt snapshot is refused and the current one keeps serving.
        A refused version is tried again when :class:`~online_models.refusals.Refusals`
        says it is due (a doubling delay, or its files changed), not every tick; each
        attempt counts once in ``liverec_serving_snapshot_reloads_total{outcome=
        "refused"}``. Also applies the item content read from the item-features topic
        since the last tick.
        """
        self.apply_item_features()
        try:
            latest = self.store.latest_version()
        except OSError as exc:
            log.warning("cannot read LATEST: %s", exc)
            return False
        self.latest_seen = latest
        if latest is None:
            return False
        cur, main = self.current, self._main
        if cur is None or main is None:
            return self._load_first(latest)
        extras_before = dict(self.extras.loaded)
        extras_moved = self.extras.poll()
        if extras_moved:
            for root, snap in self.extras.loaded.items():
                prev = extras_before.get(root)
                if prev is not None and prev is not snap:
                    self._check_regression(prev, snap, f"extra snapshot root {root}")
        fingerprint = self.store.fingerprint(latest) if latest != main.version else ()
        main_moved = latest != main.version and self.refused.due(latest, fingerprint)
        if not main_moved and not extras_moved:
            return False
        t0 = time.perf_counter()
        new_main = main
        try:
            if main_moved:
                new_main = self.store.load(latest)
            loaded = self._wrap(new_main)
        except Exception as exc:  # a half-written or surprising snapshot must not kill us
            self.metrics.reloads.labels(outcome="refused").inc()
            if not main_moved:
                log.exception("extra snapshot roots: new models not served, keeping %d "
                              "as it was", cur.version)
                return False
            self._refuse(latest, exc, fingerprint, cur.version)
            if not extras_moved:
                return False
            # The extra roots moved too: serve their new models beside the main
            # snapshot already served (they would wait for the next main version else).
            new_main = main
            try:
                loaded = self._wrap(main)
            except Exception:
                self.metrics.reloads.labels(outcome="refused").inc()
                log.exception("extra snapshot roots: new models not served, keeping %d "
                              "as it was", cur.version)
                return False
        self.metrics.reload_seconds.observe(time.perf_counter() - t0)
        if new_main is not main:
            self.refused.forget_where(lambda v: v <= new_main.version)
            self._check_regression(main, new_main, "snapshot root "
                                   f"{self.settings.snapshots}")
        self._main = new_main
        self._swap(loaded)
        return True

    def _load_first(self, latest: int) -> bool:
        """Nothing is served yet: :meth:`load_initial`, and when no version verifies,
        refuse ``latest`` so that the next try waits for its schedule (or a change of
        its files, or a new version) instead of re-reading every version each tick."""
        fingerprint = self.store.fingerprint(latest)
        if not self.refused.due(latest, fingerprint):
            return False
        if self.load_initial():
            return True
        self.metrics.reloads.labels(outcome="refused").inc()
        why = self.store.refusals
        newest = f"; the newest: {why[max(why)]}" if why else ""
        older = f" (the log says why for the {len(why) - 1} older)" if len(why) > 1 else ""
        r = self.refused.refuse(latest, f"no version verifies{newest}{older}", fingerprint)
        log.warning("no snapshot under %s verifies (LATEST names %d, attempt %d): nothing "
                    "served yet; trying again in %.0f s, once its files change or a new "
                    "version is published", self.settings.snapshots, latest, r.attempts,
                    self.refused.retry_in(latest) or 0.0)
        return False

    def _refuse(self, version: int, exc: Exception, fingerprint: Fingerprint,
                serving: int) -> None:
        """Record (and log) a refused attempt at ``version`` while ``serving`` serves."""
        known = isinstance(exc, (SnapshotError, ValueError))
        r = self.refused.refuse(version, str(exc) if known else f"{type(exc).__name__}: {exc}",
                                fingerprint)
        log.warning("refused snapshot %d (attempt %d), keeping %d: %s; trying it again in "
                    "%.0f s, or once its files change", version, r.attempts, serving, exc,
                    self.refused.retry_in(version) or 0.0, exc_info=not known)

    def _check_regression(self, old: Snapshot, new: Snapshot, where: str) -> None:
        """Warn (and count) when ``new``, just loaded in place of ``old``, looks like a
        trainer that started over: a lower version, or under half the learned events.

        It is served all the same: an operator may have reset the model on purpose,
        and a refusal here would pin the replicas to a model nobody trains any more.
        """
        why: list[str] = []
        if new.version < old.version:
            self.metrics.regressions.labels(reason="version_lower").inc()
            why.append(f"the version went down from {old.version} to {new.version}")
        old_events, new_events = _events(old), _events(new)
        if old_events is not None and new_events is not None and 2 * new_events < old_events:
            self.metrics.regressions.labels(reason="events_fell").inc()
            why.append(f"its learned events fell from {old_events} to {new_events} "
                       "(under half)")
        if why:
            log.warning(
                "%s: snapshot %d replaces %d although %s: this looks like a trainer that "
                "started over from an empty model (it lost its snapshots, or LATEST was "
                "moved back). Serving it anyway (a reset on purpose looks the same). "
                "Check the trainer's log for a start without a snapshot and that its "
                "--snapshots directory survived the restart; /v1/model shows events_total.",
                where, new.version, old.version, " and ".join(why))

    def refused_latest(self) -> tuple[int, Refusal] | None:
        """The version ``LATEST`` named at the last check and its refusal, when it is
        refused (and the served main snapshot is another); else None."""
        latest, main = self.latest_seen, self._main
        r = None if latest is None else self.refused.refusal(latest)
        if latest is None or r is None or (main is not None and main.version == latest):
            return None
        return latest, r

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
        """Stop the background work, saying what the wait is for."""
        t0 = time.monotonic()
        log.info("stopping: the live-context tail, then the event producer's pending "
                 "deliveries (up to 5 s each)")
        if self.tail is not None:
            self.tail.stop()
        if self.features_tail is not None:
            self.features_tail.stop()
        self.ingestor.stop()
        if self.rank_pool is not None:
            self.rank_pool.shutdown(wait=False, cancel_futures=True)
        if self.batcher is not None:
            self.batcher.stop()
        log.info("stopped in %.1f s", time.monotonic() - t0)

    # ------------------------------------------------------------------ health
    def dependencies(self) -> tuple[bool, dict[str, dict[str, object]]]:
        """(ready, each dependency's state); also sets ``liverec_serving_degraded``.

        Ready needs a loaded snapshot and, with a bootstrap configured and
        ``ready_requires_kafka``, a connected live tail and event producer. An extra
        snapshot root without a valid snapshot is reported (degraded) but does not
        make the server unready: the main root's models serve.

        Likewise a refused newest version (``LATEST`` names a version that did not
        verify: state ``refused``, with the reason and when it is tried again) is
        degraded but ready: the replica still answers from the last valid snapshot,
        which is what refusing is for. Every replica reads the same location and
        refuses the same version, so a 503 here would take them all out of rotation
        at once over one bad snapshot. Alert on ``liverec_serving_degraded
        {reason="snapshot_refused"}`` instead.
        """
        s = self.settings
        cur = self.current
        deps: dict[str, dict[str, object]] = {"snapshot": self._snapshot_dependency()}
        degraded = {"no_snapshot": cur is None,
                    "snapshot_refused": deps["snapshot"]["state"] == "refused"}
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
        missing = [st.root for st in self.extras.stores if st.root not in self.extras.loaded]
        refused = {root: vr for root, vr in self.extras.refused_latest().items()
                   if root not in missing}
        if s.extra_snapshots:
            deps["extra_snapshots"] = {
                "state": "missing" if missing else ("refused" if refused else "loaded"),
                "versions": {str(r): snap.version for r, snap in self.extras.loaded.items()},
            }
            why = []
            if missing:
                absent = [r for r in missing if not r.exists()]
                why.append(
                    f"no valid snapshot under {', '.join(map(str, missing))}"
                    + (f" ({', '.join(map(str, absent))}: does not exist yet, waited for)"
                       if absent else "")
                    + ": its models are not served (the main root's are)")
            if refused:
                deps["extra_snapshots"]["refused"] = {
                    str(root): v for root, (v, _) in refused.items()}
            for root, (v, r) in refused.items():
                why.append(f"{root}: " + self._refusal_reason(
                    r, v, self.extras.loaded[root].version,
                    self.extras.refused.retry_in((root, v)) or 0.0))
            if why:
                deps["extra_snapshots"]["reason"] = "; ".join(why)
        degraded["extra_snapshot_missing"] = bool(missing)
        degraded["snapshot_refused"] |= bool(refused)
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

    def _snapshot_dependency(self) -> dict[str, object]:
        """``/readyz``'s ``snapshot`` entry: loaded, refused (a newer one) or missing."""
        root, cur = self.settings.snapshots, self.current
        if cur is None:
            if not root.exists():
                return {"state": "missing",
                        "reason": f"{root} does not exist yet: waiting for a trainer to "
                                  "create it (the server never creates it)"}
            reason = f"no valid snapshot under {root}"
            latest = self.latest_seen
            r = None if latest is None else self.refused.refusal(latest)
            if latest is not None and r is not None:
                retry = self.refused.retry_in(latest) or 0.0
                reason += (f" ({r.reason}; trying again in {retry:.0f} s or once LATEST's "
                           "files change)")
            return {"state": "missing", "reason": reason}
        refused = self.refused_latest()
        if refused is None:
            return {"state": "loaded", "version": cur.version}
        version, r = refused
        retry = self.refused.retry_in(version) or 0.0
        return {
            "state": "refused",
            "version": cur.version,
            "latest": version,
            "attempts": r.attempts,
            "retry_in_s": round(retry, 1),
            "reason": self._refusal_reason(r, version, cur.version, retry),
        }

    @staticmethod
    def _refusal_reason(r: Refusal, version: int, serving: int, retry: float) -> str:
        """One line on a refused newest version (tried again in ``retry`` s), for
        ``/readyz``."""
        return (f"LATEST names snapshot {version}, which was refused ({r.reason}); "
                f"serving {serving} meanwhile, trying {version} again in {retry:.0f} s "
                "or once its files change")

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


def _events(snap: Snapshot) -> int | None:
    """The learned-event count a snapshot's manifest records (None: not recorded)."""
    value = snap.manifest.get("events_total")
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
