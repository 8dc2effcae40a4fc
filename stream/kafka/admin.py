"""Topic admin and cluster readiness, on the backend the settings choose.

Every helper takes a :class:`~stream.settings.KafkaSettings` or a plain bootstrap
string (then the default client and no security); pick the address with
:func:`stream.broker.resolve_bootstrap`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

from stream.kafka.base import ConsumerOptions, KafkaClientError
from stream.logfilter import RedactSecrets
from stream.settings import KafkaSettings

__all__ = [
    "as_settings",
    "cluster_id",
    "cluster_ready",
    "committed_offsets",
    "create_topics",
    "delete_topics",
    "end_offsets",
    "wait_until_ready",
]

log = logging.getLogger(__name__)


def as_settings(settings: KafkaSettings | str) -> KafkaSettings:
    """``settings`` itself, or default settings for a bootstrap string (the
    environment is not read for those: the caller named the cluster)."""
    if isinstance(settings, KafkaSettings):
        return settings
    return KafkaSettings.model_construct(bootstrap=settings.strip())


def create_topics(
    settings: KafkaSettings | str,
    topics: Iterable[str] | Mapping[str, int],
    *,
    partitions: int = 1,
    replication_factor: int | None = None,
    configs: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create topics that do not exist yet and wait until they have leaders.

    ``topics`` is a list of names (each with ``partitions`` partitions) or a mapping
    name -> partitions. Returns the names actually created; existing topics are
    left as they are. ``replication_factor`` defaults to the settings' (-1: the
    cluster's ``default.replication.factor``; it used to be 1, which a production
    cluster loses with one broker).

    Raises
    ------
    KafkaClientError
        The cluster did not answer or refused.
    """
    s = as_settings(settings)
    wanted = dict(topics) if isinstance(topics, Mapping) else dict.fromkeys(topics, partitions)
    if not wanted:
        return []
    if replication_factor is None:
        replication_factor = s.replication_factor
    if replication_factor == 0 or replication_factor < -1:
        raise ValueError("replication_factor must be -1 (the cluster's default) or >= 1")
    if s.client == "confluent":
        from stream.kafka import confluent

        return confluent.admin_create_topics(s, wanted, replication_factor=replication_factor,
                                             configs=dict(configs or {}), timeout_s=timeout_s)
    return _kp_create_topics(s, wanted, replication_factor, dict(configs or {}), timeout_s)


def delete_topics(settings: KafkaSettings | str, topics: Iterable[str], *,
                  timeout_s: float = 30.0) -> None:
    """Delete topics, ignoring ones that do not exist."""
    s = as_settings(settings)
    names = list(topics)
    if not names:
        return
    if s.client == "confluent":
        from stream.kafka import confluent

        confluent.admin_delete_topics(s, names, timeout_s=timeout_s)
        return
    _kp_delete_topics(s, names, timeout_s)


def end_offsets(settings: KafkaSettings | str, topic: str) -> dict[int, int]:
    """The end (next-to-be-written) offset of every partition of ``topic``."""
    from stream.kafka import make_consumer

    consumer = make_consumer(as_settings(settings), ConsumerOptions(client_id="liverec-admin"))
    try:
        parts = [(topic, p) for p in sorted(consumer.partitions_for(topic))]
        return {p: off for (_, p), off in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def topic_exists(settings: KafkaSettings | str, topic: str, timeout_s: float = 10.0) -> bool:
    """Whether ``topic`` has partitions this principal can see (a metadata request;
    kafka-python's makes a broker that auto-creates topics create it)."""
    from stream.kafka import make_consumer

    consumer = make_consumer(as_settings(settings), ConsumerOptions(client_id="liverec-admin"))
    try:
        return bool(consumer.partitions_for(topic, timeout_s=timeout_s))
    finally:
        consumer.close()


def committed_offsets(settings: KafkaSettings | str, group: str, topic: str
                      ) -> dict[int, int]:
    """The next offset ``group`` committed on each partition of ``topic`` (partitions
    without a commit, and a topic that does not exist, are left out)."""
    from stream.kafka import make_consumer

    consumer = make_consumer(as_settings(settings),
                             ConsumerOptions(group_id=group, client_id="liverec-admin"))
    try:
        parts = [(topic, p) for p in sorted(consumer.partitions_for(topic))]
        got = consumer.committed(parts) if parts else {}
    finally:
        consumer.close()
    return {p: off for (_, p), off in got.items() if off is not None}


def cluster_ready(settings: KafkaSettings | str, *, timeout_ms: int = 5_000) -> bool:
    """True when the cluster answers a metadata request (an open port is not enough)."""
    return cluster_id(settings, timeout_ms=timeout_ms) is not None


def cluster_id(settings: KafkaSettings | str, *, timeout_ms: int = 5_000) -> str | None:
    """The cluster id from a metadata request, or None when nothing answers."""
    s = as_settings(settings)
    if not s.bootstrap or not _any_port_open(s.bootstrap):
        # Skip the client while nothing listens: it would log a connection error per try.
        return None
    try:
        if s.client == "confluent":
            from stream.kafka import confluent

            return confluent.cluster_id(s, timeout_ms / 1000.0)
        return _kp_cluster_id(s, timeout_ms)
    except (KafkaClientError, OSError, ValueError) as exc:
        log.debug("no metadata from %s yet: %s", s.bootstrap, exc)
        return None


def _any_port_open(bootstrap: str) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), 2.0):
                return True
        except (OSError, ValueError):
            continue
    return False


