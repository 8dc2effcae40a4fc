"""``liverec train --follow``: a model another trainer learns, evaluated and blended here.

The other trainer is stood in for by a model learned in memory and written to its own
snapshot root, as that trainer's checkpoints write it; the main trainer's batches are
built by hand (no Kafka: the follow path reads snapshot files only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from online_models import registry
from online_models.base import Batch, OnlineModel, UserHistory
from online_models.snapshot import SnapshotStore
from stream.columns import decode_columns
from stream.events import ClickEvent, encode
from stream.replay import produce_events
from stream.settings import KafkaSettings
from tests.trainer.helpers import synthetic_events
from trainer import Trainer, TrainerSettings
from trainer.follow import Followed
from trainer.source import PolledBatch

KAFKA = KafkaSettings(topic="clicks")
EVENTS = synthetic_events(900, seed=11, n_users=60, n_items=80)


def _polled(events: list[ClickEvent], start: int) -> PolledBatch:
    cols, rejects = decode_columns([encode(e) for e in events], now=events[-1].ts)
    assert not rejects
    return PolledBatch(cols, [], offsets={("clicks", 0): start + len(events)},
                       first_offsets={("clicks", 0): start}, records=len(events))


def _batch(events: list[ClickEvent]) -> Batch:
    return Batch.from_columns([e.user_id for e in events], [e.item_id for e in events],
                              None, [e.ts for e in events])


def _publish(root: Path, name: str, model: OnlineModel) -> int:
    """Write ``model`` to ``root`` as its own trainer's checkpoint would; the version."""
    info = SnapshotStore(root).write({name: model}, history=UserHistory(), offsets={},
                                     events_total=model.n_items, watermark=None, metrics={})
    return info.version


def _settings(tmp_path: Path, name: str, root: Path, ranked: bool = False) -> TrainerSettings:
    blend = {"components": ["popularity", "sequence", name]}
    return TrainerSettings(
        snapshots=tmp_path / "main",
        models="popularity,sequence,hybrid" + (",ranked" if ranked else ""),
        model_params={"hybrid": blend, **({"ranked": blend} if ranked else {})},
        follow={name: root}, metrics_port=-1, eval_cpu_share=0,
    )


def _scores(model: OnlineModel, users: list[str]) -> dict[str, list[float]]:
    """Each user's scores by item id (row order differs between copies of a model)."""
    ids = model.items.ids
    out = {}
    for u in users:
        s = model.score_all(u, [])
        out[u] = [float(s[r]) for r in np.argsort([str(i) for i in ids])]
    return out


def test_a_followed_seqnn_is_evaluated_and_blended_but_never_learned(tmp_path: Path) -> None:
    other = registry.create("seqnn", dim=16, seed=3)
    other.learn(_batch(EVENTS[:300]))
    root = tmp_path / "seqnn-root"
    _publish(root, "seqnn", other)
    steps = other.steps_total

    t = Trainer(_settings(tmp_path, "seqnn", root, ranked=True), KAFKA)
    followed = t.models["seqnn"]
    assert followed.steps_total == steps and followed.n_items == other.n_items
    for blender in ("hybrid", "ranked"):  # blended, not a private copy
        assert t.models[blender].shared_components()["seqnn"] is followed
    assert t.evaluator.models["seqnn"] is followed

    for lo in range(300, 900, 150):
        t.handle(_polled(EVENTS[lo:lo + 150], lo))
    assert followed.steps_total == steps  # never learned here
    assert t.models["sequence"].n_items > 0  # the others did learn
    assert t.evaluator.totals("seqnn")["n"] > 0  # ... and it was scored with them
    assert t.evaluator.totals("ranked")["n"] > 0
    assert t.metrics.registry.get_sample_value(
        "liverec_trainer_followed_snapshot_version", {"model": "seqnn"}) == 1
    t.checkpointer.close()


