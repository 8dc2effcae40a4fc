"""Scale-out trainers (in-process): two share one model through the update topic.

Two :class:`ScaleOutTrainer` s in threads on a 4-partition topic learn every event
once between them; the merged snapshot's popularity, item-kNN and sequence state
equals one trainer's on the same events (exact counts: decay off), as do every
user's windows; per-partition snapshots sum to the events produced; only the owner
of the last partition (the range assignor gives it the fewest) folds the update
topic while learning.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer

from online_models.snapshot import SnapshotStore
from stream.kafka import ConsumerOptions, KafkaClientError, delete_topics
from stream.kafka.confluent import ConfluentConsumer
from stream.kafka.transactional import TransactionalProducer
from stream.replay import produce_events
from stream.settings import KafkaSettings
from tests.trainer.helpers import synthetic_events
from tests.trainer.scale_helpers import (
    EXACT_PARAMS,
    assert_same_items,
    reference,
    user_windows,
)
from trainer.checkpoint import SnapshotLocationBusy, lock_location
from trainer.partition_state import PartitionStore
from trainer.partitioned import ScaleOutTrainer, eval_users, updates_topic
from trainer.poll_learning import PollLearner
from trainer.settings import TrainerSettings

pytestmark = [pytest.mark.kafka]


def _settings(snaps: Path, group: str, instance: str, models_override: str | None = None,
              **kw: object) -> TrainerSettings:
    return TrainerSettings(
        group=group, snapshots=snaps, models=models_override or "popularity,itemknn,sequence",
        model_params=EXACT_PARAMS, scale_out=True, instance_id=instance,
        snapshot_every_s=0.5, merge_every_s=0.5, session_timeout_ms=6000,
        metrics_port=-1, **kw)


def _owned(t: ScaleOutTrainer) -> set[int]:
    while True:
        try:
            return set(t.parts)  # the trainer's thread may be changing it
        except RuntimeError:
            continue


def _learn_split(trainers: list[ScaleOutTrainer], bootstrap: str, topic: str,
                 events: list[Any], partitions: int = 4) -> list[set[int]]:
    """Run ``trainers`` in threads until they exit idle; the events are produced once
    every trainer owns partitions (on a pre-filled topic the first member to join
    could learn it all before the others' rebalance). Each event is learned once.
    Returns the partitions each trainer owned while the events were learned."""
    threads = [threading.Thread(target=t.run) for t in trainers]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 120
    while True:
        split = [_owned(t) for t in trainers]
        if all(split) and sum(map(len, split)) == partitions:
            break
        assert time.monotonic() < deadline, "the trainers never split the topic"
        time.sleep(0.1)
    produce_events(bootstrap, topic, events)
    for th in threads:
        th.join(300)
    assert not any(th.is_alive() for th in threads)
    assert sum(t.events_learned for t in trainers) == len(events)
    return split


# Folding after every read with a transaction per poll, on 4 partitions; and folding
# (an hour's interval) only at the merges and shutdown, with the default transaction
# interval, on 3 partitions (the folder learns one of them).
@pytest.mark.parametrize(("fold_every_s", "commit_every_s", "partitions"),
                         [(0.0, 0.0, 4), (3600.0, 0.5, 3)])
def test_two_trainers_in_one_group_equal_one_trainer(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, fold_every_s: float,
    commit_every_s: float, partitions: int
) -> None:
    topic = new_topic(partitions=partitions)
    events = synthetic_events(20_000, seed=11, n_users=500, n_items=300)
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    snaps = tmp_path / "snaps"
    # Every evaluable event scored (no CPU governor): which trainer evaluates is the
    # point below, not how much a governor lets through in a short run.
    trainers = [ScaleOutTrainer(_settings(snaps, f"g-{topic}", f"t{i}", idle_exit_s=15.0,
                                          fold_every_s=fold_every_s, eval_cpu_share=0.0,
                                          commit_every_s=commit_every_s),
                                kafka) for i in range(2)]
    try:
        split = _learn_split(trainers, kafka_bootstrap, topic, events, partitions)
        assert all(t.events_learned > 0 for t in trainers), [t.events_learned for t in trainers]

        per_part = [PartitionStore(snaps, p, 5).load(topic) for p in range(partitions)]
        assert all(s is not None for s in per_part)
        assert sum(s.events_total for s in per_part if s) == len(events)

        # Members that stop together may merge before the other's last partition
        # snapshot; one more member, alone in the group, merges everything.
        last = ScaleOutTrainer(_settings(snaps, f"g-{topic}", "last", idle_exit_s=3.0), kafka)
        last.run()
        assert last.events_learned == 0
        merged = SnapshotStore(snaps).load()
        assert merged.events_total == len(events)
        ref = reference(events, EXACT_PARAMS)
        for name in EXACT_PARAMS:
            assert_same_items(merged.models[name], ref[name])
        for name in ("itemknn", "sequence"):
            assert user_windows(merged.models[name]) == user_windows(ref[name])
        # A member's item state is a fold of the update topic: the last member, which
        # restored the most advanced item snapshot and read the topic to its end, holds
        # every partition's events (one that left early has not seen later updates).
        for name in EXACT_PARAMS:
            assert_same_items(last.models[name], ref[name])
        assert sum(last.fold.coverage.values()) == len(events)
        def messages(t: ScaleOutTrainer, direction: str) -> float:
            return t.metrics.registry.get_sample_value(
                "liverec_trainer_update_messages_total", {"direction": direction})

        for t in trainers:
            reg = t.metrics.registry
            assert reg.get_sample_value("liverec_trainer_transactions_total",
                                        {"outcome": "committed"}) > 0
            assert reg.get_sample_value("liverec_trainer_transactions_total",
                                        {"outcome": "aborted"}) == 0
            assert messages(t, "out") > 0
        # Only the owner of the last partition folds the update topic while learning;
        # the other folds just the tail after the newest item snapshot when it merges
        # at shutdown. (Before: every trainer folded every message.) The range assignor
        # gives the last partition to the member with the fewest: the fold goes to the
        # lighter learner.
        published = sum(messages(t, "out") for t in trainers)
        folded = sorted(messages(t, "in") for t in trainers)
        assert folded[1] >= published, (folded, published)
        assert folded[0] < published / 2, (folded, published)
        folder_at = max(range(2), key=lambda k: messages(trainers[k], "in"))
        folder, other = trainers[folder_at], trainers[1 - folder_at]
        assert partitions - 1 in split[folder_at], split
        assert len(split[folder_at]) == partitions // 2, split
        # The folder evaluates only once its item state holds events; with 0.5 s
        # transactions and folds only at the merges, its first fold may come after its
        # share of this short stream is learned: evaluation is checked in the first case.
        if not commit_every_s:
            # The folder evaluated its own partitions' events before learning them, with
            # the single trainer's metrics; the other, which holds no item state, evaluates
            # only while it briefly holds the last partition (before the group splits the
            # topic).
            def evaluated(t: ScaleOutTrainer, model: str) -> float:
                return t.metrics.registry.get_sample_value(
                    "liverec_trainer_evaluated_events_total", {"model": model}) or 0.0

            for name in EXACT_PARAMS:
                assert 0 < evaluated(folder, name) < folder.events_learned, name
                assert evaluated(other, name) < evaluated(folder, name) / 10, name
                # no figure where nothing is evaluated now (0 would read as all misses)
                assert np.isnan(other.metrics.registry.get_sample_value(
                    "liverec_trainer_rolling_hit_ratio", {"model": name}))
            assert folder.evaluation is not None
            totals = folder.evaluation.summary()
            # ... over the events of the sampled share of users only (eval_users, 10%)
            seen = list(folder.evaluation.evaluator.history._items)
            assert seen and eval_users(seen, folder.settings.eval_users).all()
            assert len(seen) < len({e.user_id for e in events}) / 4
            # item-kNN finds this stream's planted co-occurrences; popularity ranks less well
            assert totals["itemknn"]["total"]["hr"] > totals["popularity"]["total"]["hr"] > 0
            hr = totals["itemknn"]["total"]["hr"]
            assert folder.metrics.registry.get_sample_value(
                "liverec_trainer_hit_ratio", {"model": "itemknn"}) == hr
            # The merged snapshot carries the figures to the server's dashboard, also when
            # the last merge came from a trainer that evaluates nothing (carried forward).
            assert merged.manifest["metrics"]["itemknn"]["total"]["n"] > 0
        info = merged.extra_meta["scale_out"]
        assert sum(info["item_coverage"].values()) == len(events)
        assert sum(p["events_total"] for p in info["partitions"].values()) == len(events)
        assert set(info["partitions"]) == {str(p) for p in range(partitions)}
    finally:
        delete_topics(kafka_bootstrap, [updates_topic(topic)])


def test_bpr_trainers_fold_every_update_and_merge_user_rows(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """BPR's steps read item factors, so every trainer folds every update (no merge
    writer shortcut); the merged snapshot holds every item's shared row and every
    partition's user rows."""
    topic = new_topic(partitions=4)
    events = synthetic_events(8_000, seed=12, n_users=400, n_items=250)
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    snaps = tmp_path / "snaps"
    trainers = [ScaleOutTrainer(_settings(snaps, f"g-{topic}", f"t{i}", idle_exit_s=10.0,
                                          models_override="popularity,bpr"), kafka)
                for i in range(2)]
    try:
        _learn_split(trainers, kafka_bootstrap, topic, events)
        published = sum(t.updates_published for t in trainers)
        for t in trainers:
            folded = t.metrics.registry.get_sample_value(
                "liverec_trainer_update_messages_total", {"direction": "in"})
            assert folded >= published, (folded, published)
        merged = SnapshotStore(snaps).load()
        assert merged.events_total == len(events)
        bpr = merged.models["bpr"]
        assert set(bpr.items.ids) == {e.item_id for e in events}
        assert set(bpr.users.ids) == {e.user_id for e in events}
        assert np.isfinite(bpr.item_vectors()).all()
    finally:
        delete_topics(kafka_bootstrap, [updates_topic(topic)])


