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
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from stream.kafka import cluster_id, cluster_ready
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

KAFKA_VERSION = "4.1.1"
_DEP_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
_HINT = (
    "Alternatively point LIVEREC_KAFKA_BOOTSTRAP at an existing Kafka cluster "
    "(e.g. LIVEREC_KAFKA_BOOTSTRAP=kafka.example:9092)."
)


class KafkaSetupError(RuntimeError):
    """No Kafka broker could be found or started; the message says why and what to do."""


# --------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """``$LIVEREC_CACHE_DIR``, else ``$XDG_CACHE_HOME/liverec``, else ``~/.cache/liverec``."""
    if env := os.environ.get("LIVEREC_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "liverec"


def free_port() -> int:
    """A currently free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- jars


def kafka_libs_cached(version: str = KAFKA_VERSION) -> bool:
    """Whether :func:`ensure_kafka_libs` has the jars already (no Maven run needed)."""
    return (cache_dir() / f"kafka-{version}" / "libs" / ".complete").exists()


def ensure_kafka_libs(version: str = KAFKA_VERSION, *, quiet: bool = True) -> Path:
    """The directory of Kafka's jars, resolving them with Maven on first use.

    Raises
    ------
    KafkaSetupError
        When ``java`` or ``mvn`` is missing or Maven cannot resolve the jars
        (e.g. Maven Central unreachable); the message names the cause.
    """
    if version != KAFKA_VERSION:
        raise KafkaSetupError(f"only Kafka {KAFKA_VERSION} is packaged, not {version}")
    root = cache_dir() / f"kafka-{version}"
    libs = root / "libs"
    if kafka_libs_cached(version):
        return libs
    if shutil.which("mvn") is None:
        raise KafkaSetupError(
            "Maven ('mvn') is not on PATH; it is needed once to download the Kafka "
            f"{version} jars from Maven Central into {libs}. Install Maven "
            f"(e.g. apt-get install maven). {_HINT}"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="libs.", dir=root))
    pom = resources.files("stream").joinpath("kafka_pom.xml")
    try:
        with resources.as_file(pom) as pom_path:
            cmd = [
                "mvn", "-B", "-q", "-f", str(pom_path), _DEP_PLUGIN,
                "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
            ]
            log.info("resolving Kafka %s jars with Maven into %s", version, libs)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise KafkaSetupError(
                f"Maven could not resolve the Kafka {version} jars (exit {proc.returncode}); "
                f"is Maven Central (or your Maven mirror) reachable?\n{tail}\n{_HINT}"
            )
        if not any(tmp.glob("kafka_2.13-*.jar")):
            raise KafkaSetupError(f"Maven finished but no Kafka jar is in {tmp}. {_HINT}")
        (tmp / ".complete").write_text(version)
        try:
            tmp.rename(libs)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not (libs / ".complete").exists():
                raise
        return libs
    except subprocess.TimeoutExpired as exc:
        raise KafkaSetupError(f"Maven took too long to resolve Kafka jars. {_HINT}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _java() -> str:
    java = shutil.which("java")
    if java is None and (home := os.environ.get("JAVA_HOME")):
        candidate = Path(home) / "bin" / "java"
        java = str(candidate) if candidate.exists() else None
    if java is None:
        raise KafkaSetupError(
            "Java ('java', 17 or newer) is not on PATH or in JAVA_HOME; it is needed to "
            f"run the local Kafka broker. Install a JDK (e.g. apt-get install "
            f"openjdk-17-jre-headless). {_HINT}"
        )
    return java


# --------------------------------------------------------------------------- broker

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


# --------------------------------------------------------------------------- CLI state


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
    """Bytes under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).stat().st_size
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


# --------------------------------------------------------------------------- choice


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
