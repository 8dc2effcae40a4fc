"""Kafka's jars and the Java that runs them, and what the ways of getting a broker share.

:func:`ensure_kafka_libs` resolves the Apache Kafka :data:`KAFKA_VERSION` jars with
Maven from Maven Central into ``<cache>/kafka-<version>/libs`` on first use
(:func:`kafka_libs_cached` says whether that is done); :func:`cache_dir` is that
cache, which also keeps the detached broker's state (:mod:`stream.detached_broker`).
:class:`KafkaSetupError` is the error of every step that finds or starts a broker,
:func:`free_port` the loopback port picker of the local and the Docker broker.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

__all__ = [
    "KAFKA_VERSION",
    "KafkaSetupError",
    "cache_dir",
    "ensure_kafka_libs",
    "free_port",
    "kafka_libs_cached",
]

# The name of the module this came from: log lines and logging settings stay as they were.
log = logging.getLogger("stream.broker")

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
