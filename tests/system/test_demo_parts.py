"""The demo's building blocks without Kafka: ports, /metrics parsing, child processes."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from liverec.demo import ChildProcess, Scrape
from liverec.ports import pick_port


def test_pick_port_prefers_the_default_and_avoids_a_taken_one() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        other = pick_port(taken)
        assert other != taken
    free = pick_port(0)
    assert pick_port(free) == free


def test_scrape_parses_counters_histograms_and_labels() -> None:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    r = CollectorRegistry()
    c = Counter("liverec_x", "x", ["model"], registry=r)
    c.labels(model="a").inc(2)
    c.labels(model="b").inc(3)
    Histogram("liverec_y_seconds", "y", registry=r).observe(0.1)
    s = Scrape.parse(generate_latest(r).decode())
    assert s.sum("liverec_x_total") == 5
    assert s.by_label("liverec_x_total", "model") == {"a": 2.0, "b": 3.0}
    assert s.get("liverec_y_seconds_count") == 1
    assert s.get("liverec_x_total", model="c") is None


def test_child_process_group_is_killed_with_its_grandchildren(tmp_path: Path) -> None:
    import psutil

    # A parent that ignores SIGTERM and has a child of its own: stop() must still
    # leave nothing behind (SIGKILL to the whole group after the timeout).
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
            "print('ready', flush=True); time.sleep(120)")
    p = ChildProcess("stubborn", [sys.executable, "-c", code], tmp_path / "c.log").start()
    try:
        while "ready" not in (tmp_path / "c.log").read_text():
            assert p.alive()
            time.sleep(0.05)
        assert p.pid is not None
        family = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        assert len(family) == 2
        p.stop(timeout_s=1)
        gone, alive = psutil.wait_procs(family, timeout=10)
        assert alive == [] and len(gone) == 2
    finally:
        p.stop(timeout_s=1)


def test_the_demo_reaches_kafka_with_the_environments_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The alias LIVEREC_BOOTSTRAP and the security settings reach the readiness probe
    # (a SASL/TLS cluster does not answer a plaintext client).
    import types

    from liverec import demo
    from stream import broker

    probed: list[Any] = []

    def resolve(env_bootstrap: str, settings: Any) -> Any:
        probed.append((env_bootstrap, settings))
        return types.SimpleNamespace(source="env", bootstrap=env_bootstrap, close=lambda: None)

    monkeypatch.delenv("LIVEREC_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("LIVEREC_BOOTSTRAP", "k1:9093")
    monkeypatch.setenv("LIVEREC_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setattr(broker, "resolve_bootstrap", resolve)
    kafka, release = demo._kafka(None, lambda line: None)
    release()
    assert (kafka.bootstrap, kafka.security_protocol) == ("k1:9093", "SASL_SSL")
    assert probed[0][0] == "k1:9093" and probed[0][1].security_protocol == "SASL_SSL"
