"""Merged-model accuracy: N scale-out trainers vs one, on MovieLens replayed through Kafka.

The first ``--train-fraction`` of the ratings (time order) is replayed into a
P-partition topic; a group of ``k`` ``liverec train --scale-out`` processes learns it
(then one more member merges). Each merged model is then frozen and scored on the
held-out tail (next-item HR@10 / NDCG@10, the user's history growing through the
tail), next to the same models learned in memory by one process from the same
records (read back from the topic). It also reports the largest relative difference
of the item state (popularity mass, co-occurrence and transition counts) between the
k-trainer merge and the in-memory model.

Run (a local broker is started unless ``LIVEREC_KAFKA_BOOTSTRAP`` is set)::

    .venv/bin/python bench/bench_scale_out_accuracy.py \\
        ../shared/data/movielens-small/ratings.csv --limit 30000 --trainers 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.trainer.scale_helpers

from bench_scale_out import run

from online_models import registry
from online_models.base import Batch, OnlineModel, UserHistory
from online_models.datasets import read_interactions
from online_models.evaluation import PrequentialEvaluator
from online_models.snapshot import SnapshotStore
from stream.broker import resolve_bootstrap
from stream.columns import decode_columns
from stream.kafka import (
    ConsumerOptions,
    create_topics,
    delete_topics,
    end_offsets,
    make_consumer,
)
from stream.replay import replay_dataset
from stream.settings import KafkaSettings
from trainer.partitioned import ScaleOutTrainer, updates_topic
from trainer.settings import TrainerSettings

MODELS = "popularity,itemknn,sequence"
#: models whose item state merges exactly (compared with the in-memory model)
EXACT = {"popularity", "itemknn", "sequence"}


def read_back(bootstrap: str, topic: str, n: int) -> Batch:
    """The topic's valid events, partition by partition in offset order."""
    c = make_consumer(bootstrap, ConsumerOptions(client_id="bench-read"))
    parts = sorted(end_offsets(bootstrap, topic))
    cols = []
    try:
        for p in parts:
            c.assign([(topic, p)])
            c.seek((topic, p), 0)
            end = end_offsets(bootstrap, topic)[p]
            values: list[bytes | None] = []
            while len(values) < end:
                values.extend(c.poll_batch(10_000, 1.0).values)
            got, _ = decode_columns(values, now=None)
            cols.append(got)
    finally:
        c.close()
    return Batch.from_columns(
        [u for g in cols for u in g.users], [i for g in cols for i in g.items],
        np.concatenate([g.weights for g in cols]), np.concatenate([g.timestamps for g in cols]))


def score(models: dict[str, OnlineModel], history: UserHistory, tail: Batch) -> dict[str, str]:
    ev = PrequentialEvaluator(models, k=10, history=history)
    for chunk in tail.chunks(1000):
        ev.process(chunk, learn=False)
    return {n: f"HR@10 {ev.totals(n)['hr']:.4f} NDCG@10 {ev.totals(n)['ndcg']:.4f}"
            for n in models}


def max_rel_diff(a: OnlineModel, b: OnlineModel) -> float:
    from tests.trainer.scale_helpers import item_state

    ga, gb = item_state(a), item_state(b)
    worst = 0.0
    for part in gb:
        if set(ga[part]) != set(gb[part]):
            return float("inf")
        for key, want in gb[part].items():
            worst = max(worst, abs(ga[part][key] - want) / max(abs(want), 1e-300))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--preset", default="movielens")
    ap.add_argument("--limit", type=int, default=30_000)
    ap.add_argument("--train-fraction", type=float, default=0.9)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--trainers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", default=MODELS,
                    help="scale-out models (bpr merges as a parameter server: no exact "
                    "item-state comparison)")
    ap.add_argument("--batch-size", type=int, default=1000)
    args = ap.parse_args()
    models = args.models
    data = read_interactions(args.csv, preset=args.preset)[: args.limit]
    cut = int(len(data) * args.train_fraction)
    with tempfile.TemporaryDirectory() as tmp:
        broker = resolve_bootstrap(Path(tmp) / "kafka")
        bootstrap = broker.bootstrap
        topic = f"bench-acc-{uuid.uuid4().hex[:8]}"
        try:
            create_topics(bootstrap, {topic: args.partitions, f"{topic}.dlq": 1})
            replay_dataset(data[:cut], bootstrap, topic, progress=False)
            n = sum(end_offsets(bootstrap, topic).values())
            train = read_back(bootstrap, topic, n)
            tail = Batch.from_columns(data.users[cut:], data.items[cut:], None,
                                      data.timestamps[cut:])
            ref = {m: registry.create(m) for m in models.split(",")}
            for chunk in train.chunks(args.batch_size):
                for model in ref.values():
                    model.learn(chunk)
            hist = UserHistory(max_items=200)
            hist.extend(train.users, train.items)
            print(f"{len(train)} training events ({n} records), {len(tail)} held out")
            print("in-memory, one process:", score(ref, hist, tail), flush=True)
            for k in args.trainers:
                group = f"acc-{k}-{uuid.uuid4().hex[:6]}"
                run(bootstrap, topic, n, k, args.partitions, models, args.batch_size,
                    Path(tmp), group)
                ScaleOutTrainer(TrainerSettings(
                    group=group, snapshots=Path(tmp) / group, models=models, scale_out=True,
                    instance_id="merge", idle_exit_s=3.0, metrics_port=-1),
                    KafkaSettings(bootstrap=bootstrap, topic=topic)).run()
                snap = SnapshotStore(Path(tmp) / group).load()
                diffs = {m: f"{max_rel_diff(snap.models[m], ref[m]):.1e}" for m in ref
                         if m in EXACT}
                print(f"trainers={k}: events_total {snap.events_total}, item state max "
                      f"relative difference vs in-memory {diffs}")
                print(f"trainers={k}:", score(snap.models, snap.history, tail), flush=True)
                delete_topics(bootstrap, [updates_topic(topic)])
        finally:
            delete_topics(bootstrap, [topic, f"{topic}.dlq"])
            broker.close()


if __name__ == "__main__":
    main()
