"""Issue 10 item 6 against the real server and broker: ids are printable text.

A control character in an id is ``bad_id`` on the HTTP path (422) and on the stream
(the server's live tail counts the message as rejected and learns nothing from it);
invalid UTF-8 is ``not_utf8`` on both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from tests.faults.helpers import ServerProcess, metric, produce_raw, wait_for, write_snapshot

pytestmark = pytest.mark.kafka


def test_unprintable_ids_are_refused_by_http_and_stream(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=1)
    write_snapshot(tmp_path / "snaps")
    server = ServerProcess(tmp_path / "snaps", tmp_path / "serve.log", "--topic", topic,
                           env={"LIVEREC_KAFKA_BOOTSTRAP": kafka_bootstrap})
    try:
        server.wait_listening()
        wait_for(lambda: httpx.get(f"{server.base}/readyz").status_code == 200, 60, "ready")
        ok = {"user_id": "u", "item_id": "i", "event_type": "click", "timestamp": time.time()}
        for field in ("user_id", "item_id", "event_id", "session_id"):
            for bad in ("a\x00b", "\x1b[31m", "\x85"):
                r = httpx.post(f"{server.base}/v1/events", json={**ok, field: bad})
                assert r.status_code == 422 and r.json()["reason"] == "bad_id", (field, bad)
        r = httpx.post(f"{server.base}/v1/events", content=b'{"user_id": "\xc3\x28"}',
                       headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["reason"] == "not_utf8"
        r = httpx.post(f"{server.base}/v1/events", json={**ok, "user_id": "printable-ü"})
        assert r.status_code == 202, r.text

        # The same ids straight on the topic: the stream's decode refuses them too.
        produce_raw(kafka_bootstrap, topic, [
            orjson.dumps({**ok, "event_id": "x1", "user_id": "nul\x00"}),
            orjson.dumps({**ok, "event_id": "x2", "item_id": "esc\x1b"}),
            b"\xff\xfe",
        ])
        rejected = {"outcome": "rejected"}
        wait_for(lambda: metric(server.base, "liverec_serving_live_events_total",
                                rejected) == 3.0, 60, "three rejects on the live tail")
        assert metric(server.base, "liverec_serving_live_events_total", {"outcome": "ok"}) == 1.0
        assert httpx.get(f"{server.base}/v1/users/printable-ü").json()["live_items"] == ["i"]
    finally:
        server.stop()