def test_a_new_version_of_the_followed_root_is_swapped_in(tmp_path: Path) -> None:
    other = registry.create("itemknn")
    other.learn(_batch(EVENTS[:300]))
    root = tmp_path / "knn-root"
    _publish(root, "itemknn", other)
    t = Trainer(_settings(tmp_path, "itemknn", root), KAFKA)
    first = t.models["itemknn"]
    t.handle(_polled(EVENTS[300:450], 300))

    other.learn(_batch(EVENTS[300:600]))
    assert _publish(root, "itemknn", other) == 2
    f = t.followed
    assert f is not None
    deadline = time.monotonic() + 30
    got = f.poll(now=1e12)  # starts a background check
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
        got = f.poll(now=0.0)  # takes the check's result; starts none
    assert [(m.name, m.version) for m in got] == [("itemknn", 2)]
    t.take_followed(got)

    second = t.models["itemknn"]
    assert second is not first and second.n_items == other.n_items
    assert t.models["hybrid"].shared_components()["itemknn"] is second
    assert t.evaluator.models["itemknn"] is second
    assert t.metrics.registry.get_sample_value(
        "liverec_trainer_followed_snapshot_version", {"model": "itemknn"}) == 2
    t.handle(_polled(EVENTS[450:600], 450))  # scores the new version's rows
    assert f.poll(now=0.0) == [] and f.load_now() == []  # nothing newer
    t.checkpointer.close()
    f.close()


