"""Trainer throughput next to its two ceilings, measured in one run on one topic.

For each model mix, on one pre-filled topic:

* **raw**: an independent librdkafka consumer (``confluent_kafka.Consumer``, no
  liverec code) reads the whole topic -- the most any consumer can do here;
* **learn**: the same events learned in memory by fresh models of the mix (batches of
  ``--batch-size``, no Kafka, no evaluation, no snapshots) -- the models' own speed;
* **train**: the whole ``liverec train`` service (``trainer.Trainer``: poll, decode,
  de-duplicate, flood guard, sampled evaluation, learning, background snapshots every
  ``--snapshot-every-s``, commits) with default settings otherwise.

It prints ``train / learn`` (what Kafka, decoding, evaluation and snapshots cost),
the same ratio over the learning phase alone (the run's fixed costs -- the group join
before the first batch and the shutdown's final snapshot and commit -- left out, with
both shown: what a trainer running for hours sustains),
``train / raw``, and what evaluation costs: its wall time (GIL waits included) per
second of the run, and its CPU time (``liverec_trainer_evaluate_cpu_seconds_total``)
as a share of the process's CPU time during the run (every thread of the trainer,
librdkafka's included; the broker is another process).

Run (a local broker is started unless ``LIVEREC_KAFKA_BOOTSTRAP`` is set)::

    .venv/bin/python bench/bench_train.py --events 100000 --users 20000 --items 20000 \\
        --mixes popularity all

``--repeats R`` measures every mix R times in rounds (raw, learn and train again each
time, on the same topic) and ends with each mix's median ratios: one run's ratio swings
with the machine (the raw read alone moved 122k-379k messages/s within one such run
here), the median of several less. Each round's raw rate is itself the median of
``--raw-reads`` reads (3 by default; the table also shows their range): single reads
of this topic ranged 130k-411k messages/s within one run, so one read made a round's
``train / raw`` follow the reference more than the trainer.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from liverec.runtime import configure_malloc
from online_models import registry
from online_models.base import Batch, OnlineModel, learning_order
from online_models.synthetic import generate_events
from stream.broker import resolve_bootstrap
from stream.events import EVENT_WEIGHTS, ClickEvent, validate_dict
from stream.kafka import create_topics, delete_topics
from stream.replay import produce_events
from stream.settings import KafkaSettings
from trainer import Trainer, TrainerSettings


def add_stream_options(ap: argparse.ArgumentParser, batch_size: int = 256,
                       batch_help: str = "events per mini-batch") -> None:
    """The synthetic stream's shape and the batch size (defaults: the issue-9 stream)."""
    ap.add_argument("--events", type=int, default=100_000,
                    help="events in the synthetic stream (default 100,000)")
    ap.add_argument("--users", type=int, default=20_000,
                    help="distinct users it draws from (default 20,000)")
    ap.add_argument("--items", type=int, default=20_000,
                    help="distinct items it draws from (default 20,000)")
    ap.add_argument("--batch-size", type=int, default=batch_size,
                    help=f"{batch_help} (default {batch_size:,})")


def raw_rate(bootstrap: str, topic: str, n: int) -> float:
    """Messages/s of a bare librdkafka consumer reading ``n`` messages (group join included)."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = 0
    t0 = time.perf_counter()
    try:
        while got < n:
            got += sum(1 for m in c.consume(10_000, 1.0) if m.error() is None)
    finally:
        c.close()
    return n / (time.perf_counter() - t0)


def event_batches(events: list[ClickEvent], batch_size: int) -> list[Batch]:
    """The events as the trainer's mini-batches (event-type weights, event times)."""
    return [
        Batch.from_columns([e.user_id for e in chunk], [e.item_id for e in chunk],
                           np.asarray([EVENT_WEIGHTS[e.event_type] for e in chunk]),
                           np.asarray([e.ts for e in chunk]))
        for chunk in (events[i:i + batch_size] for i in range(0, len(events), batch_size))
    ]


