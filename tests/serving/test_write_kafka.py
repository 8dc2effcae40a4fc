"""The write path against a real broker: the 202 happy path with a key, batches, and
event ids that cannot hijack another source's event (the trainer still learns it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from online_models.snapshot import SnapshotStore
from serving.app import create_app
from serving.auth import AuthSettings, KeyFile
from serving.routers.events import AcceptedBatch, AcceptedOne
from stream.events import ClickEvent
from stream.replay import produce_events
from tests.faults.helpers import read_topic
from tests.serving.client import TestClient
from tests.serving.conftest import settings_for
from tests.trainer.helpers import TrainerProcess, scrape, wait_for

pytestmark = pytest.mark.kafka


def _ready(client: TestClient) -> bool:
    return client.get("/readyz").status_code == 200


def test_colliding_event_id_cannot_drop_the_original(
    kafka_bootstrap: str, new_topic: Callable[..., str], store: SnapshotStore, tmp_path: Path
) -> None:
    topic = new_topic(partitions=1)
    original = ClickEvent("purchase-42", "real-user", "real-item", "purchase",
                          datetime.now(UTC))
    produce_events(kafka_bootstrap, topic, [original])
    kf = KeyFile(tmp_path / "keys")
    key = kf.add("mallory", {"write"})
    app = create_app(settings_for(store.root, bootstrap=kafka_bootstrap, topic=topic),
                     auth=AuthSettings(api_keys_file=kf.path))
    hijack = {"event_id": "purchase-42", "user_id": "fake", "item_id": "spam",
              "event_type": "view", "timestamp": time.time()}
    with TestClient(app) as client:
        wait_for(lambda: _ready(client), 60, "server connected to Kafka")
        headers = {"Authorization": f"Bearer {key}"}
        r = client.post("/v1/events", json=hijack, headers=headers)
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["event_id"] == "mallory/purchase-42" and body["topic"] == topic
        AcceptedOne.model_validate(body, strict=True)  # the body the schema documents
        # A retry of the same post keeps its id: the trainer de-duplicates it.
        assert client.post("/v1/events", json=hijack, headers=headers).status_code == 202
        # A batch is acknowledged event by event.
        batch = [{**hijack, "event_id": f"b{i}", "user_id": f"fake{i}"} for i in range(3)]
        r = client.post("/v1/events", json=batch, headers=headers)
        assert r.status_code == 202, r.text
        assert [e["event_id"] for e in r.json()["events"]] == [
            "mallory/b0", "mallory/b1", "mallory/b2"]
        AcceptedBatch.model_validate(r.json(), strict=True)
    on_topic = [orjson.loads(v)["event_id"] for v in read_topic(kafka_bootstrap, topic)]
    assert on_topic.count("purchase-42") == 1 and on_topic.count("mallory/purchase-42") == 2

    proc = TrainerProcess(
        ["--bootstrap", kafka_bootstrap, "--topic", topic, "--group", f"g-{topic}",
         "--snapshots", str(tmp_path / "snaps"), "--metrics-port", "0",
         "--models", "popularity", "--max-seconds", "300"],
        tmp_path / "train.log",
    )
    try:
        port = proc.metrics_port()
        learned = ("liverec_trainer_events_learned_since_start", ())
        wait_for(lambda: scrape(port).get(learned) == 5, 240, "five distinct events learned")
        dups = ("liverec_trainer_duplicates_dropped_total", (("topic", topic),))
        samples = wait_for(lambda: (s := scrape(port)).get(dups) == 1 and s, 60, "one dup")
        assert samples[learned] == 5  # the real purchase is among them: not hijacked
    finally:
        proc.terminate()
    snap = SnapshotStore(tmp_path / "snaps").load_latest_valid()
    assert snap is not None
    popularity = snap.models["popularity"]
    assert "real-item" in set(popularity.items.ids)


def test_serve_settings_read_the_documented_env_and_weigh_live_events(
    kafka_bootstrap: str, new_topic: Callable[..., str], store: SnapshotStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serving.settings import ServeSettings

    topic = new_topic(partitions=1)
    monkeypatch.delenv("LIVEREC_BOOTSTRAP", raising=False)
    monkeypatch.setenv("LIVEREC_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("LIVEREC_TOPIC", topic)
    monkeypatch.setenv("LIVEREC_EVENT_WEIGHTS",
                       '{"view": 1, "click": 2, "add_to_cart": 3, "purchase": 7}')
    settings = ServeSettings(snapshots=store.root)  # as `liverec serve` builds it
    assert settings.bootstrap == kafka_bootstrap
    assert settings.kafka.event_weights["purchase"] == 7.0
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: _ready(client), 60, "server connected to Kafka")
        for event_type, item in (("purchase", "new-bought"), ("view", "new-viewed")):
            r = client.post("/v1/events", json={"user_id": "w", "item_id": item,
                                                "event_type": event_type,
                                                "timestamp": time.time()})
            assert r.status_code == 202, r.text
        pop = wait_for(lambda: (b := client.get("/v1/items/new-bought").json())["popularity"]
                       > 0 and b["popularity"], 60, "the purchase reached the live context")
        viewed = wait_for(lambda: client.get("/v1/items/new-viewed").json()["popularity"],
                          60, "the view reached the live context")
    # The trainer's weights (purchase 7, view 1 here), not 1.0 for every event.
    assert pop == pytest.approx(7.0, rel=0.01) and viewed == pytest.approx(1.0, rel=0.01)
