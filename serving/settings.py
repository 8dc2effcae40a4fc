"""Typed settings of the serving process (env prefix ``LIVEREC_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stream.events import ID_CHARS_BOUND
from stream.logformat import log_level_name
from stream.settings import KafkaSettings

__all__ = ["ServeSettings"]


def cors_origin(value: str) -> str:
    """``value`` as the exact string a browser sends in ``Origin`` (CORS compares
    origins as strings): scheme and host lowercased, the scheme's default port
    dropped; ``*`` as is. Anything but ``scheme://host[:port]`` is refused.

    >>> cors_origin("HTTPS://Shop.Example.com:443"), cors_origin("http://localhost:3000")
    ('https://shop.example.com', 'http://localhost:3000')
    >>> cors_origin("https://shop.example.com/path")
    Traceback (most recent call last):
    ...
    ValueError: a CORS origin is scheme://host[:port] (http or https), not 'https://shop.example.com/path'
    """
    if value == "*":
        return value
    bad = ValueError(
        f"a CORS origin is scheme://host[:port] (http or https), not {value!r}")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise bad from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if (scheme not in ("http", "https") or not host or parts.username is not None
            or parts.password is not None or parts.path not in ("", "/") or parts.query
            or parts.fragment or value.endswith(("?", "#"))):
        raise bad
    if ":" in host:
        host = f"[{host}]"  # IPv6
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")


#: the largest ``k`` any request may ask for (the routes' schema bound; ``max_k`` may
#: lower it)
K_BOUND = 1000

class ServeSettings(BaseSettings):
    """Everything ``liverec serve`` needs, read from ``LIVEREC_*`` variables or passed in.

    Parameters
    ----------
    snapshots
        ``LIVEREC_SNAPSHOTS``: the trainer's snapshot root (holds ``LATEST``).
    extra_snapshots
        ``LIVEREC_EXTRA_SNAPSHOTS`` (comma-separated): roots of other trainers (say a
        ``seqnn`` trainer in its own consumer group) whose models are served beside
        the main root's (which wins a name clash).
    host, port
        Where uvicorn listens.
    kafka
        The shared :class:`~stream.settings.KafkaSettings` (``LIVEREC_KAFKA_BOOTSTRAP``
        or ``LIVEREC_BOOTSTRAP``, ``LIVEREC_TOPIC``, client, security, event
        weights). An empty bootstrap disables the live context tail and ``POST
        /v1/events`` answers 503. ``ServeSettings(bootstrap=..., topic=...)`` sets
        those two fields of it; :attr:`bootstrap` and :attr:`topic` read them.
    default_model
        Model used when a request names none; falls back through ``model_fallbacks``
        when the snapshot does not hold it (``ranked`` is not in the trainer's
        default mix: by default the hybrid answers).
    reload_interval_s
        How often ``LATEST`` is checked for a new version.
    live_items_per_user, live_max_users
        Bounds of the in-memory live context.
    live_popularity_half_life_s
        Wall-clock half-life of the live popularity bump.
    max_k
        Largest ``k`` a request may ask for (at most :data:`K_BOUND`, the routes'
        schema bound).
    max_body_bytes
        Largest accepted request body (``POST /v1/events``); a larger one gets 413
        before it is read or parsed.
    max_batch_events
        Most events one ``POST /v1/events`` may carry as a JSON array.
    max_url_bytes
        Longest accepted request target (path and query); longer ones get a JSON 414.
    max_header_bytes, max_headers
        The request head (request line and headers together) may hold at most
        ``max_url_bytes + max_header_bytes`` bytes and ``max_headers`` header fields;
        more gets a JSON 431 before any key check or routing.
    head_timeout_s
        Seconds a request head may take to arrive, from the connection's opening or the
        request's first byte: then a JSON 408 (a connection that sent nothing closes).
        Bounds how long a slow request head holds a connection (slowloris).
    body_timeout_s
        Seconds the body of ``POST /v1/events`` may take to arrive once its head has:
        then a JSON 408 (reason ``body_timeout``) and the connection closes.
    max_connections
        Most connections open at once; one more is answered a JSON 503 (reason
        ``too_many_connections``, with ``Retry-After: retry_after_s``) and closed at
        once, before it is read. It bounds the connections served, so idle or slow
        ones cannot hold every descriptor; a flood still costs one per connection
        while it is accepted and answered, which a reverse proxy in front bounds. The
        server raises its descriptor limit to this plus a margin where it may, and
        warns where not.
    forwarded_allow_ips
        Addresses of trusted reverse proxies (comma-separated; ``*`` for any) whose
        ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are believed. Unset (the default),
        those headers are ignored: the caller's address, which per-address rate limits
        key on, is the connection's. (uvicorn believes them from 127.0.0.1 by default,
        so any caller of a local proxy that passes the header on could pick its address.)
    delivery_timeout_s
        How long ``POST /v1/events`` waits for Kafka to acknowledge its events before
        answering 503 with ``Retry-After``. Sends run on a background thread; the
        request loop never waits on Kafka.
    ingest_queue_max
        Events waiting for the background sender; when full, ``POST /v1/events``
        answers 503 at once.
    retry_after_s
        ``Retry-After`` of a 503 from the write path.
    ready_requires_kafka
        With a bootstrap configured, ``/readyz`` answers 503 while the live tail or
        the producer is not connected (the body says which and why; a POST whose
        events went unacknowledged, with Kafka not answering the probe that follows,
        counts as not connected until a probe answers again). Set false to
        keep a replica in rotation for reads during a Kafka outage; the body and
        ``liverec_serving_degraded`` still say it is degraded.
    trainer_metrics_url
        The trainer's Prometheus ``/metrics`` URL, scraped for the dashboard.
    dashboard_interval_s, dashboard_points
        Sampling period and length of the dashboard's ring buffer.
    ann
        Rank factor models with an approximate (HNSW, ``hnswlib``) index instead of
        brute force. The index is built when a snapshot loads, which makes reloads of
        large catalogues slower; use it when brute force is too slow (about 1M items).
    ann_min_items, ann_ef
        With ``ann``: the catalogue size from which a factor model is ranked by the
        index (smaller ones stay exact), and the HNSW search breadth (recall vs time).
    ann_rebuild_s
        Age after which an index is rebuilt from the serving snapshot's factors. Until
        then swaps reuse it for candidates, rescored exactly with the new factors.
    rank_threads
        Worker threads that rank (numpy and hnswlib release the GIL there, so the
        event loop keeps answering meanwhile); 0 ranks inline on the event loop.
    rank_batch
        Exact factor scoring in micro-batches (``serving.batcher.ScoreBatcher``): one
        worker scores every query pending when it becomes free with one
        matrix-matrix product, one pass over the item factors for up to
        ``rank_batch_max`` requests. Same results as unbatched. Needs
        ``rank_threads > 0``; the rank pool then has ``max(rank_threads,
        rank_batch_max)`` threads, since a request waits for its batch in one.
    rank_batch_max
        Most queries scored together.
    rank_batch_inline
        With ``rank_batch``: a query arriving while fewer than
        ``rank_batch_slots`` products run and none is queued is scored in its own
        thread, without the hop to the worker.
    item_features, item_features_preset
        ``LIVEREC_ITEM_FEATURES``: an item content file (MovieLens ``movies.csv``, the
        Online Retail CSV, or a CSV with ``item_id`` and ``text`` columns) read at start
        through the preset (``movielens``, ``online-retail``, ``text``; None: from the
        header); see :mod:`serving.content`.
    item_features_topic
        ``LIVEREC_ITEM_FEATURES_TOPIC``: a compacted item-features topic (what
        ``liverec features publish`` writes, e.g. ``clicks.item_features``) read from
        its beginning and followed; needs a bootstrap. "" reads none.
    rank_batch_slots
        Most products at once (the worker's batch plus inline queries). 1 (default)
        scores strictly one product at a time; 2 lets two overlapping requests use
        both cores as without batching (its p99 was worse in BENCHMARKS.md, run F).

    Examples
    --------
    >>> s = ServeSettings(snapshots="/tmp/snaps", port=9000)
    >>> s.port, s.default_model, s.max_k
    (9000, 'ranked', 1000)
    """

    model_config = SettingsConfigDict(
        env_prefix="LIVEREC_", extra="ignore", populate_by_name=True
    )

    snapshots: Path = Path("snapshots")
    #: more snapshot roots, each written by a trainer of its own (``liverec train
    #: --models seqnn --group liverec-seqnn --snapshots ./snapshots-seqnn``): their
    #: models are served beside the main root's, each hot-reloaded from its own
    #: ``LATEST``; on a name clash the main root's model wins.
    #: ``LIVEREC_EXTRA_SNAPSHOTS`` takes a comma-separated list.
    extra_snapshots: Annotated[tuple[Path, ...], NoDecode] = ()
    #: scale-out locations: a partition whose trainer heartbeat is older than this is
    #: reported unowned (/readyz detail, ``liverec_serving_partitions_unowned``)
    partition_owner_timeout_s: float = Field(default=60.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    #: the learned re-ranker where a trainer learns it, else the hybrid. It is within 2% of
    #: the hybrid over the same components on both shared data sets (HR@10, whole files,
    #: session 43): ahead on Online Retail (0.3559 against 0.3519), behind on MovieLens
    #: in hash tie order (0.1589 with ``base="sum"``, MovieLens's own choice, against
    #: 0.1614). See BENCHMARKS.md.
    default_model: str = "ranked"
    #: models tried in order, the first the snapshot holds, when it lacks
    #: ``default_model`` (JSON list: ``LIVEREC_MODEL_FALLBACKS='["hybrid", "popularity"]'``)
    model_fallbacks: tuple[str, ...] = ("hybrid", "bpr", "embedding", "itemknn", "popularity")
    reload_interval_s: float = Field(default=0.5, gt=0)
    live_items_per_user: int = Field(default=50, ge=1)
    live_max_users: int = Field(default=200_000, ge=1)
    live_popularity_half_life_s: float = Field(default=600.0, gt=0)
    #: most items with a live popularity bump (the weakest are dropped)
    live_max_new_items: int = Field(default=10_000, ge=1)
    max_k: int = Field(default=K_BOUND, ge=1, le=K_BOUND)
    #: longest id ``POST /v1/events`` accepts in an event (a longer scoped ``event_id``
    #: is hashed); the same variable as the trainer's limit
    #: (:class:`~stream.settings.KafkaSettings`)
    max_id_chars: int = Field(default=ID_CHARS_BOUND, ge=1, le=ID_CHARS_BOUND)
    max_body_bytes: int = Field(default=64 * 1024, ge=256)
    max_batch_events: int = Field(default=100, ge=1)
    max_url_bytes: int = Field(default=8192, ge=256)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=10)
    head_timeout_s: float = Field(default=30.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    forwarded_allow_ips: str | None = None
    delivery_timeout_s: float = Field(default=5.0, gt=0)
    ingest_queue_max: int = Field(default=10_000, ge=1)
    retry_after_s: int = Field(default=5, ge=1)
    ready_requires_kafka: bool = True
    trainer_metrics_url: str = ""
    dashboard_interval_s: float = Field(default=2.0, gt=0)
    dashboard_points: int = Field(default=300, ge=2)
    ann: bool = False
    ann_min_items: int = Field(default=200_000, ge=0)
    ann_ef: int = Field(default=128, ge=1)
    ann_rebuild_s: float = Field(default=300.0, gt=0)
    rank_threads: int = Field(default=2, ge=0)
    rank_batch: bool = True
    rank_batch_max: int = Field(default=32, ge=1, le=1024)
    rank_batch_inline: bool = True
    rank_batch_slots: int = Field(default=1, ge=1, le=64)
    item_features: Path | None = None
    item_features_preset: str | None = None
    item_features_topic: str = ""
    #: log level of the server's own records and uvicorn's: debug, info, warning, error
    #: or critical (any case; ``warn`` is warning)
    log_level: str = "info"
    #: browser origins allowed to call the API from their pages (CORS), comma-separated
    #: in ``LIVEREC_CORS_ORIGINS``: none by default
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    #: ``text`` or ``json`` lines (:mod:`liverec.logs`; uvicorn's own records too)
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="before")
    @classmethod
    def _kafka_shortcuts(cls, data: Any) -> Any:
        if isinstance(data, dict) and ({"bootstrap", "topic"} & data.keys()):
            data = dict(data)
            update = {k: data.pop(k) for k in ("bootstrap", "topic") if k in data}
            base = data.get("kafka")
            if base is None:
                base = KafkaSettings()
            elif isinstance(base, dict):
                base = KafkaSettings(**base)
            data["kafka"] = KafkaSettings(**{**base.model_dump(), **{
                k: v for k, v in update.items() if v is not None}})
        return data

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        return log_level_name(v)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = tuple(o.strip() for o in v.split(",") if o.strip())
        return tuple(cors_origin(o) for o in v)

    @field_validator("extra_snapshots", mode="before")
    @classmethod
    def _split_roots(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(Path(p.strip()) for p in v.split(",") if p.strip())
        return v

    @property
    def bootstrap(self) -> str:
        """The Kafka bootstrap (``kafka.bootstrap``)."""
        return self.kafka.bootstrap

    @property
    def topic(self) -> str:
        """The click-event topic (``kafka.topic``)."""
        return self.kafka.topic
