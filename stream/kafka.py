"""Small Kafka helpers shared by replay, the consumer, the trainer and the server.

All of them take a bootstrap address (``host:port[,host:port]``) explicitly; pick it
with :func:`stream.broker.resolve_bootstrap`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

__all__ = [
    "cluster_id",
    "cluster_ready",
    "create_topics",
    "delete_topics",
    "end_offsets",
    "make_admin",
    "make_consumer",
    "make_producer",
    "wait_until_ready",
]

log = logging.getLogger(__name__)


def _servers(bootstrap: str) -> list[str]:
    return [s.strip() for s in bootstrap.split(",") if s.strip()]


def make_admin(bootstrap: str, **config: Any) -> KafkaAdminClient:
    """A ``KafkaAdminClient`` for ``bootstrap`` (close it when done)."""
    config.setdefault("client_id", "liverec-admin")
    config.setdefault("request_timeout_ms", 30_000)
    return KafkaAdminClient(bootstrap_servers=_servers(bootstrap), **config)


def make_producer(bootstrap: str, **config: Any) -> KafkaProducer:
    """A durable ``KafkaProducer``: ``acks=all``, idempotent, bytes keys and values.

    Callers send ``key=user_id.encode()`` and ``value=encode(event)``; extra
    keyword arguments override the defaults.
    """
    defaults: dict[str, Any] = {
        "client_id": "liverec-producer",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 64 * 1024,
        "compression_type": None,
        "retries": 10,
    }
    defaults.update(config)
    return KafkaProducer(bootstrap_servers=_servers(bootstrap), **defaults)


def make_consumer(
    bootstrap: str, *topics: str, group_id: str | None = None, **config: Any
) -> KafkaConsumer:
    """A ``KafkaConsumer`` with manual commits, reading from the earliest offset.

    Pass no topics to ``assign()`` partitions yourself.
    """
    defaults: dict[str, Any] = {
        "client_id": "liverec-consumer",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    defaults.update(config)
    return KafkaConsumer(
        *topics, bootstrap_servers=_servers(bootstrap), group_id=group_id, **defaults
    )


def create_topics(
    bootstrap: str,
    topics: Iterable[str] | Mapping[str, int],
    *,
    partitions: int = 1,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create topics that do not exist yet and wait until they have leaders.

    ``topics`` is a list of names (each with ``partitions`` partitions) or a mapping
    name -> partitions. Returns the names actually created; existing topics are
    left as they are.
    """
    wanted = dict(topics) if isinstance(topics, Mapping) else dict.fromkeys(topics, partitions)
    if not wanted:
        return []
    admin = make_admin(bootstrap)
    try:
        existing = set(admin.list_topics())
        todo = {name: n for name, n in wanted.items() if name not in existing}
        if not todo:
            return []
        spec = {
            name: {
                "num_partitions": n,
                "replication_factor": replication_factor,
                "configs": dict(configs or {}),
            }
            for name, n in todo.items()
        }
        try:
            admin.create_topics(spec, timeout_ms=int(timeout_s * 1000), wait_for_metadata=True)
        except TopicAlreadyExistsError:
            # Raced with another creator; the topic exists, which is what we wanted.
            log.debug("topics %s already exist", sorted(todo))
        return sorted(todo)
    finally:
        admin.close()


def delete_topics(bootstrap: str, topics: Iterable[str], *, timeout_s: float = 30.0) -> None:
    """Delete topics, ignoring ones that do not exist."""
    names = list(topics)
    if not names:
        return
    admin = make_admin(bootstrap)
    try:
        existing = set(admin.list_topics())
        names = [t for t in names if t in existing]
        if names:
            try:
                admin.delete_topics(names, timeout_ms=int(timeout_s * 1000))
            except UnknownTopicOrPartitionError:
                log.debug("topics %s were already gone", names)
    finally:
        admin.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The end (next-to-be-written) offset of every partition of ``topic``."""
    from kafka import TopicPartition

    consumer = make_consumer(bootstrap)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def cluster_ready(bootstrap: str, *, timeout_ms: int = 5_000) -> bool:
    """True when the cluster answers a metadata request (an open port is not enough)."""
    return cluster_id(bootstrap, timeout_ms=timeout_ms) is not None


def cluster_id(bootstrap: str, *, timeout_ms: int = 5_000) -> str | None:
    """The cluster id from a metadata request, or None when nothing answers."""
    if not _any_port_open(bootstrap):
        # Skip the client while nothing listens: it would log a connection error per try.
        return None
    try:
        admin = make_admin(bootstrap, request_timeout_ms=timeout_ms,
                           reconnect_backoff_max_ms=500)
    except (KafkaError, OSError, ValueError) as exc:
        log.debug("no metadata from %s yet: %s", bootstrap, exc)
        return None
    try:
        info = admin.describe_cluster()
        return str(info.get("cluster_id") or "")
    except (KafkaError, OSError, ValueError) as exc:
        log.debug("no metadata from %s yet: %s", bootstrap, exc)
        return None
    finally:
        admin.close()


def _any_port_open(bootstrap: str) -> bool:
    for server in _servers(bootstrap):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), 2.0):
                return True
        except (OSError, ValueError):
            continue
    return False


def wait_until_ready(bootstrap: str, *, timeout_s: float = 60.0) -> None:
    """Block until :func:`cluster_ready`; raise ``TimeoutError`` naming the address."""
    deadline = time.monotonic() + timeout_s
    while True:
        if cluster_ready(bootstrap):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Kafka at {bootstrap} did not answer a metadata request "
                               f"within {timeout_s:.0f}s")
        time.sleep(0.5)
