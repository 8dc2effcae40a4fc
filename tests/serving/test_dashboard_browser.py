"""The dashboard in headless Chromium against a live uvicorn server fed from Kafka."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from online_models.snapshot import SnapshotStore
from serving.app import create_app
from stream.events import ClickEvent, encode, event_key
from stream.kafka import make_producer
from tests.serving.conftest import settings_for
from tests.serving.threaded import serve_in_thread

pytestmark = [pytest.mark.browser, pytest.mark.kafka]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHARTS = ("c-ingest", "c-lag", "c-hr", "c-psi", "c-lat", "c-age")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_server(
    store: SnapshotStore, kafka_bootstrap: str, new_topic: Callable[..., str]
) -> Iterator[tuple[str, str]]:
    topic = new_topic(partitions=2)
    port = _free_port()
    settings = settings_for(
        store.root, bootstrap=kafka_bootstrap, topic=topic, port=port, dashboard_interval_s=0.5
    )
    with serve_in_thread(create_app(settings), port) as base:
        yield base, topic


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / "chromium-profile"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        "--virtual-time-budget=8000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_dashboard_renders_live_charts(
    live_server: tuple[str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    base, topic = live_server
    producer = make_producer(kafka_bootstrap)
    with httpx.Client(base_url=base, timeout=10) as http:
        for i in range(60):
            ev = ClickEvent(f"e{i}", f"u{i % 7:06d}", f"i{i % 30:06d}", "click", datetime.now(UTC))
            producer.send(topic, encode(ev), key=event_key(ev))
            http.get("/v1/recommendations", params={"user_id": f"u{i % 9:06d}"})
            time.sleep(0.03)
        producer.flush()
        deadline = time.monotonic() + 60
        last: dict[str, object] = {}
        while time.monotonic() < deadline:
            points = http.get("/v1/dashboard/data").json()["points"]
            last = points[-1] if points else {}
            if len(points) >= 4 and last.get("consumer_lag") is not None and any(
                (p.get("ingest_rate") or 0) > 0 for p in points
            ):
                break
            time.sleep(0.25)
        assert last.get("consumer_lag") is not None, last
    producer.close()

    # The console goes to stderr: the page's Content Security Policy must block nothing
    # it needs (an inline script or style would be refused there, and said so).
    dom = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom",
                    f"{base}/dashboard")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Content Security Policy" not in dom.stderr, dom.stderr[-2000:]
    html = dom.stdout
    for chart in CHARTS:
        m = re.search(rf'<svg id="{chart}"[^>]*data-points="(\d+)"', html)
        assert m is not None and int(m.group(1)) > 0, f"{chart} drew no points"
    assert 'data-series="bpr"' in html  # HR@10 per model from the snapshot's metrics
    assert "error:" not in html
    status = re.search(r'<div id="status"[^>]*>([^<]*)</div>', html)
    assert status is not None and "snapshot v1" in status.group(1)

    shot = tmp_path / "dashboard.png"
    res = _chromium(tmp_path, f"--screenshot={shot}", f"{base}/dashboard")
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000
