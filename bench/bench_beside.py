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
* **following** (``--follow``): as *beside*, and the default trainer follows the
  child's ``seqnn`` (``liverec train --follow seqnn=DIR``): it evaluates it and its
  hybrid blends it (the default components plus ``seqnn``), every ``--follow-every-s``.
  Printed beside the rate: the followed versions taken in and the hybrid's weight on
  ``seqnn`` at the end.

It prints both rates, their ratio, and what the ``seqnn`` trainer learned during the
default trainer's run (from its ``/metrics``: events learned, its rate, and its lag at
the end: the events of the topic it had not learned yet).

Run (a local broker is started unless ``LIVEREC_KAFKA_BOOTSTRAP`` is set)::

    .venv/bin/python bench/bench_beside.py --events 100000 --users 20000 --items 20000 \\
        --repeats 3 --nice 0 10 [--follow]
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import add_stream_options, click_events, prefilled_topic, train_rate

from liverec.demo import ChildProcess, pick_port, scrape
from liverec.runtime import configure_malloc
from online_models.hybrid import DEFAULT_COMPONENTS
from stream.settings import KafkaSettings
from trainer import TrainerSettings

LIVEREC = str(Path(sys.executable).parent / "liverec")


def learned(url: str) -> float:
    """``liverec_trainer_events_learned_total`` of a trainer's ``/metrics`` (0 when
    it does not answer yet)."""
    got = scrape(url)
    return got.sum("liverec_trainer_events_learned_total") if got is not None else 0.0


def start_seqnn(kafka: KafkaSettings, root: Path, nice: int, tag: str
                ) -> tuple[ChildProcess, str]:
    """A ``seqnn`` trainer on the topic, its own group, snapshots in ``root/seqnn-{tag}``;
    returns it and its metrics URL once it has learned its first events."""
    port = pick_port(19_000 + int(uuid.uuid4().int % 1000))
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
    add_stream_options(ap)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of alone / beside")
    ap.add_argument("--nice", type=int, nargs="+", default=[0],
                    help="niceness of the seqnn trainer, one 'beside' run per value")
    ap.add_argument("--follow", action="store_true",
                    help="also a 'following' run per niceness: the default trainer follows "
                         "the seqnn trainer's snapshots and blends seqnn in its hybrid")
    ap.add_argument("--follow-every-s", type=float, default=5.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    configure_malloc("train")
    mix = TrainerSettings().models

    events = click_events(args.events, args.users, args.items)
    with tempfile.TemporaryDirectory() as tmp, prefilled_topic(events, Path(tmp)) as kafka:
        root = Path(tmp)
        print(f"{args.events} events, {args.users} users, {args.items} items, "
              f"batch {args.batch_size}; default models: {mix}")
        print("| round | run | default trainer events/s | vs alone | seqnn trainer: "
              "events learned meanwhile | its events/s | its lag at the end |")
        print("|---|---|---:|---:|---:|---:|---:|")
        ratios: dict[tuple[int, bool], list[float]] = {
            (n, f): [] for n in args.nice for f in ([False, True] if args.follow else [False])}
        for r in range(1, args.repeats + 1):
            alone, _ = train_rate(kafka, args.events, mix, args.batch_size, 1.0, root)
            print(f"| {r} | alone | {alone:,.0f} | | | | |", flush=True)
            for nice in args.nice:
                for follow in ([False, True] if args.follow else [False]):
                    ratio = _beside(kafka, root, args, r, alone, nice, follow)
                    ratios[(nice, follow)].append(ratio)
        for (nice, follow), rs in ratios.items():
            what = "following" if follow else "beside"
            print(f"median {what} / alone, seqnn at nice {nice}: {statistics.median(rs):.2f}")


def _beside(kafka: KafkaSettings, root: Path, args: argparse.Namespace, r: int,
            alone: float, nice: int, follow: bool) -> float:
    """One run of the default trainer with a seqnn trainer beside it; its rate / alone."""
    tag = uuid.uuid4().hex[:8]
    more: dict[str, Any] = {}
    if follow:
        more = {"follow": {"seqnn": root / f"seqnn-{tag}"},
                "follow_every_s": args.follow_every_s,
                "model_params": {"hybrid": {"components": [*DEFAULT_COMPONENTS, "seqnn"]}}}
    child, url = start_seqnn(kafka, root, nice, tag)
    try:
        before, t0 = learned(url), time.monotonic()
        rate, trainer = train_rate(kafka, args.events, TrainerSettings().models,
                                   args.batch_size, 1.0, root, **more)
        after, t1 = learned(url), time.monotonic()
    finally:
        child.stop()
    extra = ""
    if follow:
        versions = trainer.metrics.registry.get_sample_value(
            "liverec_trainer_followed_snapshot_version", {"model": "seqnn"})
        weight = getattr(trainer.models["hybrid"], "weights", {}).get("seqnn", float("nan"))
        extra = f" (last version taken {versions:.0f}; hybrid weight on seqnn {weight:.2f})"
    what = "following" if follow else "beside"
    print(f"| {r} | {what} seqnn (nice {nice}){extra} | {rate:,.0f} | {rate / alone:.2f} | "
          f"{after - before:,.0f} | {(after - before) / (t1 - t0):,.0f} | "
          f"{args.events - after:,.0f} |", flush=True)
    return rate / alone


if __name__ == "__main__":
    main()
