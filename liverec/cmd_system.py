"""`liverec demo`: the stream end to end (registered by :mod:`liverec.cli`).

First version: a real Kafka (``LIVEREC_KAFKA_BOOTSTRAP`` or a local KRaft broker),
a synthetic click stream replayed into it, and a mini-batch consumer reading it
back while printing progress. The broker it started is stopped in ``finally``.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Annotated

import typer


def demo(
    events: Annotated[int, typer.Option(help="synthetic events to stream", min=1)] = 20_000,
    duration: Annotated[float, typer.Option(
        help="seconds the replay is spread over (0: as fast as possible)", min=0)] = 20.0,
    users: Annotated[int, typer.Option(help="synthetic users", min=1)] = 500,
    items: Annotated[int, typer.Option(help="synthetic items", min=1)] = 1_000,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
) -> None:
    """Stream synthetic clicks through a real Kafka and consume them in mini-batches."""
    from online_models.datasets import Dataset
    from online_models.synthetic import iter_events
    from stream.broker import KafkaSetupError, resolve_bootstrap
    from stream.consumer import ConsumedBatch, MiniBatchConsumer
    from stream.kafka import create_topics, delete_topics
    from stream.replay import ReplayResult, replay_dataset
    from stream.settings import StreamSettings

    settings = StreamSettings()
    typer.echo("starting Kafka (LIVEREC_KAFKA_BOOTSTRAP, Docker, or a local KRaft broker)...")
    try:
        kafka = resolve_bootstrap(env_bootstrap=settings.kafka_bootstrap)
    except KafkaSetupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    topic = f"demo-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    try:
        typer.echo(f"Kafka ({kafka.source}) at {kafka.bootstrap}; topic {topic}")
        create_topics(kafka.bootstrap, {topic: settings.partitions, f"{topic}.dlq": 1})
        dataset = Dataset.from_records(
            iter_events(events, users, items, seed=seed, drift_at=events // 2), name="synthetic"
        )
        rate = len(dataset) / duration if duration > 0 else None
        replayed: list[ReplayResult] = []
        producer = threading.Thread(
            target=lambda: replayed.append(
                replay_dataset(dataset, kafka.bootstrap, topic, rate=rate, progress=False)
            ),
            name="replay",
            daemon=True,
        )
        producer.start()

        got = {"events": 0, "batches": 0}
        users_seen: set[str] = set()
        start = time.monotonic()
        last_print = [0.0]

        def handle(batch: ConsumedBatch) -> None:
            got["events"] += len(batch.events)
            got["batches"] += 1
            users_seen.update(e.user_id for e in batch.events)
            now = time.monotonic() - start
            if now - last_print[0] >= 2.0 or got["events"] >= len(dataset):
                last_print[0] = now
                typer.echo(f"[{now:6.1f}s] consumed {got['events']:>7} events in "
                           f"{got['batches']} batches, {len(users_seen)} users, "
                           f"rejects {sum(consumer.rejected_by_reason.values())}")
            if got["events"] >= len(dataset):
                stop.set()

        consumer = MiniBatchConsumer(
            kafka.bootstrap, topic, f"{topic}-demo", batch_size=settings.batch_size,
            max_wait_ms=settings.max_wait_ms,
        )
        watchdog = threading.Timer(duration + 120.0, stop.set)
        watchdog.daemon = True
        watchdog.start()
        consumer.run(handle, stop=stop)
        watchdog.cancel()
        producer.join(timeout=30)
        if replayed:
            typer.echo(f"replay: {replayed[0].summary()}")
        typer.echo(f"consumed {got['events']} of {len(dataset)} events "
                   f"in {time.monotonic() - start:.1f}s")
        with_errors = got["events"] < len(dataset)
        delete_topics(kafka.bootstrap, [topic, f"{topic}.dlq"])
    finally:
        stop.set()
        kafka.close()
    if with_errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("demo")(demo)
