"""Live user context: each user's recent items and a popularity bump, fed from the topic.

Every server replica tails *all* partitions of the click topic itself (``assign``,
no consumer group, nothing committed), so a click is excluded from -- and used as
context for -- the user's next request within about a second, however rarely the
trainer writes snapshots. Model parameters still come only from snapshots.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from online_models.base import UserHistory
from stream.events import ClickEvent, Rejected, decode
from stream.kafka import (
    Consumer,
    ConsumerOptions,
    Partition,
    as_settings,
    make_consumer,
    run_with_backoff,
)
from stream.settings import KafkaSettings

if TYPE_CHECKING:
    from serving.metrics import ServingMetrics

__all__ = ["LiveContext", "LiveTail"]

log = logging.getLogger(__name__)


class LiveContext:
    """Thread-safe recent items per user (bounded) plus a decaying per-item click bump.

    The bump feeds the popular items every never-seen user gets, so one caller must
    not be able to steer it by repetition: an event id seen among the last
    ``max_event_ids`` is dropped (a producer's retry, a replayed post), and one user
    adds to an item's bump at most the weight of their strongest event on it within a
    half-life (a view -> cart -> purchase funnel counts as its purchase; the 500th
    click counts nothing). The trainer's flood guard bounds what reaches the models.

    Parameters
    ----------
    items_per_user, max_users
        Bounds of the per-user memory (least recently active users are dropped).
    half_life_s
        Wall-clock half-life of the popularity bump.
    max_items
        Bound on the number of items with a bump (the weakest are dropped).
    max_event_ids, max_pairs
        Bounds of the recent event ids and (user, item) contributions remembered
        (the oldest are forgotten).

    Examples
    --------
    >>> ctx = LiveContext(items_per_user=2)
    >>> for item in ["a", "b", "c"]:
    ...     _ = ctx.observe("u", item, weight=1.0, now=0.0)
    >>> ctx.items("u"), round(ctx.bump("c", now=0.0), 3), ctx.bump("zz")
    (['b', 'c'], 1.0, 0.0)
    >>> for _ in range(100):
    ...     _ = ctx.observe("u", "c", weight=1.0, now=0.0)
    >>> ctx.observe("u", "c", weight=5.0, now=0.0, event_id="e1")
    True
    >>> ctx.observe("u", "c", weight=5.0, now=0.0, event_id="e1")  # a repeated id
    False
    >>> round(ctx.bump("c", now=0.0), 3)  # the strongest event, not the count
    5.0
    """

    def __init__(
        self,
        items_per_user: int = 50,
        max_users: int = 200_000,
        half_life_s: float = 600.0,
        max_items: int = 10_000,
        max_event_ids: int = 100_000,
        max_pairs: int = 200_000,
    ) -> None:
        self._history = UserHistory(max_items=items_per_user, max_users=max_users)
        self._bump: dict[str, tuple[float, float]] = {}
        self._half_life_s = half_life_s
        self._decay = math.log(2.0) / half_life_s
        self._event_ids: OrderedDict[str, None] = OrderedDict()
        self._max_event_ids = max_event_ids
        #: (user, item) -> (the weight it added to the item's bump, since when)
        self._pairs: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self._max_pairs = max_pairs
        self._max_items = max_items
        self._lock = threading.Lock()
        self.events = 0
        self.last_event_wall: float | None = None

    def __len__(self) -> int:
        return len(self._history)

    def observe(self, user: str, item: str, weight: float = 1.0, now: float | None = None,
                event_id: str | None = None) -> bool:
        """Take one click in; False when its event id was seen already (dropped)."""
        now = time.time() if now is None else now
        with self._lock:
            if event_id is not None:
                if event_id in self._event_ids:
                    return False
                self._event_ids[event_id] = None
                if len(self._event_ids) > self._max_event_ids:
                    self._event_ids.popitem(last=False)
            self._history.append(user, item)
            added = self._pair_gain(user, item, weight, now)
            if added > 0:
                value, t = self._bump.get(item, (0.0, now))
                self._bump[item] = (value * math.exp(-self._decay * (now - t)) + added, now)
                if len(self._bump) > self._max_items:
                    self._evict(now)
            self.events += 1
            self.last_event_wall = now
            return True

    def _pair_gain(self, user: str, item: str, weight: float, now: float) -> float:
        """What ``user``'s event of ``weight`` on ``item`` adds to its bump: beyond the
        strongest of theirs on it within the last half-life, nothing."""
        key = (user, item)
        given, since = self._pairs.pop(key, (0.0, now))
        if now - since > self._half_life_s:
            given, since = 0.0, now
        gain = max(0.0, weight - given)
        self._pairs[key] = (given + gain, since)
        if len(self._pairs) > self._max_pairs:
            self._pairs.popitem(last=False)
        return gain

    def _evict(self, now: float) -> None:
        # Drop the weaker half at once so eviction is amortised, not per event.
        ranked = sorted(self._bump.items(), key=lambda kv: self._value(kv[1], now))
        for item, _ in ranked[: len(ranked) // 2]:
            del self._bump[item]

    def _value(self, entry: tuple[float, float], now: float) -> float:
        value, t = entry
        return value * math.exp(-self._decay * max(0.0, now - t))

    def items(self, user: str) -> list[str]:
        """The user's live items, oldest first."""
        with self._lock:
            return self._history.get(user)

    def bump(self, item: str, now: float | None = None) -> float:
        """Decayed live click weight of ``item`` (0.0 if none)."""
        now = time.time() if now is None else now
        with self._lock:
            entry = self._bump.get(item)
        return 0.0 if entry is None else self._value(entry, now)

    def bumps(self, now: float | None = None) -> dict[str, float]:
        """Every item's decayed live bump."""
        now = time.time() if now is None else now
        with self._lock:
            entries = list(self._bump.items())
        return {item: self._value(e, now) for item, e in entries}


class LiveTail:
    """Background thread reading every partition of ``topic`` into a :class:`LiveContext`.

    Starts at ``start_offsets`` (normally the loaded snapshot's: clicks after it are
    exactly what the snapshot does not know yet) or at the end of each partition.
    Never commits. Errors are logged and retried with backoff; they never end the
    thread, so a server started before Kafka connects once Kafka is up, and one
    whose broker went away reconnects when it is back.

    Attributes
    ----------
    state
        ``connecting`` (no partitions assigned yet), ``connected`` or
        ``disconnected`` (the last attempt failed; retrying).
    reason
        Why it is not ``connected`` (the last error), else ``""``.
    """

    def __init__(
        self,
        settings: KafkaSettings | str,
        topic: str,
        context: LiveContext,
        *,
        start_offsets: Callable[[], Mapping[int, int]] | None = None,
        weights: Mapping[str, float] | None = None,
        metrics: ServingMetrics | None = None,
        request_timeout_s: float = 5.0,
    ) -> None:
        self.settings = as_settings(settings)
        self.topic = topic
        self.context = context
        self.start_offsets = start_offsets
        self.weights = dict(weights or {})
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.lag: int | None = None
        self.assigned = threading.Event()
        self.state = "connecting"
        self.reason = "not connected yet"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liverec-live-tail", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        run_with_backoff(self._stop, self._tail, self._disconnected)

    def _disconnected(self, exc: Exception, wait: float) -> None:
        self.state, self.reason = "disconnected", f"{type(exc).__name__}: {exc}"
        # Unknown until it reconnects: the last figure drew a frozen "current" lag.
        self.lag = None
        if self.metrics is not None:
            self.metrics.live_lag.set(float("nan"))
        log.warning("live tail error (%s); retrying in %.1fs", exc, wait)

    def _tail(self) -> None:
        consumer = make_consumer(self.settings, ConsumerOptions(
            client_id="liverec-serving-tail", fetch_max_wait_ms=100))
        try:
            parts: set[int] = set()
            while not parts and not self._stop.is_set():
                parts = consumer.partitions_for(self.topic)
                if not parts:
                    self.reason = f"topic {self.topic!r} has no partitions (yet)"
                    self._stop.wait(0.5)
            if self._stop.is_set() or not parts:
                return
            tps = [(self.topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            self._seek(consumer, tps)
            self.state, self.reason = "connected", ""
            self.assigned.set()
            last_lag = 0.0
            while not self._stop.is_set():
                for rec in consumer.poll(2000, 0.1):
                    self._apply(rec.value)
                now = time.monotonic()
                if now - last_lag > 2.0:
                    last_lag = now
                    # A broker that went away shows here: poll() just returns nothing,
                    # while the end-offset request fails within request_timeout_s.
                    self._measure_lag(consumer, tps)
        finally:
            consumer.close()

    def _seek(self, consumer: Consumer, tps: list[Partition]) -> None:
        wanted = dict(self.start_offsets()) if self.start_offsets else {}
        begin = consumer.beginning_offsets(tps)
        end = consumer.end_offsets(tps)
        for tp in tps:
            off = wanted.get(tp[1])
            if off is None:
                consumer.seek(tp, end[tp])
            else:
                consumer.seek(tp, min(max(off, begin[tp]), end[tp]))

    def _measure_lag(self, consumer: Consumer, tps: list[Partition]) -> None:
        end = consumer.end_offsets(tps)
        positions = {tp: consumer.position(tp) for tp in tps}
        self.lag = int(sum(max(0, end[tp] - pos) for tp, pos in positions.items()
                           if pos is not None))
        if self.metrics is not None:
            self.metrics.live_lag.set(self.lag)
            self.metrics.live_users.set(len(self.context))

    def _apply(self, raw: bytes | None) -> None:
        ev = decode(raw)
        if isinstance(ev, Rejected):
            if self.metrics is not None:
                self.metrics.live_events.labels(outcome="rejected").inc()
            return
        assert isinstance(ev, ClickEvent)
        fresh = self.context.observe(ev.user_id, ev.item_id,
                                     self.weights.get(ev.event_type, 1.0),
                                     event_id=ev.event_id or None)
        if self.metrics is not None:
            self.metrics.live_events.labels(outcome="ok" if fresh else "duplicate").inc()