def fresh_mix(mix: str, params: Mapping[str, Mapping[str, Any]] | None = None
              ) -> dict[str, OnlineModel]:
    """Fresh models of ``mix`` (``params``: constructor arguments by name), bound."""
    models = {n: registry.create(n, **(params or {}).get(n, {}))
              for n in registry.parse_models(mix)}
    registry.bind(models)
    return models


def learn_timed(models: Mapping[str, OnlineModel], batches: list[Batch]
                ) -> tuple[float, dict[str, float]]:
    """Wall seconds of ``models`` learning ``batches`` in memory, in learning order,
    and each model's own seconds of it."""
    order = learning_order(models)
    seconds = dict.fromkeys(order, 0.0)
    t0 = time.perf_counter()
    for b in batches:
        for name in order:
            t = time.perf_counter()
            models[name].learn(b)
            seconds[name] += time.perf_counter() - t
    return time.perf_counter() - t0, seconds


def learn_rate(events: list[ClickEvent], mix: str, batch_size: int) -> float:
    """Events/s of the mix's models learning the events in memory (fresh models)."""
    models = fresh_mix(mix)
    order = learning_order(models)
    batches = event_batches(events, batch_size)
    t0 = time.perf_counter()
    for b in batches:
        for name in order:
            models[name].learn(b)
    return len(events) / (time.perf_counter() - t0)


def train_rate(kafka: KafkaSettings, n: int, mix: str, batch_size: int,
               snapshot_every_s: float, root: Path, snapshot_write_share: float | None = None,
               **more: Any) -> tuple[float, Trainer]:
    """The ``liverec train`` service's rate over the topic's ``n`` events (``more``:
    other :class:`TrainerSettings` fields)."""
    settings = TrainerSettings(
        group=f"bench-{uuid.uuid4().hex[:8]}", snapshots=root / uuid.uuid4().hex[:8],
        models=mix, batch_size=batch_size, snapshot_every_s=snapshot_every_s,
        until_events_total=n, metrics_port=-1, status_every_s=30, **more,
    )
    if snapshot_write_share is not None:
        settings = settings.model_copy(update={"snapshot_write_share": snapshot_write_share})
    trainer = Trainer(settings, kafka)
    cpu0 = time.process_time()
    result = trainer.run()
    assert result.events_total == n, result
    trainer.process_cpu_s = time.process_time() - cpu0  # type: ignore[attr-defined]
    trainer.result = result  # type: ignore[attr-defined]
    return n / result.seconds, trainer


def click_events(n: int, users: int, items: int, seed: int = 0) -> list[ClickEvent]:
    """The benchmark's synthetic stream (``liverec generate``, ``seed``) as events."""
    events = []
    for row in generate_events(n, users, items, seed=seed):
        ev = validate_dict(row)
        assert isinstance(ev, ClickEvent)
        events.append(ev)
    return events


