"""Kafka in a Docker container for :func:`stream.broker.resolve_bootstrap`'s Docker branch.

:func:`docker_kafka_image` picks the image (``$LIVEREC_KAFKA_IMAGE``, else the official
``apache/kafka`` or the local stand-in ``scripts/build-images.sh kafka`` builds, else a
pull); :func:`start_docker_kafka` runs it as a single-node KRaft broker through
testcontainers, published on one loopback port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, cast

from stream.broker import KAFKA_VERSION, KafkaSetupError, ResolvedKafka, free_port
from stream.kafka import cluster_ready

__all__ = ["KAFKA_IMAGES", "docker_kafka_image", "start_docker_kafka"]

log = logging.getLogger(__name__)

#: The official image first, then the stand-in ``scripts/build-images.sh kafka`` builds
#: from the same release's Maven Central jars (same ``KAFKA_*`` configuration).
KAFKA_IMAGES = (f"apache/kafka:{KAFKA_VERSION}", f"liverec-local/kafka:{KAFKA_VERSION}")
_CONTAINER_LABEL = "io.liverec.kafka-owner-pid"
#: which machine (boot) that pid belongs to: a pid means nothing on another host, or in
#: another PID namespace, that shares the engine
_HOST_LABEL = "io.liverec.kafka-owner-host"


def _host_id() -> str:
    """This machine's boot (the kernel's boot id; the host name where there is none)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


def docker_kafka_image(*, pull: bool = True) -> str:
    """The Kafka image the Docker branch of :func:`resolve_bootstrap` runs.

    ``$LIVEREC_KAFKA_IMAGE`` when set, else the first of :data:`KAFKA_IMAGES` present
    on the engine; when none is, the official image is pulled (``pull=True``).

    Raises
    ------
    KafkaSetupError
        No such image on the engine and it cannot be pulled (no registry reachable);
        the message names the images tried and the pull error.
    """
    import docker
    from docker.errors import DockerException, ImageNotFound

    wanted = os.environ.get("LIVEREC_KAFKA_IMAGE", "").strip()
    candidates = (wanted,) if wanted else KAFKA_IMAGES
    client = docker.from_env(timeout=30)
    try:
        for image in candidates:
            try:
                client.images.get(image)
                return image
            except ImageNotFound:
                continue
        if not pull:
            raise KafkaSetupError(f"none of the Kafka images {', '.join(candidates)} is present")
        try:
            client.images.pull(candidates[0])
            return candidates[0]
        except DockerException as exc:
            raise KafkaSetupError(
                f"none of the Kafka images {', '.join(candidates)} is present and "
                f"{candidates[0]} cannot be pulled ({exc}); scripts/build-images.sh kafka "
                "builds a local one"
            ) from exc
    finally:
        client.close()


def _remove_orphan_kafka_containers(client: Any) -> None:
    # Without testcontainers' reaper (Ryuk, an image a registry-less engine cannot pull)
    # a killed test run leaves its container behind; the next run removes it.
    for c in client.containers.list(all=True, filters={"label": _CONTAINER_LABEL}):
        host = c.labels.get(_HOST_LABEL)
        if host is not None and host != _host_id():
            continue  # another machine's process: its pid means nothing here
        pid = int(c.labels.get(_CONTAINER_LABEL, "0") or 0)
        if pid <= 0 or not _pid_alive(pid):
            log.info("removing Kafka container %s left by dead process %s", c.name, pid)
            with contextlib.suppress(Exception):
                c.remove(force=True, v=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _docker_host_address() -> str:
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("DOCKER_HOST", ""))
    return url.hostname if url.scheme in ("tcp", "http", "https") and url.hostname else "127.0.0.1"


def start_docker_kafka(image: str, *, startup_timeout_s: float = 120.0) -> ResolvedKafka:
    """A single-node KRaft Kafka container (testcontainers), published on one host port.

    The broker advertises the host address and port, so clients on this machine reach
    it directly. Ryuk is disabled unless its image is present (set
    ``TESTCONTAINERS_RYUK_DISABLED`` to decide yourself); the container is removed on
    close, and one left by a killed process is removed at the next start.

    Raises
    ------
    KafkaSetupError
        The container exits or does not serve metadata within ``startup_timeout_s``.
    """
    import docker
    from docker.errors import ImageNotFound
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    client = docker.from_env(timeout=30)
    try:
        _remove_orphan_kafka_containers(client)
        if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
            try:
                client.images.get(testcontainers_config.ryuk_image)
            except ImageNotFound:
                testcontainers_config.ryuk_disabled = True
    finally:
        client.close()
    host = _docker_host_address()
    bind = "127.0.0.1" if host == "127.0.0.1" else "0.0.0.0"  # a remote engine: its own NIC
    last: Exception | None = None
    for _attempt in range(3):  # the free port may be taken between picking and binding
        port = free_port()
        container = (
            DockerContainer(image)
            .with_env("KAFKA_NODE_ID", "1")
            .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
            # Clients reach the mapped host port; the broker reaches itself (transaction
            # markers, inter-broker requests) on an address valid inside the container.
            .with_env("KAFKA_LISTENERS",
                      "PLAINTEXT://:9092,CONTROLLER://:9093,INTERNAL://:29092")
            .with_env("KAFKA_ADVERTISED_LISTENERS",
                      f"PLAINTEXT://{host}:{port},INTERNAL://localhost:29092")
            .with_env("KAFKA_INTER_BROKER_LISTENER_NAME", "INTERNAL")
            .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
            .with_env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                      "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,INTERNAL:PLAINTEXT")
            .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
            .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS", "1")
            .with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR", "1")
            .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
            .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true")
            .with_env("KAFKA_HEAP_OPTS", "-Xmx512m -Xms512m")
            .with_kwargs(labels={_CONTAINER_LABEL: str(os.getpid()), _HOST_LABEL: _host_id()})
        )
        # testcontainers binds on all interfaces; a local engine's broker stays on loopback.
        cast(dict[str, Any], container.ports)["9092/tcp"] = (bind, port)
        try:
            container.start()
        except Exception as exc:
            container.stop()
            if "already allocated" in str(exc) or "address already in use" in str(exc):
                last = exc
                continue
            raise KafkaSetupError(f"the Kafka container ({image}) did not start: {exc}") from exc
        bootstrap = f"{host}:{port}"
        try:
            _wait_container_ready(container, bootstrap, startup_timeout_s)
        except BaseException:
            container.stop()
            raise
        log.info("Docker Kafka (%s) ready at %s", image, bootstrap)
        return ResolvedKafka(bootstrap, "docker", container.stop)
    raise KafkaSetupError(f"no free host port for the Kafka container: {last}")


def _wait_container_ready(container: Any, bootstrap: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status in ("exited", "dead"):
            logs = wrapped.logs(tail=30).decode(errors="replace")
            raise KafkaSetupError(f"the Kafka container exited during start-up:\n{logs}")
        if cluster_ready(bootstrap, timeout_ms=5_000):
            return
        time.sleep(0.5)
    raise KafkaSetupError(f"the Kafka container at {bootstrap} did not answer within {timeout_s} s")
