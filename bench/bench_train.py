"""End-to-end training throughput (Kafka -> decode -> dedup -> evaluate -> learn ->
snapshot -> commit) next to the raw consume rate of the same Kafka client, same run.

Run: ``LIVEREC_KAFKA_BOOTSTRAP=host:port .venv/bin/python bench/bench_train.py \\
      --events 20000 --mixes popularity "popularity,itemknn" all``
(without ``LIVEREC_KAFKA_BOOTSTRAP`` a local broker is started for the run).

Each measurement uses a fresh consumer group on one pre-filled topic, and counts the
group join, so both rates carry the same start-up cost. The trainer snapshots every
second as in production (``--snapshot-every-s``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import uuid
from pathlib import Path

from online_models.synthetic import generate_events
from stream.broker import resolve_bootstrap
from stream.consumer import MiniBatchConsumer
from stream.events import ClickEvent, validate_dict
from stream.kafka import create_topics, delete_topics
from stream.replay import produce_events
from stream.trainer import Trainer, TrainerSettings


def raw_consume_rate(bootstrap: str, topic: str, n: int, batch_size: int) -> float:
    consumer = MiniBatchConsumer(bootstrap, topic, f"raw-{uuid.uuid4().hex[:8]}",
                                 batch_size=batch_size, dlq_topic=None)
    t0 = time.perf_counter()
    got = 0
    try:
        while got < n:
            got += len(consumer.next_batch().events)
    finally:
        consumer.close()
    return n / (time.perf_counter() - t0)


def train_rate(bootstrap: str, topic: str, n: int, mix: str, batch_size: int,
               snapshot_every_s: float, root: Path) -> tuple[float, int | None]:
    settings = TrainerSettings(
        bootstrap=bootstrap, topic=topic, group=f"bench-{uuid.uuid4().hex[:8]}",
        snapshots=root / uuid.uuid4().hex[:8], models=mix, batch_size=batch_size,
        snapshot_every_s=snapshot_every_s, until_events_total=n, metrics_port=-1,
        status_every_s=30,
    )
    result = Trainer(settings).run()
    assert result.events_total == n, result
    return n / result.seconds, result.snapshot_version


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--items", type=int, default=1_000)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--snapshot-every-s", type=float, default=1.0)
    ap.add_argument("--mixes", nargs="+", default=["popularity", "popularity,itemknn"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    events = []
    for row in generate_events(args.events, args.users, args.items, seed=0):
        ev = validate_dict(row)
        assert isinstance(ev, ClickEvent)
        events.append(ev)
    with tempfile.TemporaryDirectory() as tmp:
        kafka = resolve_bootstrap(Path(tmp) / "kafka")
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        try:
            create_topics(kafka.bootstrap, {topic: args.partitions})
            produce_events(kafka.bootstrap, topic, events)
            print(f"{args.events} events, {args.users} users, {args.items} items, "
                  f"{args.partitions} partition(s), batch {args.batch_size}")
            print("| model mix | train events/s | raw consume events/s | ratio |")
            print("|---|---|---|---|")
            for mix in args.mixes:
                raw = raw_consume_rate(kafka.bootstrap, topic, args.events, args.batch_size)
                rate, _ = train_rate(kafka.bootstrap, topic, args.events, mix, args.batch_size,
                                     args.snapshot_every_s, Path(tmp))
                print(f"| {mix} | {rate:,.0f} | {raw:,.0f} | {rate / raw:.2f} |", flush=True)
        finally:
            try:
                delete_topics(kafka.bootstrap, [topic])
            finally:
                kafka.close()


if __name__ == "__main__":
    main()
