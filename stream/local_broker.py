"""A single-node Apache Kafka (KRaft) in a child JVM: :class:`LocalBroker`.

It runs from the jars of :func:`stream.kafka_jars.ensure_kafka_libs`, formats its
storage in ``workdir`` (a restart keeps the cluster id and the topics) and is ready
once it answers a metadata request with its own cluster id. Unless detached, it dies
with the thread that started it. :func:`_terminate` (SIGTERM, then SIGKILL) also
stops the detached broker of :mod:`stream.detached_broker`.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from stream.kafka import cluster_id
from stream.kafka_jars import KAFKA_VERSION, KafkaSetupError, _java, ensure_kafka_libs, free_port

__all__ = ["LocalBroker"]

# The name of the module this came from: log lines and logging settings stay as they were.
log = logging.getLogger("stream.broker")

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux: the broker gets SIGTERM if the thread that started it ends (the parent
    # death signal follows the thread, not the process: start it from the main thread,
    # as every caller does), so a killed test run does not leave a JVM behind.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalBroker:
    """A single-node Apache Kafka (KRaft, broker+controller) in a child JVM.

    Parameters
    ----------
    workdir
        Holds ``server.properties``, the log4j config, ``data/`` (``log.dirs``) and
        ``logs/``. Use a fresh directory per test session.
    port, controller_port
        Loopback ports; free ones are picked when not given.
    heap
        JVM ``-Xmx``.
    detach
        Run the JVM in its own session so it outlives this process (the CLI's
        ``liverec broker start``). Otherwise it dies with this process.
    startup_timeout_s
        How long :meth:`start` waits for the broker to answer a metadata request.
    extra_config
        ``server.properties`` entries added to (or replacing) the defaults, e.g. a
        ``SASL_SSL`` listener beside the ``PLAINTEXT`` one (readiness is checked on
        the plaintext listener, which stays).
    format_args
        Extra arguments of the storage format step, e.g.
        ``--add-scram=SCRAM-SHA-512=[name=alice,password=...]``.

    Examples
    --------
    .. code-block:: python

        with LocalBroker(tmp_dir) as broker:  # start() waits until it serves metadata
            create_topics(broker.bootstrap, {"clicks": 4})
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        detach: bool = False,
        startup_timeout_s: float = 120.0,
        extra_config: Mapping[str, str] | None = None,
        format_args: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.heap = heap
        self.detach = detach
        self.startup_timeout_s = startup_timeout_s
        self.extra_config = dict(extra_config or {})
        self.format_args = tuple(format_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            "log.retention.hours": "168",
        }
        props.update(self.extra_config)
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.workdir / "log4j2.properties").write_text(_LOG4J2)
        return path

    def _jvm(self, libs: Path, main: str, *args: str) -> list[str]:
        return [
            _java(),
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def start(self) -> Self:
        """Format storage, launch the JVM and wait until it serves metadata.

        Raises
        ------
        KafkaSetupError
            Missing tools, failed formatting, an early JVM exit (with its log
            tail) or no readiness within ``startup_timeout_s``.
        """
        if self.process is not None and self.process.poll() is None:
            return self
        java = _java()
        libs = ensure_kafka_libs()
        config = self._write_config()
        # Formatted storage keeps its cluster id (a restart keeps the topics).
        cluster = self.cluster_id() or base64.urlsafe_b64encode(
            uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(
            self._jvm(libs, "kafka.tools.StorageTool", "format",
                      # "=" form: a base64 id may start with "-" and read as a flag.
                      f"--cluster-id={cluster}", f"--config={config}",
                      "--ignore-formatted", *self.format_args),
            capture_output=True, text=True, timeout=120,
        )
        if fmt.returncode != 0:
            raise KafkaSetupError(
                f"formatting Kafka storage failed ({java}, exit {fmt.returncode}):\n"
                f"{(fmt.stdout + fmt.stderr)[-3000:]}"
            )
        out = open(self.log_dir / "broker.out", "ab")  # noqa: SIM115 - the child owns it
        try:
            self.process = subprocess.Popen(
                self._jvm(libs, "kafka.Kafka", str(config)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                # Its own session on Linux too: a terminal's Ctrl-C goes to the process
                # that started it, which stops its clients before the broker (it would
                # die first otherwise, and they could not commit or deliver); the parent
                # death signal still stops it if that process dies without doing so.
                start_new_session=self.detach or sys.platform == "linux",
                preexec_fn=None if self.detach or sys.platform != "linux" else _pdeathsig,
            )
        finally:
            out.close()
        try:
            self._wait_ready(cluster)
        except BaseException:
            self.stop()
            raise
        log.info("local Kafka %s ready at %s (pid %s)", KAFKA_VERSION, self.bootstrap, self.pid)
        return self

    def cluster_id(self) -> str | None:
        """The cluster id of the formatted storage in ``workdir``, if any."""
        meta = self.workdir / "data" / "meta.properties"
        try:
            for line in meta.read_text().splitlines():
                if line.startswith("cluster.id="):
                    return line.split("=", 1)[1].strip() or None
        except OSError:
            return None
        return None

    def _wait_ready(self, cluster: str) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise KafkaSetupError(
                    f"the Kafka JVM exited early with code {code}; log tail:\n{self.log_tail()}"
                )
            # Compare cluster ids: another broker on the same port must not pass as ours.
            if cluster_id(self.bootstrap, timeout_ms=3_000) == cluster:
                return
            if time.monotonic() >= deadline:
                raise KafkaSetupError(
                    f"Kafka at {self.bootstrap} did not answer a metadata request within "
                    f"{self.startup_timeout_s:.0f}s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.3)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the JVM's stdout and of ``server.log``."""
        chunks = []
        for name in ("broker.out", "server.log"):
            path = self.log_dir / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(chunks) or "(no log written)"

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the JVM: SIGTERM (controlled shutdown), then SIGKILL after ``timeout_s``."""
        proc, self.process = self.process, None
        if proc is None:
            return
        _terminate(proc.pid, timeout_s, wait=proc.wait)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _terminate(pid: int, timeout_s: float, wait: Callable[..., Any] | None = None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if wait is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                wait(timeout=0.2)
                return
        elif not _alive(pid):
            return
        else:
            time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if wait is not None:
        wait()


def _alive(pid: int) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
