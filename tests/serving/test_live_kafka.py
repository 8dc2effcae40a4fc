"""Live context against a real broker: a click reaches the next recommendation."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from online_models.snapshot import SnapshotStore
from serving.app import create_app
from stream.events import ClickEvent, encode, event_key
from stream.kafka import deliver, make_producer
from tests.serving.client import TestClient
from tests.serving.conftest import Trained, settings_for

pytestmark = pytest.mark.kafka


def _poll(check: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_click_on_topic_is_excluded_from_next_recommendation(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    store: SnapshotStore,
    trained: Trained,
) -> None:
    topic = new_topic(partitions=3)
    settings = settings_for(store.root, bootstrap=kafka_bootstrap, topic=topic)
    user = "u000003"
    with TestClient(create_app(settings)) as client:
        state = client.app.state.serving  # type: ignore[attr-defined]
        assert _poll(lambda: state.tail is not None and state.tail.assigned.is_set())

        def top_item() -> str:
            r = client.get("/v1/recommendations", params={"user_id": user, "model": "bpr"})
            assert r.status_code == 200
            return str(r.json()["items"][0]["item_id"])

        # 1. A click produced straight to the topic (as the trainer's feed sees it).
        target = top_item()
        producer = make_producer(kafka_bootstrap)
        ev = ClickEvent("e-live-1", user, target, "click", datetime.now(UTC))
        deliver(producer, topic, encode(ev), event_key(ev))
        producer.close()
        assert _poll(lambda: target != top_item()), "click never reached the live context"
        assert target in client.get(f"/v1/users/{user}").json()["live_items"]

        # 2. A click through the API: validated, produced, tailed back, excluded.
        target2 = top_item()
        r = client.post(
            "/v1/events",
            json={
                "user_id": user,
                "item_id": target2,
                "event_type": "purchase",
                "timestamp": time.time(),
            },
        )
        assert r.status_code == 202, r.text
        assert r.json()["topic"] == topic
        assert _poll(lambda: target2 != top_item())

        # 3. A brand-new item's clicks raise its popularity quickly.
        r = client.post(
            "/v1/events",
            json={"user_id": "x", "item_id": "fresh-item", "event_type": "view",
                  "timestamp": time.time()},
        )
        assert r.status_code == 202
        assert _poll(lambda: client.get("/v1/items/fresh-item").json()["popularity"] > 0)
        reg = state.metrics.registry
        assert reg.get_sample_value("liverec_serving_live_events_total", {"outcome": "ok"}) >= 3

        # 4. Posting the same event again (a client's retry), or one user's burst on
        # one item, does not push the item up every new visitor's popular list.
        dup = {"event_id": "dup-1", "user_id": "y", "item_id": "pushed-item",
               "event_type": "purchase", "timestamp": time.time()}
        for _ in range(5):
            assert client.post("/v1/events", json=dup).status_code == 202
        burst = [{**dup, "event_id": f"burst-{i}"} for i in range(20)]
        assert client.post("/v1/events", json=burst).status_code == 202
        marker = {**dup, "event_id": "marker", "item_id": "marker-item", "event_type": "view"}
        assert client.post("/v1/events", json=marker).status_code == 202

        def popularity(item: str) -> float:
            return float(client.get(f"/v1/items/{item}").json()["popularity"])

        # The marker comes last on y's partition (keyed by user): once it counted,
        # everything before it was read.
        assert _poll(lambda: popularity("marker-item") > 0)
        assert 4.9 < popularity("pushed-item") <= 5.0  # y's purchase, once
        assert reg.get_sample_value("liverec_serving_live_events_total",
                                    {"outcome": "duplicate"}) == 4