def test_a_large_poll_is_published_as_messages_the_broker_takes(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """Regression: one message per partition per poll made a 15,000-event poll a ~2.6 MB
    update message (decayed masses compress poorly: still over 1 MB compressed); the
    broker refused it (MSG_SIZE_TOO_LARGE), the transaction failed and the trainer
    exited. Now a slice goes out in messages of ~256 KiB."""
    topic = new_topic(partitions=1)
    events = synthetic_events(30_000, seed=13, n_users=3000, n_items=6000)
    produce_events(kafka_bootstrap, topic, events)
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    defaults: dict[str, dict[str, Any]] = {name: {} for name in EXACT_PARAMS}  # decay on
    settings = _settings(tmp_path / "snaps", f"g-{topic}", "t0", idle_exit_s=3.0,
                         batch_size=15_000, commit_every_s=0.0,  # a transaction per poll
                         ).model_copy(update={"model_params": defaults})
    trainer = ScaleOutTrainer(settings, kafka)
    try:
        trainer.run()
        assert trainer.events_learned == len(events)
        reg = trainer.metrics.registry
        assert reg.get_sample_value("liverec_trainer_transactions_total",
                                    {"outcome": "aborted"}) == 0
        sent = reg.get_sample_value("liverec_trainer_update_bytes_total", {"direction": "out"})
        n_msgs = trainer.updates_published
        assert n_msgs > trainer.transactions  # polls were cut into several messages
        assert sent / n_msgs < 2 * PollLearner.UPDATE_TARGET_BYTES
        ref = reference(events, defaults)
        for name in defaults:  # what went out in pieces folded back whole
            assert_same_items(trainer.models[name], ref[name], rtol=1e-9)
    finally:
        delete_topics(kafka_bootstrap, [updates_topic(topic)])


def test_a_transaction_spans_the_polls_of_its_interval(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """``commit_every_s`` keeps a transaction open over consecutive full polls: on the
    same topic, fewer transactions than with one per poll, each event learned once
    either way, and the last transaction commits while the trainer runs (the poll that
    finds the topic's end is not full), not at its shutdown."""
    topic = new_topic(partitions=2)
    events = synthetic_events(6000, seed=17, n_users=400, n_items=300)
    produce_events(kafka_bootstrap, topic, events)
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    done: dict[float, ScaleOutTrainer] = {}
    try:
        for every in (0.0, 1.0):
            group = f"g-{topic}-{every}"
            trainer = ScaleOutTrainer(_settings(
                tmp_path / f"snaps-{every}", group, "t0", idle_exit_s=8.0, batch_size=250,
                commit_every_s=every).model_copy(update={"snapshot_every_s": 60.0}), kafka)
            th = threading.Thread(target=trainer.run)
            th.start()
            probe = ConfluentConsumer(kafka, ConsumerOptions(group_id=group))
            try:
                deadline = time.monotonic() + 60
                parts = [(topic, 0), (topic, 1)]
                # Committed in full while the trainer still runs: the last transaction
                # did not wait for a record or for the shutdown.
                while sum(o or 0 for o in probe.committed(parts).values()) < len(events):
                    assert th.is_alive(), "the trainer exited before committing"
                    assert time.monotonic() < deadline, "the offsets were never committed"
                    time.sleep(0.2)
            finally:
                probe.close()
            th.join(60)
            assert not th.is_alive()
            assert trainer.events_learned == len(events)
            merged = SnapshotStore(tmp_path / f"snaps-{every}").load()
            assert merged.events_total == len(events)
            done[every] = trainer
        polls = len(events) // 250
        assert done[0.0].transactions >= polls  # one per poll
        assert 1 <= done[1.0].transactions < polls // 2, done[1.0].transactions
        assert done[1.0].updates_published >= polls // 2  # still a message per slice
    finally:
        delete_topics(kafka_bootstrap, [updates_topic(topic)])


def test_update_reader_starts_every_partition_at_its_offset(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """Regression: seeks right after assign restarted the other partitions at 0, so a
    restored item state re-applied updates it already held."""
    topic = new_topic(partitions=3)
    raw = Producer({"bootstrap.servers": kafka_bootstrap})
    for p in range(3):
        for i in range(10):
            raw.produce(topic, f"{p}-{i}".encode(), partition=p)
    assert raw.flush(30) == 0
    c = ConfluentConsumer(KafkaSettings(bootstrap=kafka_bootstrap), ConsumerOptions())
    try:
        c.assign_at({(topic, 0): 4, (topic, 1): 7, (topic, 2): 0})
        got: dict[int, list[int]] = {0: [], 1: [], 2: []}
        for _ in range(100):
            batch = c.poll_batch(100, 0.5)
            for p, o in zip(batch.partitions, batch.offsets, strict=True):
                got[p].append(o)
            if sum(map(len, got.values())) >= 6 + 3 + 10:
                break
        assert got == {0: list(range(4, 10)), 1: list(range(7, 10)), 2: list(range(10))}
    finally:
        c.close()


def test_location_modes_refuse_each_other(tmp_path: Path) -> None:
    root = tmp_path / "snaps"
    a = lock_location(root, {}, shared=True, group="g", topic="t")
    b = lock_location(root, {}, shared=True, group="g", topic="t")  # same group: shares
    with pytest.raises(SnapshotLocationBusy, match="single-process trainer would"):
        lock_location(root, {"pid": 1})
    with pytest.raises(SnapshotLocationBusy, match="group 'g' on topic 't'"):
        lock_location(root, {}, shared=True, group="other", topic="t")
    a.close()
    b.close()
    single = lock_location(root, {"pid": 1})
    with pytest.raises(SnapshotLocationBusy, match="single-process trainer is writing"):
        lock_location(root, {}, shared=True, group="g", topic="t")
    single.close()


def test_kafka_python_is_refused(tmp_path: Path) -> None:
    s = TrainerSettings(models="popularity", scale_out=True, snapshots=tmp_path)
    with pytest.raises(ValueError, match="needs the confluent Kafka client"):
        ScaleOutTrainer(s, KafkaSettings(bootstrap="localhost:1", topic="t",
                                         client="kafka-python"))
    with pytest.raises(KafkaClientError, match="need the confluent client"):
        TransactionalProducer(KafkaSettings(bootstrap="localhost:1", client="kafka-python"),
                              "tx")


def test_models_without_deltas_are_refused(tmp_path: Path) -> None:
    s = TrainerSettings(models="popularity,embedding", scale_out=True, snapshots=tmp_path)
    with pytest.raises(ValueError, match=r"embedding \(lacks learn_local, apply_delta, "
                       r"apply_deltas, user_state, load_user_state\) cannot learn in "
                       r"scale-out mode"):
        ScaleOutTrainer(s, KafkaSettings(bootstrap="localhost:1", topic="t"))


def test_the_lag_of_owned_partitions_is_exported_and_goes_with_them(tmp_path: Path) -> None:
    s = TrainerSettings(models="popularity", scale_out=True, snapshots=tmp_path,
                        metrics_port=-1)
    t = ScaleOutTrainer(s, KafkaSettings(bootstrap="localhost:1", topic="t"))
    positions = {("t", 0): 40, ("t", 1): None}  # p1: nothing read yet

    class Positions:
        def end_offsets(self, parts: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
            return {p: 100 for p in parts}

        def position(self, part: tuple[str, int]) -> int | None:
            return positions[part]

    t.consumer = Positions()  # type: ignore[assignment]
    t.parts = {0: t._fresh_state(0), 1: t._fresh_state(1)}
    t._export_lag()

    def lag(p: int) -> float | None:
        return t.metrics.registry.get_sample_value(
            "liverec_trainer_consumer_lag_messages", {"topic": "t", "partition": str(p)})

    assert lag(0) == 60 and lag(1) is None
    t._closing = True  # no transaction to settle here
    t._on_revoke({("t", 0)})
    assert lag(0) is None