def wait_until_ready(settings: KafkaSettings | str, *, timeout_s: float = 60.0) -> None:
    """Block until :func:`cluster_ready`; raise ``TimeoutError`` naming the address."""
    s = as_settings(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        if cluster_ready(s):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Kafka at {s.bootstrap} did not answer a metadata request "
                               f"within {timeout_s:.0f}s")
        time.sleep(0.5)


# ---------------------------------------------------------------------- kafka-python


# kafka-python's admin client logs its whole configuration, passwords included, at DEBUG.
logging.getLogger("kafka.admin.client").addFilter(RedactSecrets())


def _kp_admin(s: KafkaSettings, request_timeout_ms: int = 30_000) -> Any:
    from kafka import KafkaAdminClient

    from stream.kafka.kafkapython import security_config, servers

    return KafkaAdminClient(bootstrap_servers=servers(s), client_id="liverec-admin",
                            request_timeout_ms=request_timeout_ms,
                            bootstrap_timeout_ms=request_timeout_ms,
                            reconnect_backoff_max_ms=500, **security_config(s))


def _kp_create_topics(s: KafkaSettings, wanted: dict[str, int], replication_factor: int,
                      configs: dict[str, str], timeout_s: float) -> list[str]:
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = _kp_admin(s)
    except (KafkaError, OSError) as exc:
        raise KafkaClientError(f"admin client: {exc}", retriable=True) from exc
    try:
        existing = set(admin.list_topics())
        todo = {name: n for name, n in wanted.items() if name not in existing}
        if not todo:
            return []
        spec = {name: {"num_partitions": n, "replication_factor": replication_factor,
                       "configs": configs} for name, n in todo.items()}
        try:
            admin.create_topics(spec, timeout_ms=int(timeout_s * 1000), wait_for_metadata=True)
        except TopicAlreadyExistsError:
            log.debug("topics %s already exist", sorted(todo))
        return sorted(todo)
    except KafkaError as exc:
        raise KafkaClientError(f"create topics: {exc}") from exc
    finally:
        admin.close()


def _kp_delete_topics(s: KafkaSettings, names: list[str], timeout_s: float) -> None:
    from kafka.errors import KafkaError, UnknownTopicOrPartitionError

    try:
        admin = _kp_admin(s)
    except (KafkaError, OSError) as exc:
        raise KafkaClientError(f"admin client: {exc}", retriable=True) from exc
    try:
        existing = set(admin.list_topics())
        names = [t for t in names if t in existing]
        if names:
            try:
                admin.delete_topics(names, timeout_ms=int(timeout_s * 1000))
            except UnknownTopicOrPartitionError:
                log.debug("topics %s were already gone", names)
    except KafkaError as exc:
        raise KafkaClientError(f"delete topics: {exc}") from exc
    finally:
        admin.close()


def _kp_cluster_id(s: KafkaSettings, timeout_ms: int) -> str | None:
    from kafka.errors import KafkaError

    try:
        admin = _kp_admin(s, request_timeout_ms=timeout_ms)
    except (KafkaError, OSError, ValueError) as exc:
        log.debug("no metadata from %s yet: %s", s.bootstrap, exc)
        return None
    try:
        info = admin.describe_cluster()
        return str(info.get("cluster_id") or "")
    except (KafkaError, OSError, ValueError) as exc:
        log.debug("no metadata from %s yet: %s", s.bootstrap, exc)
        return None
    finally:
        admin.close()
