"""The default trainer alone and with a ``seqnn`` trainer beside it (own group, own process).

Issue 14 keeps the neural sequence model off the trainer's critical path by running it
as its own trainer (``liverec train --models seqnn --group liverec-seqnn --snapshots
./snapshots-seqnn``, README, "The trainer"). This measures what
that costs the default trainer on a shared machine. On one pre-filled topic, in turns:

* **alone**: the default ``liverec train`` service (``trainer.Trainer``, default
  settings and models, in this process, a fresh group) learns the whole topic, as in
  ``bench_train.py``;
* **beside**: the same, while a ``liverec train --models seqnn`` child process (its own
  group and snapshot directory, optionally under ``nice``) consumes the same topic from
  its start. The child is started first and the run begins once it has learned its
  first events.

It prints both rates, their ratio, and what the ``seqnn`` trainer learned during the
default trainer's run (from its ``/metrics``: events learned, its rate, and its lag at
the end: the events of the topic it had not learned yet).

Run (a local broker is started unless ``LIVEREC_KAFKA_BOOTSTRAP`` is set)::

    .venv/bin/python bench/bench_beside.py --events 100000 --users 20000 --items 20000 \\
        --repeats 3 --nice 0 10
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import click_events, prefilled_topic, train_rate

from liverec.demo import ChildProcess, pick_port, scrape
from liverec.runtime import pin_malloc_mmap_threshold
from stream.settings import KafkaSettings
from trainer import TrainerSettings

LIVEREC = str(Path(sys.executable).parent / "liverec")


def learned(url: str) -> float:
    """``liverec_trainer_events_learned_total`` of a trainer's ``/metrics`` (0 when
    it does not answer yet)."""
    got = scrape(url)
    return got.sum("liverec_trainer_events_learned_total") if got is not None else 0.0


def start_seqnn(kafka: KafkaSettings, root: Path, nice: int) -> tuple[ChildProcess, str]:
    """A ``seqnn`` trainer on the topic, its own group; returns it and its metrics URL
    once it has learned its first events."""
    port = pick_port(19_000 + int(uuid.uuid4().int % 1000))
    tag = uuid.uuid4().hex[:8]
    argv = [LIVEREC, "train", "--bootstrap", kafka.bootstrap, "--topic", kafka.topic,
            "--group", f"beside-seqnn-{tag}", "--snapshots", str(root / f"seqnn-{tag}"),
            "--models", "seqnn", "--metrics-port", str(port), "--status-every-s", "5"]
    if nice:
        argv = ["nice", "-n", str(nice), *argv]
    child = ChildProcess("seqnn trainer", argv, root / f"seqnn-{tag}.log").start()
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 120
    while learned(url) <= 0:
        if not child.alive() or time.monotonic() > deadline:
            child.stop()
            raise RuntimeError(f"the seqnn trainer did not start learning:\n{child.log_tail()}")
        time.sleep(0.2)
    return child, url


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of alone / beside")
    ap.add_argument("--nice", type=int, nargs="+", default=[0],
                    help="niceness of the seqnn trainer, one 'beside' run per value")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    pin_malloc_mmap_threshold()
    mix = TrainerSettings().models

    events = click_events(args.events, args.users, args.items)
    with tempfile.TemporaryDirectory() as tmp, prefilled_topic(events, Path(tmp)) as kafka:
        root = Path(tmp)
        print(f"{args.events} events, {args.users} users, {args.items} items, "
              f"batch {args.batch_size}; default models: {mix}")
        print("| round | run | default trainer events/s | vs alone | seqnn trainer: "
              "events learned meanwhile | its events/s | its lag at the end |")
        print("|---|---|---:|---:|---:|---:|---:|")
        ratios: dict[int, list[float]] = {n: [] for n in args.nice}
        for r in range(1, args.repeats + 1):
            alone, _ = train_rate(kafka, args.events, mix, args.batch_size, 1.0, root)
            print(f"| {r} | alone | {alone:,.0f} | | | | |", flush=True)
            for nice in args.nice:
                child, url = start_seqnn(kafka, root, nice)
                try:
                    before, t0 = learned(url), time.monotonic()
                    beside, _ = train_rate(kafka, args.events, mix, args.batch_size,
                                           1.0, root)
                    after, t1 = learned(url), time.monotonic()
                finally:
                    child.stop()
                ratios[nice].append(beside / alone)
                print(f"| {r} | beside seqnn (nice {nice}) | {beside:,.0f} | "
                      f"{beside / alone:.2f} | {after - before:,.0f} | "
                      f"{(after - before) / (t1 - t0):,.0f} | "
                      f"{args.events - after:,.0f} |", flush=True)
        for nice, rs in ratios.items():
            print(f"median beside / alone, seqnn at nice {nice}: {statistics.median(rs):.2f}")


if __name__ == "__main__":
    main()