def test_the_trainers_snapshot_carries_the_followed_copy_without_copying_it_again(
        tmp_path: Path) -> None:
    other = registry.create("itemknn")
    other.learn(_batch(EVENTS[:400]))
    root = tmp_path / "knn-root"
    _publish(root, "itemknn", other)
    s = _settings(tmp_path, "itemknn", root)
    t = Trainer(s, KAFKA)
    t.handle(_polled(EVENTS[400:600], 400))
    entry = t.followed_versions.in_use["itemknn"].captured
    assert t._capture().models["itemknn"] is entry  # the version's copy, not a new one
    first = t.checkpoint("test", wait=True)
    t.handle(_polled(EVENTS[600:650], 600))
    written = t.checkpoint("test", wait=True)
    assert first is not None and written is not None
    t.checkpointer.close()
    # The unchanged followed copy is hard-linked into the next version, not written again.
    a, b = first.info.path, written.info.path
    assert (a / "model-itemknn.safetensors").stat().st_ino == (
        b / "model-itemknn.safetensors").stat().st_ino
    assert (a / "model-sequence.safetensors").stat().st_ino != (
        b / "model-sequence.safetensors").stat().st_ino

    served = SnapshotStore(tmp_path / "main").load()
    assert served.extra_meta["followed"]["itemknn"]["version"] == 1
    users = sorted({e.user_id for e in EVENTS[:50]})
    assert _scores(served.models["itemknn"], users) == _scores(other, users)
    hybrid = served.models["hybrid"]
    assert hybrid.shared_components()["itemknn"] is served.models["itemknn"]
    # The server needs nothing else: it serves the trainer's copy and says which it is.
    from serving.metrics import ServingMetrics
    from serving.settings import ServeSettings
    from serving.state import ServingState

    state = ServingState(ServeSettings(snapshots=tmp_path / "main", bootstrap=""),
                         ServingMetrics())
    assert state.load_initial() and state.current is not None
    assert state.current.summary()["followed"]["itemknn"] == {
        "root": str(root), "version": 1, "offsets": {}, "watermark": None}

    # A restart with the followed root gone: the trainer's own copy is blended.
    for p in sorted(root.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    again = Trainer(s, KAFKA)
    assert _scores(again.models["itemknn"], users) == _scores(other, users)
    assert again.models["hybrid"].shared_components()["itemknn"] is again.models["itemknn"]
    # ... as the version its snapshot recorded, copied once for every later snapshot
    assert again.followed_versions.in_use["itemknn"].version == 1
    assert again._capture().models["itemknn"] is again.followed_versions.in_use["itemknn"].captured
    assert again.metrics.registry.get_sample_value(
        "liverec_trainer_followed_snapshot_version", {"model": "itemknn"}) == 1
    again.checkpointer.close()


def test_followed_settings_parse_and_misuse_is_refused(tmp_path: Path) -> None:
    s = TrainerSettings(follow="seqnn=./a, itemknn = /b", models="popularity")
    assert s.follow == {"seqnn": Path("a"), "itemknn": Path("/b")}
    assert s.model_names() == ["popularity", "seqnn", "itemknn"]
    with pytest.raises(ValueError, match="MODEL=SNAPSHOT_DIR"):
        TrainerSettings(follow="seqnn")
    with pytest.raises(ValueError, match="blend"):
        Trainer(TrainerSettings(snapshots=tmp_path / "m", models="popularity",
                                follow={"hybrid": tmp_path / "h"}, metrics_port=-1), KAFKA)
    from trainer.partitioned import ScaleOutTrainer

    with pytest.raises(ValueError, match="--follow is for a single trainer"):
        ScaleOutTrainer(TrainerSettings(snapshots=tmp_path / "s", models="popularity",
                                        scale_out=True, follow={"itemknn": tmp_path / "k"},
                                        metrics_port=-1), KAFKA)


def test_a_root_without_the_model_leaves_the_one_in_use(tmp_path: Path) -> None:
    root = tmp_path / "root"
    pop = registry.create("popularity")
    pop.learn(_batch(EVENTS[:10]))
    _publish(root, "popularity", pop)  # a root of the wrong model
    f = Followed({"itemknn": root}, every_s=5.0)
    assert f.load_now() == [] and f.current == {}
    f.close()


def test_a_version_ahead_of_this_trainer_waits_until_it_has_passed_its_events(
        tmp_path: Path) -> None:
    """A followed model that learned events this trainer has not scored yet would be
    tested on its own training data: it is held back until this trainer passes them."""
    other = registry.create("itemknn")
    other.learn(_batch(EVENTS[:600]))
    root = tmp_path / "knn-root"
    SnapshotStore(root).write({"itemknn": other}, history=UserHistory(),
                              offsets={"clicks": {0: 600}}, events_total=600,
                              watermark=EVENTS[599].ts, metrics={})
    t = Trainer(_settings(tmp_path, "itemknn", root), KAFKA)
    placeholder = t.models["itemknn"]
    assert placeholder.n_items == 0 and "itemknn" in t.followed_versions.pending
    for lo in range(0, 600, 150):
        t.handle(_polled(EVENTS[lo:lo + 150], lo))
        t.take_followed([])
        taken = t.models["itemknn"] is not placeholder
        assert taken == (lo + 150 >= 600), lo  # only once offset 600 is passed
    assert t.models["hybrid"].shared_components()["itemknn"] is t.models["itemknn"]
    t.checkpointer.close()


@pytest.mark.kafka
def test_through_kafka_a_followed_trainer_ahead_is_not_scored_on_what_it_learned(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    """Two real trainers on one topic: the seqnn trainer has learned the whole topic
    before the main one starts, following it. The main trainer must not score that
    version on events it learned: it blends and scores it only once it has passed
    them, and its final snapshot carries it."""
    topic = new_topic(partitions=2)
    events = synthetic_events(3000, seed=4, n_users=100, n_items=150)
    produce_events(kafka_bootstrap, topic, events)
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    root = tmp_path / "seqnn-root"
    other = Trainer(TrainerSettings(snapshots=root, models="seqnn", group=f"s-{topic}",
                                    model_params={"seqnn": {"dim": 16}}, metrics_port=-1,
                                    idle_exit_s=3, max_seconds=120), kafka)
    learned = other.run().events_total
    assert learned > 2900  # all but what the flood guard capped
    last = SnapshotStore(root).latest_version()

    main = Trainer(_settings(tmp_path, "seqnn", root).model_copy(update={
        "group": f"m-{topic}", "idle_exit_s": 3, "max_seconds": 120,
        "follow_every_s": 0.2}), kafka)
    placeholder = main.models["seqnn"]
    assert placeholder.n_items == 0 and "seqnn" in main.followed_versions.pending
    result = main.run()
    assert result.events_total > 2900  # (the flood guard caps by batch: +-1 of `learned`)
    # Every event was scored with the empty placeholder, none with the version that
    # had learned it (it would have hit often: it knows every event of the topic).
    totals = main.evaluator.totals("seqnn")
    assert totals["n"] > 1000 and totals["hr"] == 0.0
    assert main.models["seqnn"] is not placeholder  # taken once passed (at the end)
    snap = SnapshotStore(tmp_path / "main").load()
    assert snap.extra_meta["followed"]["seqnn"]["version"] == last
    assert snap.models["seqnn"].n_items == other.models["seqnn"].n_items
