"""Item content in the trainer: the file and the item-features topic (real broker) reach
every model that takes content, topic updates are applied between batches, a new item
is recommended before its first click, and the snapshot carries the features."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from online_models.content import ItemFeatures
from stream.columns import decode_columns
from stream.events import encode
from stream.item_features import item_features_topic, publish_item_features
from stream.kafka import delete_topics
from stream.settings import KafkaSettings
from tests.trainer.helpers import synthetic_events, wait_for
from trainer import Trainer, TrainerSettings
from trainer.source import PolledBatch

MOVIES = """movieId,title,genres
lamp,Red Wooden Desk Lamp (1995),Lighting|Wood
vase,Blue Glass Vase (1987),Glass
"""


def _batch(events: list, start: int) -> PolledBatch:  # type: ignore[type-arg]
    cols, rejects = decode_columns([encode(e) for e in events], now=events[-1].ts)
    assert not rejects
    return PolledBatch(cols, [], offsets={("clicks", 0): start + len(events)},
                       first_offsets={("clicks", 0): start}, records=len(events))


def _settings(tmp_path: Path, **extra: object) -> TrainerSettings:
    return TrainerSettings(
        snapshots=tmp_path / "snaps", models="popularity,itemknn,content-knn,hybrid",
        model_params={"content-knn": {"catalog_from_features": True},
                      "hybrid": {"components": ["popularity", "itemknn", "content-knn"]}},
        metrics_port=-1, eval_cpu_share=0, drift_adapt=False, **extra)


def test_file_features_reach_every_content_model_and_the_snapshot(tmp_path: Path) -> None:
    movies = tmp_path / "movies.csv"
    movies.write_text(MOVIES)
    t = Trainer(_settings(tmp_path, item_features=movies), KafkaSettings(topic="clicks"))
    f = t.content.features
    assert isinstance(f, ItemFeatures) and "lamp" in f
    assert t.models["content-knn"].features is f  # type: ignore[attr-defined]
    t.handle(_batch(synthetic_events(300, seed=3), 0))
    t.checkpoint("test", wait=True)
    again = Trainer(_settings(tmp_path), KafkaSettings(topic="clicks"))  # no file now
    restored = again.models["content-knn"].features  # type: ignore[attr-defined]
    assert isinstance(restored, ItemFeatures) and "vase" in restored
    np.testing.assert_allclose(restored.tokens_of("lamp")[1], f.tokens_of("lamp")[1])


@pytest.mark.kafka
def test_topic_content_makes_a_new_item_recommendable_before_its_first_click(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=1)
    ftopic = item_features_topic(topic)
    events = synthetic_events(600, seed=5)
    items = sorted({e.item_id for e in events})
    anchor = items[0]
    publish_item_features(kafka_bootstrap, {
        **{i: f"plain item number {n} {'xyz' * (n % 5)}" for n, i in enumerate(items)},
        anchor: "red wooden toy train locomotive"}, ftopic)
    t = Trainer(_settings(tmp_path, item_features_topic=ftopic),
                KafkaSettings(bootstrap=kafka_bootstrap, topic="clicks"))
    try:
        t.content.start()
        wait_for(lambda: t.content.apply_pending() or (
            t.content.features is not None and anchor in t.content.features), 60,
            "the catalogue's content applied")
        t.handle(_batch(events, 0))
        publish_item_features(kafka_bootstrap, {"new-train": "red wooden toy train engine"},
                              ftopic)
        wait_for(lambda: t.content.apply_pending(), 60, "the new item's content applied")
    finally:
        t.content.stop()
        delete_topics(kafka_bootstrap, [ftopic])
    model = t.models["content-knn"]
    top = [i for i, _ in model.recommend("someone", 1, history=[anchor], exclude=[anchor])]
    assert top == ["new-train"]
    assert model.similar("new-train", 1)[0][0] == anchor


def test_item_content_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from serving.settings import ServeSettings

    monkeypatch.setenv("LIVEREC_ITEM_FEATURES", str(tmp_path / "movies.csv"))
    monkeypatch.setenv("LIVEREC_ITEM_FEATURES_PRESET", "movielens")
    monkeypatch.setenv("LIVEREC_ITEM_FEATURES_TOPIC", "clicks.item_features")
    for s in (TrainerSettings(), ServeSettings()):
        assert s.item_features == tmp_path / "movies.csv"
        assert (s.item_features_preset, s.item_features_topic) == (
            "movielens", "clicks.item_features")
