"""A real Apache Kafka broker wherever liverec runs, Docker or not.

:func:`resolve_bootstrap` picks a cluster in this order:

1. ``LIVEREC_KAFKA_BOOTSTRAP`` is set: that external cluster;
2. a Docker engine answers and has (or can pull) a Kafka image: a KRaft Kafka
   container from testcontainers (:mod:`stream.docker_kafka`); when it has none, a
   warning and on to 3;
3. otherwise a :class:`LocalBroker`: single-node Apache Kafka 4.1.1 in KRaft mode,
   run from jars that Maven resolves from Maven Central into
   ``~/.cache/liverec/kafka-4.1.1/libs`` (Java 17+ and ``mvn`` needed once).

The ``liverec broker start|stop|status`` commands manage one detached local broker
whose state (pid, bootstrap address, data directory) lives in
``~/.cache/liverec/broker/state.json`` so another process can find it again.

This module holds the choice (:func:`resolve_bootstrap`, :func:`docker_available`,
:class:`ResolvedKafka`) and re-exports the parts, which live beside it:
:mod:`stream.kafka_jars` (the jars, the cache directory, :class:`KafkaSetupError`),
:mod:`stream.local_broker` (:class:`LocalBroker`) and :mod:`stream.detached_broker`
(the CLI's detached broker and its :class:`BrokerState`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Self

from stream.detached_broker import (
    BrokerState,
    broker_status,
    data_dir_size,
    start_detached_broker,
    stop_detached_broker,
)
from stream.kafka import cluster_ready
from stream.kafka_jars import (
    KAFKA_VERSION,
    KafkaSetupError,
    cache_dir,
    ensure_kafka_libs,
    free_port,
    kafka_libs_cached,
)
from stream.local_broker import LocalBroker
from stream.settings import KafkaSettings

__all__ = [
    "KAFKA_VERSION",
    "BrokerState",
    "KafkaSetupError",
    "LocalBroker",
    "ResolvedKafka",
    "broker_status",
    "cache_dir",
    "data_dir_size",
    "docker_available",
    "ensure_kafka_libs",
    "free_port",
    "kafka_libs_cached",
    "resolve_bootstrap",
    "start_detached_broker",
    "stop_detached_broker",
]

log = logging.getLogger(__name__)


def docker_available(timeout_s: float = 3.0) -> bool:
    """True when a Docker engine answers a ping (the CLI alone is not enough); always
    False with ``LIVEREC_DOCKER=0``, which leaves Docker alone."""
    if os.environ.get("LIVEREC_DOCKER", "").strip() == "0":
        return False
    try:
        import docker

        client = docker.from_env(timeout=int(max(1, timeout_s)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception as exc:  # any failure means "no usable engine"
        log.debug("no Docker engine: %s", exc)
        return False


class ResolvedKafka:
    """A Kafka cluster chosen by :func:`resolve_bootstrap`; close it to release it.

    ``source`` is ``"env"``, ``"docker"`` or ``"local"``; ``bootstrap`` the address;
    ``note`` why a Docker engine that answered was not used, if so.
    """

    def __init__(self, bootstrap: str, source: str, close: Callable[[], None] | None = None,
                 *, note: str | None = None):
        self.bootstrap = bootstrap
        self.source = source
        self.note = note
        self._close = close

    def close(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResolvedKafka(bootstrap={self.bootstrap!r}, source={self.source!r})"


def resolve_bootstrap(
    workdir: str | Path | None = None, *, env_bootstrap: str | None = None,
    settings: KafkaSettings | None = None,
) -> ResolvedKafka:
    """Find or start a real Kafka cluster (env, then Docker, then a local broker).

    Parameters
    ----------
    workdir
        Where a :class:`LocalBroker` keeps its files (a temp dir, removed on close,
        when not given).
    env_bootstrap
        An explicit external cluster; defaults to ``settings``' bootstrap, else the
        environment's (``LIVEREC_KAFKA_BOOTSTRAP`` or ``LIVEREC_BOOTSTRAP``).
    settings
        Client and security settings for the external cluster's readiness check
        (a SASL/TLS cluster does not answer a plaintext client).

    Raises
    ------
    KafkaSetupError
        The external cluster does not answer, or no broker could be started.
    """
    if env_bootstrap is not None:
        external = env_bootstrap
    else:  # LIVEREC_KAFKA_BOOTSTRAP, or its alias LIVEREC_BOOTSTRAP
        external = settings.bootstrap if settings is not None else KafkaSettings().bootstrap
    if external.strip():
        probe: KafkaSettings | str = (external if settings is None
                                      else settings.with_bootstrap(external))
        if not cluster_ready(probe, timeout_ms=10_000):
            raise KafkaSetupError(
                f"LIVEREC_KAFKA_BOOTSTRAP={external} does not answer a metadata request; "
                "start that cluster or unset the variable to use a local broker."
            )
        return ResolvedKafka(external, "env")
    note = None
    if docker_available():
        from stream.docker_kafka import docker_kafka_image, start_docker_kafka

        try:
            return start_docker_kafka(docker_kafka_image())
        except KafkaSetupError as exc:
            # An engine without a registry (air-gapped, rate-limited) is a real situation.
            note = f"Docker engine answers but gives no Kafka: {exc}; using the local broker"
            log.warning("%s", note)
    own_tmp = workdir is None
    root = Path(tempfile.mkdtemp(prefix="liverec-kafka-")) if workdir is None else Path(workdir)
    broker = LocalBroker(root)
    try:
        broker.start()
    except BaseException:
        if own_tmp:
            shutil.rmtree(root, ignore_errors=True)
        raise

    def close() -> None:
        broker.stop()
        if own_tmp:
            shutil.rmtree(root, ignore_errors=True)

    return ResolvedKafka(broker.bootstrap, "local", close, note=note)
