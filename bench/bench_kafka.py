"""Kafka client throughput: `liverec replay --max-speed` against raw librdkafka, one run.

Usage (a local broker is started when LIVEREC_KAFKA_BOOTSTRAP is unset)::

    python bench/bench_kafka.py --events 100000 --users 20000 --items 20000

Steps, all on the same broker and the same generated file:

1. ``liverec generate --events N --users U --items I`` (skipped when ``--file`` is given);
2. ``liverec replay FILE --max-speed`` as a user runs it (a subprocess; librdkafka), once
   to warm the broker's JVM (a freshly started broker is slow until its code is
   compiled; that first rate is reported too); replay's rate is the one it prints (rows
   read, validated, encoded, sent and acknowledged, per second of its own clock);
3. ``--rounds`` rounds, each into fresh topics, of that replay and of the same records,
   already encoded, sent by a bare ``confluent_kafka.Producer`` loop (the ceiling for a
   Python producer here); then one replay with ``LIVEREC_KAFKA_CLIENT=kafka-python``;
4. the replayed topic read back: a bare ``confluent_kafka.Consumer.consume`` loop (raw
   librdkafka consume rate; after one warm-up read, so that every reader finds the
   broker's cache warm), ``stream.kafka`` with each backend (records as
   :class:`~stream.kafka.Record`), and librdkafka's columnar ``poll_batch``.

Prints a markdown table for BENCHMARKS.md. Rates are events per second.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "liverec.cli", *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"liverec {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout, wall


def replay_cli(path: Path, bootstrap: str, topic: str, client: str) -> tuple[float, int, float]:
    out, wall = _cli("replay", str(path), "--topic", topic, "--max-speed", "--no-progress",
                     env={"LIVEREC_KAFKA_BOOTSTRAP": bootstrap, "LIVEREC_KAFKA_CLIENT": client})
    m = re.search(r"sent (\d+) .* \(([\d,]+) events/s\)", out)
    if not m:
        raise SystemExit(f"unexpected replay output: {out}")
    return float(m.group(2).replace(",", "")), int(m.group(1)), wall


def raw_produce(path: Path, bootstrap: str, topic: str) -> tuple[float, int]:
    import confluent_kafka as ck

    from online_models.datasets import read_interactions
    from stream.replay import encode_rows

    rows = [(key, value) for _, _, key, value in encode_rows(read_interactions(path))
            if isinstance(value, bytes)]
    producer = ck.Producer({"bootstrap.servers": bootstrap, "acks": "all",
                            "enable.idempotence": True, "linger.ms": 20})
    t0 = time.perf_counter()
    for n, (key, value) in enumerate(rows):
        producer.produce(topic, value, key)
        if n & 4095 == 0:
            producer.poll(0)
    left = producer.flush(120)
    return len(rows) / (time.perf_counter() - t0), len(rows) - left


def raw_consume(bootstrap: str, topic: str, n: int) -> float:
    import confluent_kafka as ck

    consumer = ck.Consumer({"bootstrap.servers": bootstrap,
                            "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
                            "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got, first, t0, t1 = 0, 0, 0.0, 0.0
    deadline = time.monotonic() + 120
    try:
        while got < n and time.monotonic() < deadline:
            msgs = consumer.consume(10_000, 1.0)
            if msgs and not got:
                # Time from the first batch on: leaves out the group join.
                t0, first = time.perf_counter(), len(msgs)
            got += len(msgs)  # (errors are not expected here; counting them costs)
            t1 = time.perf_counter() if msgs else t1
        return _rate(got, first, t0, t1, n)
    finally:
        consumer.close()


def _rate(got: int, first: int, t0: float, t1: float, n: int) -> float:
    if got < n:
        raise SystemExit(f"read only {got} of {n} records")
    return (got - first) / (t1 - t0) if t1 > t0 else float("inf")


def layer_consume(bootstrap: str, topic: str, n: int, client: str,
                  columns: bool = False) -> float:
    from stream.kafka import make_consumer
    from stream.settings import KafkaSettings

    settings = KafkaSettings(bootstrap=bootstrap, client=client)
    consumer = make_consumer(settings, group_id=f"bench-{uuid.uuid4().hex[:8]}",
                             max_poll_records=10_000)
    consumer.subscribe([topic])
    got, first, t0, t1 = 0, 0, 0.0, 0.0
    deadline = time.monotonic() + 300
    try:
        while got < n and time.monotonic() < deadline:
            records = (consumer.poll_batch(10_000, 1.0) if columns
                       else consumer.poll(10_000, 1.0))
            if records and not got:
                t0, first = time.perf_counter(), len(records)
            got += len(records)
            t1 = time.perf_counter() if records else t1
        return _rate(got, first, t0, t1, n)
    finally:
        consumer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--file", type=Path, help="replay this file instead of generating one")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3,
                    help="replay / bare-producer pairs measured after the warm-up replay")
    ap.add_argument("--skip-kafka-python", action="store_true",
                    help="leave out the kafka-python rows (they take longest)")
    args = ap.parse_args()

    from stream.broker import resolve_bootstrap
    from stream.kafka import create_topics, delete_topics

    with tempfile.TemporaryDirectory() as tmp, resolve_bootstrap() as kafka:
        path = args.file
        if path is None:
            path = Path(tmp) / "events.csv"
            _cli("generate", "--out", str(path), "--events", str(args.events),
                 "--users", str(args.users), "--items", str(args.items))
        b = kafka.bootstrap
        run = uuid.uuid4().hex[:8]
        rounds = range(args.rounds)
        topics = {f"bench-warm-{run}": args.partitions, f"bench-replay-kp-{run}":
                  args.partitions, **{f"bench-replay-{run}-{r}": args.partitions for r in rounds},
                  **{f"bench-raw-{run}-{r}": args.partitions for r in rounds}}
        create_topics(b, {**topics, **{f"{t}.dlq": 1 for t in topics}})
        t_replay = f"bench-replay-{run}-0"
        rows: list[tuple[str, str, str]] = []
        try:
            # A freshly started broker's JVM is slow until its code is compiled: the first
            # replay measures that, and warms it for the rounds below.
            cold, _, _ = replay_cli(path, b, f"bench-warm-{run}", "confluent")
            rates, raws, walls, sent = [], [], [], 0
            for r in rounds:  # alternate, so that drifting load hits both alike
                rate, sent, wall = replay_cli(path, b, f"bench-replay-{run}-{r}", "confluent")
                raw_rate, raw_n = raw_produce(path, b, f"bench-raw-{run}-{r}")
                assert raw_n > 0
                rates.append(rate)
                raws.append(raw_rate)
                walls.append(wall)
            rate = statistics.median(rates)
            rows.append(("`liverec replay --max-speed` (librdkafka, default), warm broker",
                         f"{rate:,.0f}",
                         f"median of {len(rates)}: {', '.join(f'{x:,.0f}' for x in rates)}; "
                         f"{sent:,} events; process wall {min(walls):.1f}-{max(walls):.1f} s"))
            rows.append(("the same, first replay after the broker started (cold JVM)",
                         f"{cold:,.0f}", "what a freshly started broker gives"))
            raw_med = statistics.median(raws)
            ratios = [x / y for x, y in zip(rates, raws, strict=True)]
            rows.append(("bare `confluent_kafka.Producer` loop, pre-encoded records",
                         f"{raw_med:,.0f}",
                         f"median of {', '.join(f'{x:,.0f}' for x in raws)}; replay = "
                         f"{min(ratios):.2f}-{max(ratios):.2f}x of it, round by round"))
            if not args.skip_kafka_python:
                kp_rate, kp_sent, kp_wall = replay_cli(path, b, f"bench-replay-kp-{run}",
                                                       "kafka-python")
                rows.append(("`liverec replay --max-speed` (`LIVEREC_KAFKA_CLIENT=kafka-python`)",
                             f"{kp_rate:,.0f}", f"{kp_sent:,} events; wall {kp_wall:.1f} s"))
            raw_consume(b, t_replay, sent)  # warm-up: every reader then finds a warm cache
            rc = raw_consume(b, t_replay, sent)
            rows.append(("raw librdkafka consume of the replayed topic (`consume(10000)`)",
                         f"{rc:,.0f}", "from the first record"))
            lc = layer_consume(b, t_replay, sent, "confluent")
            rows.append(("`stream.kafka` consumer, librdkafka (`poll` -> `Record`s)",
                         f"{lc:,.0f}", f"{lc / rc:.2f}x of raw"))
            lb = layer_consume(b, t_replay, sent, "confluent", columns=True)
            rows.append(("`stream.kafka` consumer, librdkafka (`poll_batch` -> columns)",
                         f"{lb:,.0f}", f"{lb / rc:.2f}x of raw"))
            if not args.skip_kafka_python:
                kc = layer_consume(b, t_replay, sent, "kafka-python")
                rows.append(("`stream.kafka` consumer, kafka-python", f"{kc:,.0f}",
                             f"{kc / rc:.3f}x of raw"))
        finally:
            delete_topics(b, [*topics, *(f"{t}.dlq" for t in topics)])
        print(f"\nfile {path} ({args.events:,} events requested), broker {kafka.source} at {b}, "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
        print("| path | events/s | notes |\n|---|---:|---|")
        for name, value, note in rows:
            print(f"| {name} | {value} | {note} |")


if __name__ == "__main__":
    main()
