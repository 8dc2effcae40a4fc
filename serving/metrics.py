"""Prometheus metrics of the serving process, one :class:`CollectorRegistry` per app.

Labels are bounded: route *templates* (never concrete paths with ids), methods,
status codes, and API key *names* (never keys; at most :data:`MAX_KEY_LABELS` of them,
the rest as ``_other``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stream.buildinfo import register_build_info

__all__ = [
    "DEGRADED_REASONS",
    "MAX_KEY_LABELS",
    "REGRESSION_REASONS",
    "BatcherCollector",
    "ServingMetrics",
    "method_label",
]

#: Every ``reason`` of ``liverec_serving_degraded`` (one 0/1 series each).
DEGRADED_REASONS: tuple[str, ...] = (
    "no_snapshot",
    "kafka_tail_disconnected",
    "kafka_producer_unavailable",
    "partition_unowned",
    "extra_snapshot_missing",
    "snapshot_refused",
)

#: distinct ``key`` label values (key names and ``anonymous``) a server exports; the
#: keys seen after these count under ``_other`` (a key file of thousands of customers'
#: keys must not make thousands of series per metric)
MAX_KEY_LABELS = 100

#: Every ``reason`` of ``liverec_serving_snapshot_regressions_total``.
REGRESSION_REASONS: tuple[str, ...] = ("version_lower", "events_fell")


class BatcherStats(Protocol):
    """The counters a micro-batching scorer keeps (``serving.batcher.ScoreBatcher``)."""

    batches: int
    queries: int
    largest: int
    failed_batches: int
    inline_queries: int


class BatcherCollector(Collector):
    """Exports a scorer's own counters at scrape time (no double bookkeeping).

    >>> from types import SimpleNamespace
    >>> r = CollectorRegistry()
    >>> stats = SimpleNamespace(batches=3, queries=10, largest=5, failed_batches=0,
    ...                         inline_queries=7)
    >>> r.register(BatcherCollector(stats))
    >>> r.get_sample_value("liverec_serving_rank_batched_queries_total")
    10.0
    """

    def __init__(self, stats: BatcherStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield CounterMetricFamily(
            "liverec_serving_rank_batches",
            "Micro-batched scoring products run (one pass over the item factors each).",
            value=float(s.batches),
        )
        yield CounterMetricFamily(
            "liverec_serving_rank_batched_queries",
            "Exact queries scored in micro-batches (divide by batches for the mean size).",
            value=float(s.queries),
        )
        yield CounterMetricFamily(
            "liverec_serving_rank_inline_queries",
            "Exact queries scored alone in their own thread (nothing else pending).",
            value=float(s.inline_queries),
        )
        yield CounterMetricFamily(
            "liverec_serving_rank_failed_batches",
            "Micro-batches whose product failed (their queries were scored one by one).",
            value=float(s.failed_batches),
        )
        yield GaugeMetricFamily(
            "liverec_serving_rank_largest_batch",
            "Largest micro-batch since start.",
            value=float(s.largest),
        )


# Sub-millisecond buckets: the in-process ranking and the bare HTTP floor live there.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class ServingMetrics:
    """All ``liverec_serving_*`` series of one app.

    Examples
    --------
    >>> m = ServingMetrics()
    >>> m.responses.labels(route="/healthz", method="GET", status="200").inc()
    >>> m.registry.get_sample_value(
    ...     "liverec_serving_responses_total",
    ...     {"route": "/healthz", "method": "GET", "status": "200"})
    1.0
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        register_build_info(r, "server")
        self.request_seconds = Histogram(
            "liverec_serving_request_duration_seconds",
            "HTTP request latency by route template.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.responses = Counter(
            "liverec_serving_responses_total",
            "HTTP responses by route template and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.rank_seconds = Histogram(
            "liverec_serving_rank_duration_seconds",
            "In-process scoring + top-k time per recommendation (not counting a wait for "
            "another request's scoring: serving.ranking.PYTHON_SCORING), by what ranked: "
            "the model, or live_popularity / live_clicks for a fallback answer.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "liverec_serving_fallbacks_total",
            "Recommendations answered with popular items (unknown user).",
            registry=r,
        )
        self.snapshot_version = Gauge(
            "liverec_serving_snapshot_version", "Version of the loaded snapshot.", registry=r
        )
        self.snapshot_loaded_timestamp = Gauge(
            "liverec_serving_snapshot_loaded_timestamp_seconds",
            "Wall time the loaded snapshot was swapped in.",
            registry=r,
        )
        self.snapshot_age = Gauge(
            "liverec_serving_snapshot_age_seconds",
            "Now minus the loaded snapshot's creation time.",
            registry=r,
        )
        self.freshness = Gauge(
            "liverec_serving_freshness_seconds",
            "Now minus the loaded snapshot's event-time watermark.",
            registry=r,
        )
        self.reloads = Counter(
            "liverec_serving_snapshot_reloads_total",
            "Snapshot reload attempts by outcome.",
            ["outcome"],
            registry=r,
        )
        for outcome in ("ok", "refused"):
            self.reloads.labels(outcome=outcome)
        self.regressions = Counter(
            "liverec_serving_snapshot_regressions_total",
            "Snapshots loaded although they look like a trainer that started over, by "
            "reason: a lower version than the one served before (version_lower), or under "
            "half its learned events (events_fell). Loaded anyway; the log says what to "
            "check.",
            ["reason"],
            registry=r,
        )
        for reason in REGRESSION_REASONS:
            self.regressions.labels(reason=reason)
        self.reload_seconds = Histogram(
            "liverec_serving_snapshot_load_duration_seconds",
            "Time to load and verify a snapshot.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.live_events = Counter(
            "liverec_serving_live_events_total",
            "Click events read from the topic into the live context, by outcome.",
            ["outcome"],
            registry=r,
        )
        for outcome in ("ok", "rejected", "duplicate"):
            self.live_events.labels(outcome=outcome)
        self.live_users = Gauge(
            "liverec_serving_live_users", "Users held in the live context.", registry=r
        )
        self.live_lag = Gauge(
            "liverec_serving_live_lag_messages",
            "Messages the live-context tail is behind the topic end.",
            registry=r,
        )
        self.content_items = Gauge(
            "liverec_serving_content_items",
            "Items with content (item-features file, topic and snapshot) the server holds.",
            registry=r,
        )
        self.content_updates = Counter(
            "liverec_serving_content_updates_total",
            "Item content records applied from the item-features topic.",
            registry=r,
        )
        self.ingested = Counter(
            "liverec_serving_ingested_events_total",
            "POST /v1/events outcomes (accepted or the reject reason).",
            ["outcome"],
            registry=r,
        )
        self.degraded = Gauge(
            "liverec_serving_degraded",
            "1 while the server runs without something it was configured to use "
            "(see /readyz for the detail).",
            ["reason"],
            registry=r,
        )
        for reason in DEGRADED_REASONS:
            self.degraded.labels(reason=reason)
        self.partitions_unowned = Gauge(
            "liverec_serving_partitions_unowned",
            "Input partitions of a scale-out snapshot location whose trainer heartbeat is "
            "older than partition_owner_timeout_s (their users are not being learned).",
            registry=r,
        )
        self.rate_limited = Counter(
            "liverec_serving_rate_limited",
            "Requests refused with 429 by scope (read, write, ops; auth: key checks).",
            ["scope"],
            registry=r,
        )
        self.auth_failures = Counter(
            "liverec_serving_auth_failures",
            "Requests refused for their API key or its absence (missing_key, unknown_key, "
            "wrong_scope, foreign_host, remote_client).",
            ["reason"],
            registry=r,
        )
        for scope in ("read", "write", "ops", "auth"):
            self.rate_limited.labels(scope=scope)
        for reason in ("missing_key", "unknown_key", "wrong_scope", "foreign_host",
                       "remote_client"):
            self.auth_failures.labels(reason=reason)
        self.key_events = Counter(
            "liverec_serving_key_events_total",
            "POST /v1/events events by caller (the API key's name, anonymous, or _other "
            "past the first 100 names): accepted (Kafka has them) or refused.",
            ["key", "outcome"],
            registry=r,
        )
        self.key_rate_limited = Counter(
            "liverec_serving_key_rate_limited_total",
            "Requests refused with 429 by caller (as liverec_serving_key_events_total) "
            "and scope.",
            ["key", "scope"],
            registry=r,
        )
        self._key_labels: set[str] = set()
        self.ingest_queue = Gauge(
            "liverec_serving_ingest_queue_events",
            "Events accepted by POST /v1/events waiting for the background sender.",
            registry=r,
        )
        self.ingest_delivery_seconds = Histogram(
            "liverec_serving_ingest_delivery_duration_seconds",
            "POST /v1/events: time from queueing to Kafka's acknowledgement.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def key_label(self, name: str) -> str:
        """``name`` as a ``key`` label: itself for the first :data:`MAX_KEY_LABELS`
        names seen, ``_other`` after them (no key can be named so: names begin with a
        letter or digit).

        >>> m = ServingMetrics()
        >>> m.key_label("shop-frontend"), m.key_label("anonymous")
        ('shop-frontend', 'anonymous')
        >>> [m.key_label(f"customer-{i}") for i in range(99)][-2:], m.key_label("anonymous")
        (['customer-97', '_other'], 'anonymous')
        """
        if name in self._key_labels:
            return name
        if len(self._key_labels) >= MAX_KEY_LABELS:
            return "_other"
        self._key_labels.add(name)
        return name

    def count_events(self, key: str, outcome: str, n: int = 1) -> None:
        """``n`` events of caller ``key`` had ``outcome`` (an ingested outcome:
        ``accepted`` or a refusal's reason)."""
        self.ingested.labels(outcome=outcome).inc(n)
        self.key_events.labels(key=self.key_label(key),
                               outcome="accepted" if outcome == "accepted" else "refused"
                               ).inc(n)


_METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(method: str) -> str:
    """An HTTP method as a bounded metric label: the standard ones, else ``other``.

    >>> method_label("GET"), method_label("BREW")
    ('GET', 'other')
    """
    return method if method in _METHODS else "other"
