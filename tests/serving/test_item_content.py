"""Item content through the serving path: an item published with content but never
clicked is answered from content by ``/v1/items/{id}/similar`` and listed beside the
item it resembles, from the item-features topic (real broker), a file, or the
features a snapshot's content model carries."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from online_models import registry
from online_models.base import Batch
from online_models.content import ItemFeatures
from online_models.snapshot import SnapshotStore
from serving.app import create_app
from stream.item_features import item_features_topic, publish_item_features
from stream.kafka import create_topics, delete_topics
from tests.serving.client import TestClient
from tests.serving.conftest import Trained, settings_for
from tests.trainer.helpers import wait_for

WORDS = ("amber", "basket", "candle", "doily", "enamel", "felt", "glass", "hook", "ivory",
         "jug", "kettle", "linen", "mug", "napkin", "owl", "parasol", "quilt", "ribbon")
PLANTED = "red wooden toy train locomotive"
NEW_ITEM = "new-train"


def _catalogue(items: list[str], anchor: str) -> dict[str, str]:
    """Random three-word content per item; ``anchor`` gets the planted text."""
    rnd = random.Random(0)
    texts = {i: " ".join(rnd.sample(WORDS, 3)) for i in items}
    texts[anchor] = PLANTED
    return texts


def _anchor(trained: Trained) -> tuple[str, list[str]]:
    models = trained[0]
    items = [i for i in models["itemknn"].items.ids if i is not None]
    return items[0], items


def _similar(client: TestClient, item: str, **params: str) -> tuple[int, dict[str, object]]:
    r = client.get(f"/v1/items/{item}/similar", params={"k": "5", **params})
    return r.status_code, r.json()


def _ids(body: dict[str, object]) -> list[str]:
    return [str(e["item_id"]) for e in body["items"]]  # type: ignore[index, union-attr]


@pytest.mark.kafka
def test_new_item_from_the_features_topic_is_recommended_with_its_look_alike(
    kafka_bootstrap: str, new_topic: Callable[..., str], store: SnapshotStore,
    trained: Trained,
) -> None:
    topic = new_topic(partitions=1)
    ftopic = item_features_topic(topic)
    create_topics(kafka_bootstrap, [ftopic], configs={"cleanup.policy": "compact"})
    anchor, items = _anchor(trained)
    publish_item_features(kafka_bootstrap, _catalogue(items, anchor), ftopic)
    app = create_app(settings_for(store.root, bootstrap=kafka_bootstrap, topic=topic,
                                  item_features_topic=ftopic))
    try:
        with TestClient(app) as client:
            wait_for(lambda: anchor in app.state.serving.content, 60, "catalogue content read")
            # Not clicked, no content yet: unknown.
            assert _similar(client, NEW_ITEM)[0] == 404
            publish_item_features(kafka_bootstrap, {NEW_ITEM: PLANTED + " engine"}, ftopic)
            status, body = wait_for(
                lambda: (got := _similar(client, NEW_ITEM))[0] == 200 and got, 60,
                "the new item's content reached the server")
            # Before its first click, it is answered from content: its look-alike first.
            assert body["model"] == "content"
            assert _ids(body)[0] == anchor
            # ... and it is listed with the clicked item it resembles.
            status, body = _similar(client, anchor, model="content")
            assert status == 200 and _ids(body)[0] == NEW_ITEM
            # The models that know the anchor still answer for it themselves.
            status, body = _similar(client, anchor, model="itemknn")
            assert status == 200 and body["model"] == "itemknn" and NEW_ITEM not in _ids(body)
            reg = app.state.serving.metrics.registry
            assert reg.get_sample_value("liverec_serving_content_updates_total") == len(items) + 1
            assert reg.get_sample_value("liverec_serving_content_items") == len(items) + 1
    finally:
        delete_topics(kafka_bootstrap, [ftopic])


def test_new_item_from_an_item_features_file(
    tmp_path: Path, store: SnapshotStore, trained: Trained
) -> None:
    anchor, items = _anchor(trained)
    texts = _catalogue(items, anchor)
    texts[NEW_ITEM] = PLANTED + " engine"
    path = tmp_path / "retail.csv"
    rows = [f"{n},{item},{text.upper()},1,2011-01-01 10:00:00,1.0,1,UK"
            for n, (item, text) in enumerate(texts.items())]
    path.write_text("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,"
                    "CustomerID,Country\n" + "\n".join(rows) + "\n")
    app = create_app(settings_for(store.root, item_features=path))
    with TestClient(app) as client:
        status, body = _similar(client, NEW_ITEM, model="bpr")
        assert status == 200 and body["model"] == "content" and _ids(body)[0] == anchor
        status, body = _similar(client, anchor, model="content")
        assert status == 200 and _ids(body)[0] == NEW_ITEM
        assert _similar(client, "no-such-item")[0] == 404
        reg = client.app.state.serving.metrics.registry  # type: ignore[attr-defined]
        assert reg.get_sample_value("liverec_serving_content_items") == len(texts)


def test_the_features_a_snapshot_carries_answer_without_file_or_topic(
    tmp_path: Path, trained: Trained
) -> None:
    models, history, watermark = trained
    anchor, items = _anchor(trained)
    texts = _catalogue(items, anchor)
    texts[NEW_ITEM] = PLANTED + " engine"
    content = registry.create("content-knn")
    content.set_item_features(ItemFeatures.from_texts(texts))  # type: ignore[attr-defined]
    content.learn(Batch.from_columns(["u1", "u2"], [anchor, items[1]], None, [1.0, 2.0]))
    store = SnapshotStore(tmp_path / "snapshots")
    store.write({**models, "content-knn": content}, history=history, offsets={},
                events_total=2, watermark=watermark)
    with TestClient(create_app(settings_for(store.root))) as client:
        status, body = _similar(client, NEW_ITEM)
        assert status == 200 and body["model"] == "content" and _ids(body)[0] == anchor
        # content-knn itself (its catalogue: clicked items) answers for the new item too.
        status, body = _similar(client, NEW_ITEM, model="content-knn")
        assert status == 200 and _ids(body)[0] == anchor
