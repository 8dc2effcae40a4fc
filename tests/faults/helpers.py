"""The real server as a subprocess, and small probes the fault tests share."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from online_models.snapshot import SnapshotStore
from stream.broker import free_port
from tests.serving.conftest import train

REPO = Path(__file__).resolve().parents[2]


def write_snapshot(root: Path) -> SnapshotStore:
    """A small real snapshot (popularity, bpr, itemknn) under ``root``."""
    models, history, watermark = train(1500)
    store = SnapshotStore(root)
    store.write(models, history=history, offsets={}, events_total=1500, watermark=watermark)
    return store


class ServerProcess:
    """``liverec serve`` on a free loopback port, its log in a file."""

    def __init__(self, snapshots: Path, log_path: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        inherited = {k: v for k, v in os.environ.items()
                     if k not in ("LIVEREC_KAFKA_BOOTSTRAP", "LIVEREC_BOOTSTRAP")}
        # No Kafka unless the arguments name one ("": not even a local broker).
        full_env = {**inherited, "LIVEREC_KAFKA_BOOTSTRAP": "",
                    "LIVEREC_RELOAD_INTERVAL_S": "0.2", **(env or {})}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "liverec.cli", "serve", "--snapshots", str(snapshots),
             "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=full_env,
        )

    def wait_listening(self, timeout_s: float = 60.0) -> float:
        """Seconds from launch until /healthz answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"server not listening:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, **kw: Any) -> tuple[httpx.Response, float]:
        """The response and its wall time in seconds."""
        t0 = time.monotonic()
        r = httpx.request(method, self.base + path, timeout=kw.pop("timeout", 60), **kw)
        return r, time.monotonic() - t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def metric(base: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=10).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and (labels is None or s.labels == labels):
                return float(s.value)
    return None


def event(i: int, user: str = "u1", item: str = "i1", **extra: Any) -> dict[str, Any]:
    return {"event_id": f"e-{i}", "user_id": user, "item_id": item, "event_type": "click",
            "timestamp": time.time(), **extra}


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[bytes]:
    """Every value on ``topic`` (all partitions, from the start)."""
    from stream.kafka import ConsumerOptions, make_consumer

    consumer = make_consumer(bootstrap, ConsumerOptions(auto_offset_reset="earliest"))
    try:
        parts = [(topic, p) for p in sorted(consumer.partitions_for(topic))]
        if not parts:
            return []
        consumer.assign(parts)
        end = consumer.end_offsets(parts)
        out: list[bytes] = []
        got = dict.fromkeys(parts, -1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(got[p] + 1 < end[p] for p in parts):
            for rec in consumer.poll(500, 0.2):
                got[rec.part] = rec.offset
                if rec.value is not None:
                    out.append(rec.value)
        return out
    finally:
        consumer.close()

