"""Issue 10 item 7: ``liverec broker stop && liverec broker start`` keeps the topics and
the address; ``--fresh`` starts clean; ``status`` shows the data directory and size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream import broker as broker_mod
from stream.kafka import create_topics
from tests.faults.helpers import produce_raw, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_restart_keeps_data_and_port_fresh_wipes(tmp_path: Path) -> None:
    env = {**os.environ, "LIVEREC_CACHE_DIR": str(tmp_path / "cache")}
    libs = broker_mod.ensure_kafka_libs()  # reuse the resolved jars
    (tmp_path / "cache" / "kafka-4.1.1").mkdir(parents=True)
    (tmp_path / "cache" / "kafka-4.1.1" / "libs").symlink_to(libs)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "liverec.cli", "broker", *args], env=env,
                              capture_output=True, text=True, timeout=300)

    def produced(bootstrap: str, n: int) -> None:
        create_topics(bootstrap, {"demo": 1})
        produce_raw(bootstrap, "demo", [f"m{i}".encode() for i in range(n)])

    try:
        first = cli("start")
        assert first.returncode == 0, first.stderr
        address = first.stdout.strip().splitlines()[-1]
        produced(address, 5)
        assert cli("stop").returncode == 0

        again = cli("start")
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip().splitlines()[-1] == address  # same port
        assert read_topic(address, "demo") == [f"m{i}".encode() for i in range(5)]
        status = cli("status")
        assert status.returncode == 0 and status.stdout.strip() == address
        data = tmp_path / "cache" / "broker" / "run" / "data"
        assert str(data) in status.stderr and "MiB" in status.stderr

        fresh = cli("start", "--fresh")
        assert fresh.returncode == 0, fresh.stderr
        new_address = fresh.stdout.strip().splitlines()[-1]
        assert read_topic(new_address, "demo") == []  # the topic is gone
    finally:
        cli("stop")
