"""The local broker manager: clear errors, and the CLI's start/status/stop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream import broker as broker_mod
from stream import kafka_jars
from stream.broker import KafkaSetupError, LocalBroker, resolve_bootstrap


def test_missing_java_names_it_and_the_alternative(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(kafka_jars.shutil, "which", lambda name: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(KafkaSetupError, match=r"(?s)'java'.*LIVEREC_KAFKA_BOOTSTRAP"):
        LocalBroker(tmp_path).start()


def test_missing_maven_names_it(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("LIVEREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(kafka_jars.shutil, "which",
                        lambda name: None if name == "mvn" else "/usr/bin/" + name)
    with pytest.raises(KafkaSetupError, match=r"(?s)'mvn'.*LIVEREC_KAFKA_BOOTSTRAP"):
        broker_mod.ensure_kafka_libs()


def test_unreachable_external_cluster_is_a_clear_error():
    with pytest.raises(KafkaSetupError, match=r"127\.0\.0\.1:1\b"):
        resolve_bootstrap(env_bootstrap="127.0.0.1:1")


def test_the_bootstrap_alias_names_the_external_cluster_too(monkeypatch):
    # LIVEREC_BOOTSTRAP is LIVEREC_KAFKA_BOOTSTRAP's documented alias: it must not
    # quietly start a broker of its own instead.
    monkeypatch.delenv("LIVEREC_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("LIVEREC_BOOTSTRAP", "127.0.0.1:1")
    with pytest.raises(KafkaSetupError, match=r"127\.0\.0\.1:1\b"):
        resolve_bootstrap()


@pytest.mark.kafka
@pytest.mark.slow
def test_early_jvm_exit_surfaces_the_log(tmp_path: Path, kafka_bootstrap: str):
    # The session broker holds this port, so a second broker on it dies at startup.
    port = int(kafka_bootstrap.rsplit(":", 1)[1])
    if kafka_bootstrap.split(":")[0] != "127.0.0.1":
        pytest.skip("needs the session broker on loopback to collide with")
    with pytest.raises(KafkaSetupError, match=r"(?s)exited early.*log tail"):
        LocalBroker(tmp_path, port=port, startup_timeout_s=60).start()


@pytest.mark.kafka
@pytest.mark.slow
def test_cli_start_status_stop_across_processes(tmp_path: Path):
    env = {**os.environ, "LIVEREC_CACHE_DIR": str(tmp_path / "cache")}
    # Reuse the resolved jars instead of resolving them again into the temp cache.
    libs = broker_mod.ensure_kafka_libs()
    (tmp_path / "cache" / "kafka-4.1.1").mkdir(parents=True)
    (tmp_path / "cache" / "kafka-4.1.1" / "libs").symlink_to(libs)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "liverec.cli", *args], env=env,
                              capture_output=True, text=True, timeout=300)

    assert cli("broker", "status").returncode == 1
    started = cli("broker", "start")
    try:
        assert started.returncode == 0, started.stderr
        address = started.stdout.strip().splitlines()[-1]
        assert address.startswith("127.0.0.1:")
        status = cli("broker", "status")
        assert (status.returncode, status.stdout.strip()) == (0, address)
        assert cli("broker", "start").stdout.strip().splitlines()[-1] == address  # idempotent
    finally:
        stopped = cli("broker", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert cli("broker", "status").returncode == 1


def test_liverec_docker_0_leaves_docker_alone(monkeypatch):
    # make test's opt-out: no container Kafka (and no engine started), whatever answers
    monkeypatch.setenv("LIVEREC_DOCKER", "0")
    assert broker_mod.docker_available() is False


def test_a_recorded_broker_counts_only_when_this_user_runs_it(tmp_path) -> None:
    """A cache directory shared through LIVEREC_CACHE_DIR may record another user's
    broker: `liverec demo` or `broker stop` must not take it for this user's."""
    import time

    from stream.broker import BrokerState

    workdir = str(tmp_path / "broker")
    # A stand-in with a broker's command line (two commands: the shell stays itself).
    argv = ["/bin/sh", "-c", "sleep 60; :", "kafka.Kafka", workdir]
    mine = subprocess.Popen(argv)
    others = None
    try:
        assert BrokerState(mine.pid, "127.0.0.1:1", workdir, time.time()).is_our_process()
        # Not the workdir it recorded: a recycled pid.
        assert not BrokerState(mine.pid, "127.0.0.1:1", workdir + "x",
                               time.time()).is_our_process()
        if os.getuid() != 0:
            pytest.skip("starting another user's process needs root")
        others = subprocess.Popen(argv, user=65534, group=65534)
        assert not BrokerState(others.pid, "127.0.0.1:1", workdir,
                               time.time()).is_our_process()
    finally:
        for proc in (mine, others):
            if proc is not None:
                proc.kill()
                proc.wait()