@contextmanager
def prefilled_topic(events: list[ClickEvent], root: Path, partitions: int = 1,
                    client: Literal["confluent", "kafka-python"] = "confluent",
                    ) -> Iterator[KafkaSettings]:
    """A fresh topic holding ``events``, on the configured broker (or one started under
    ``root``); the topic is deleted and a started broker stopped afterwards."""
    broker = resolve_bootstrap(root / "kafka")
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(bootstrap=broker.bootstrap, topic=topic, client=client)
    try:
        create_topics(kafka, {topic: partitions})
        produce_events(kafka, topic, events)
        yield kafka
    finally:
        try:
            delete_topics(kafka, [topic])
        finally:
            broker.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_options(ap)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--snapshot-every-s", type=float, default=1.0)
    ap.add_argument("--snapshot-write-share", type=float, default=None,
                    help="the trainer's snapshot_write_share (default: its default)")
    ap.add_argument("--client", default="confluent", choices=["confluent", "kafka-python"])
    ap.add_argument("--mixes", nargs="+", default=["popularity", "all"])
    ap.add_argument("--source", nargs="+", default=["auto"],
                    choices=["auto", "thread", "process"],
                    help="the trainer's source(s) (default: the trainer's default, auto: "
                         "process with confluent); several: each mix with each, in turns")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of every mix; the medians of the ratios end the table")
    ap.add_argument("--raw-reads", type=int, default=3,
                    help="raw reads per round; the round's raw rate is their median")
    ap.add_argument("--order", default="learn-first",
                    choices=["learn-first", "train-first", "alternate"],
                    help="in each round, the in-memory learn before the trainer (default), "
                         "after it, or each in turn (before in a mix's 1st, 3rd, ... round)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    configure_malloc("train")  # the allocator setting `liverec train` runs with

    events = click_events(args.events, args.users, args.items)
    with tempfile.TemporaryDirectory() as tmp, \
            prefilled_topic(events, Path(tmp), args.partitions, args.client) as kafka:
        print(f"{args.events} events, {args.users} users, {args.items} items, "
              f"{args.partitions} partition(s), batch {args.batch_size}, "
              f"client {args.client}")
        raw_rate(kafka.bootstrap, kafka.topic, args.events)  # warm-up: page cache, coordinator
        print("| model mix | train events/s | in-memory learn events/s | raw librdkafka "
              f"msg/s (median of {args.raw_reads}; range) | train/learn | train/raw | "
              "evaluation share of wall time | evaluation share of process CPU | "
              "events scored per model | join / shutdown (s) | learning-phase "
              "train/learn |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        labels = [m if len(args.source) == 1 else f"{m} ({src})"
                  for m in args.mixes for src in args.source]
        ratios: dict[str, list[tuple[float, float, float]]] = {m: [] for m in labels}
        runs = [(m, src) for r in range(args.repeats) for m in args.mixes
                for src in (args.source if r % 2 == 0 else args.source[::-1])]
        for mix, src in runs:
            label = mix if len(args.source) == 1 else f"{mix} ({src})"
            raws = [raw_rate(kafka.bootstrap, kafka.topic, args.events)
                    for _ in range(max(1, args.raw_reads))]
            raw = statistics.median(raws)
            train_first = args.order == "train-first" or (
                args.order == "alternate" and len(ratios[label]) % 2 == 1)
            if not train_first:
                learn = learn_rate(events, mix, args.batch_size)
            rate, trainer = train_rate(kafka, args.events, mix, args.batch_size,
                                       args.snapshot_every_s, Path(tmp),
                                       args.snapshot_write_share, source=src)
            if train_first:
                learn = learn_rate(events, mix, args.batch_size)
            m = trainer.metrics.registry
            eval_s = m.get_sample_value("liverec_trainer_evaluate_duration_seconds_sum") or 0
            share = eval_s * rate / args.events
            eval_cpu = m.get_sample_value("liverec_trainer_evaluate_cpu_seconds_total") or 0
            cpu_share = eval_cpu / max(trainer.process_cpu_s, 1e-9)  # type: ignore[attr-defined]
            scored = trainer.evaluator.n_evaluated
            res = trainer.result  # type: ignore[attr-defined]
            # The run without its fixed costs (the group join before the first batch,
            # the final snapshot and commit after the last): what a trainer that runs
            # for hours learns per second. Reported beside, not instead of, train/learn.
            phase = args.events / max(res.learning_s, 1e-9) / learn
            shown = f"{label}, trainer first" if train_first else label
            print(f"| {shown} | {rate:,.0f} | {learn:,.0f} | {raw:,.0f} "
                  f"({min(raws) / 1e3:,.0f}k-{max(raws) / 1e3:,.0f}k) | {rate / learn:.2f} "
                  f"| {rate / raw:.3f} | {share:.1%} | {cpu_share:.1%} | {scored:,} "
                  f"| {res.first_batch_s or 0:.2f} / {res.shutdown_s:.2f} | {phase:.2f} |",
                  flush=True)
            ratios[label].append((rate / learn, rate / raw, phase))
        if args.repeats > 1:
            for mix, rs in ratios.items():
                print(f"| **{mix}, median of {len(rs)}** | | | | "
                      f"**{statistics.median(r[0] for r in rs):.2f}** "
                      f"| **{statistics.median(r[1] for r in rs):.3f}** | | | | | "
                      f"**{statistics.median(r[2] for r in rs):.2f}** |")


if __name__ == "__main__":
    main()
