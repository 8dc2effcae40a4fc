"""The detached local broker of ``liverec broker start|stop|status``.

:func:`start_detached_broker` starts (or finds) one :class:`~stream.local_broker.LocalBroker`
that outlives the command, in ``<cache>/broker/run``, and records its pid, bootstrap
address and data directory as a :class:`BrokerState` in ``<cache>/broker/state.json``
so another process (``liverec demo``, ``serve``, ``broker stop``) can find it again
(:func:`broker_status`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from stream.kafka import cluster_ready
from stream.kafka_jars import cache_dir
from stream.local_broker import LocalBroker, _terminate

__all__ = [
    "BrokerState",
    "broker_status",
    "data_dir_size",
    "start_detached_broker",
    "stop_detached_broker",
]

# The name of the module this came from: log lines and logging settings stay as they were.
log = logging.getLogger("stream.broker")


@dataclass(frozen=True)
class BrokerState:
    """What ``liverec broker start`` leaves for ``status`` and ``stop``."""

    pid: int
    bootstrap: str
    workdir: str
    started_at: float

    @staticmethod
    def path() -> Path:
        return cache_dir() / "broker" / "state.json"

    @classmethod
    def load(cls) -> BrokerState | None:
        try:
            data = json.loads(cls.path().read_text())
            return cls(int(data["pid"]), str(data["bootstrap"]), str(data["workdir"]),
                       float(data["started_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self) -> None:
        path = self.path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__))
        tmp.replace(path)

    def is_our_process(self) -> bool:
        """The pid is alive and is still our broker (not a recycled pid), run by this
        user (a cache directory shared through ``LIVEREC_CACHE_DIR`` may record another
        user's broker, whose topics and data this user must not take over)."""
        import psutil

        try:
            proc = psutil.Process(self.pid)
            cmd, uid = proc.cmdline(), proc.uids().real
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
        return (uid == os.getuid() and "kafka.Kafka" in cmd
                and any(self.workdir in part for part in cmd))


def broker_status() -> BrokerState | None:
    """The detached local broker's state when it runs and answers metadata, else None."""
    state = BrokerState.load()
    if state is None or not state.is_our_process():
        return None
    return state if cluster_ready(state.bootstrap) else None


def start_detached_broker(*, heap: str = "512m", fresh: bool = False) -> BrokerState:
    """Start (or find) the CLI's detached local broker; returns once it is ready.

    A restart reuses the data directory (topics and offsets survive) and, when
    they are still free, the same ports, so clients keep their bootstrap address.
    ``fresh`` wipes the data and picks new ports.
    """
    state = BrokerState.load()
    if state is not None and state.is_our_process():
        if not fresh and cluster_ready(state.bootstrap, timeout_ms=10_000):
            return state
        log.warning("stopping the running broker at %s (pid %d)%s", state.bootstrap,
                    state.pid, ": --fresh deletes its topics, and the new one listens on "
                    "another port: update LIVEREC_KAFKA_BOOTSTRAP" if fresh
                    else ": it does not answer")
        _terminate(state.pid, 30.0)
    workdir = cache_dir() / "broker" / "run"
    ports_file = workdir / "ports.json"
    if fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        saved = json.loads(ports_file.read_text())
    except (OSError, ValueError):
        saved = {}
    port = _reuse_port(saved.get("port"))
    controller = _reuse_port(saved.get("controller_port"))
    if saved.get("port") and port is None:
        log.warning("port %s is taken; the broker moves to a new one", saved["port"])
    broker = LocalBroker(workdir, port=port, controller_port=controller, heap=heap,
                         detach=True).start()
    assert broker.pid is not None
    ports_file.write_text(json.dumps({"port": broker.port,
                                      "controller_port": broker.controller_port}))
    state = BrokerState(broker.pid, broker.bootstrap, str(workdir), time.time())
    state.save()
    return state


def _reuse_port(port: object) -> int | None:
    if not isinstance(port, int) or port <= 0:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the broker binds (Java sets SO_REUSEADDR): connections of the stopped broker
        # still in TIME_WAIT do not make the port busy, only another listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
    return port


def data_dir_size(path: str | Path) -> int:
    """Bytes of disk the files under ``path`` take (0 when it does not exist): the
    blocks allocated, as ``du`` counts them. Kafka preallocates its index files
    sparsely, so their apparent sizes overstated a fresh broker's data 40-fold."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).stat().st_blocks * 512
    return total


def stop_detached_broker(timeout_s: float = 30.0) -> BrokerState | None:
    """Stop the CLI's detached broker; returns its state, or None if none ran."""
    state = BrokerState.load()
    if state is None:
        return None
    running = state.is_our_process()
    if running:
        _terminate(state.pid, timeout_s)
    BrokerState.path().unlink(missing_ok=True)
    return state if running else None
