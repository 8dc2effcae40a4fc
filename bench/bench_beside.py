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

Issue 9's bar is a ratio measured in one run: the trainer's rate against the in-memory
learn rate of the same model mix. So each *alone* and *beside* run also learns the
events in memory with fresh models of the default mix (``bench_train.learn_rate``), in
the *beside* run while the same ``seqnn`` child is still learning (the two measurements
of a round take turns in going first), and prints ``train / learn`` for both. That is
the bar asked for "with it deployed": Kafka, decoding, evaluation and snapshots cost at
most 20% of learning under the same load. The rate against *alone* says what the
shared cores cost besides.

Run (a local broker is started unless ``LIVEREC_KAFKA_BOOTSTRAP`` is set)::

    .venv/bin/python bench/bench_beside.py --events 100000 --users 20000 --items 20000 \\
        --repeats 3 --nice 0 10 [--follow] [--seqnn-args '' '--snapshot-every-s 10']
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import add_stream_options, click_events, learn_rate, prefilled_topic, train_rate

from liverec.demo import ChildProcess, scrape
from liverec.ports import pick_port
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


def start_seqnn(kafka: KafkaSettings, root: Path, nice: str, tag: str,
                extra_args: list[str] | None = None) -> tuple[ChildProcess, str]:
    """A ``seqnn`` trainer on the topic, its own group, snapshots in ``root/seqnn-{tag}``
    (``extra_args``: more ``liverec train`` options); returns it and its metrics URL once
    it has learned its first events."""
    port = pick_port(19_000 + int(uuid.uuid4().int % 1000))
    argv = [LIVEREC, "train", "--bootstrap", kafka.bootstrap, "--topic", kafka.topic,
            "--group", f"beside-seqnn-{tag}", "--snapshots", str(root / f"seqnn-{tag}"),
            "--models", "seqnn", "--metrics-port", str(port), "--status-every-s", "5",
            *(extra_args or [])]
    if nice == "idle":  # the SCHED_IDLE policy: runs only where a core has nothing else
        argv = ["chrt", "--idle", "0", *argv]
    elif int(nice):
        argv = ["nice", "-n", nice, *argv]
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
    ap.add_argument("--nice", nargs="+", default=["0"], type=_niceness,
                    help="niceness of the seqnn trainer, one 'beside' run per value; "
                         "'idle': the SCHED_IDLE scheduling policy (chrt --idle 0)")
    ap.add_argument("--follow", action="store_true",
                    help="also a 'following' run per niceness: the default trainer follows "
                         "the seqnn trainer's snapshots and blends seqnn in its hybrid")
    ap.add_argument("--follow-every-s", type=float, default=5.0)
    ap.add_argument("--seqnn-args", nargs="+", default=[""],
                    help="more options of the seqnn trainer, one string per 'beside' run "
                         "(e.g. '' '--snapshot-every-s 10')")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    configure_malloc("train")
    mix = TrainerSettings().models

    events = click_events(args.events, args.users, args.items)
    with tempfile.TemporaryDirectory() as tmp, prefilled_topic(events, Path(tmp)) as kafka:
        root = Path(tmp)
        print(f"{args.events} events, {args.users} users, {args.items} items, "
              f"batch {args.batch_size}; default models: {mix}")
        print("| round | run | default trainer events/s | vs alone | in-memory learn "
              "events/s | train / learn | seqnn trainer: events learned meanwhile | "
              "its events/s | its lag at the end |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        variants = [(n, a, f) for n in args.nice for a in args.seqnn_args
                    for f in ([False, True] if args.follow else [False])]
        ratios: dict[tuple[str, str, bool], list[float]] = {v: [] for v in variants}
        bars: dict[tuple[str, str] | None, list[float]] = {
            None: [], **{(n, a): [] for n, a, f in variants if not f}}
        for r in range(1, args.repeats + 1):
            first = r % 2 == 1  # the trainer goes first in odd rounds
            if first:
                alone, _ = train_rate(kafka, args.events, mix, args.batch_size, 1.0, root)
            mem = learn_rate(events, mix, args.batch_size)
            if not first:
                alone, _ = train_rate(kafka, args.events, mix, args.batch_size, 1.0, root)
            bars[None].append(alone / mem)
            print(f"| {r} | alone | {alone:,.0f} | | {mem:,.0f} | {alone / mem:.2f} "
                  "| | | |", flush=True)
            for nice, extra, follow in variants:
                ratio, bar = _beside(kafka, root, args, r, alone, nice, extra, follow,
                                     None if follow else events, first)
                ratios[(nice, extra, follow)].append(ratio)
                if bar is not None:
                    bars[(nice, extra)].append(bar)
        for (nice, extra, follow), rs in ratios.items():
            what = "following" if follow else "beside"
            print(f"median {what} / alone, {_seqnn(nice, extra)}: "
                  f"{statistics.median(rs):.2f}")
        for key, bs in bars.items():
            what = "alone" if key is None else f"beside {_seqnn(*key)}"
            print(f"train / learn {what}: median {statistics.median(bs):.2f} "
                  f"({', '.join(f'{b:.2f}' for b in bs)}; {sum(b >= 0.8 for b in bs)} of "
                  f"{len(bs)} >= 0.80)")


def _niceness(value: str) -> str:
    """``--nice``: an integer niceness, or ``idle``."""
    if value != "idle":
        try:
            int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r} is neither a niceness (an integer) nor 'idle'") from None
    return value


def _seqnn(nice: str, extra: str) -> str:
    how = "under SCHED_IDLE" if nice == "idle" else f"at nice {nice}"
    return f"seqnn {how}" + (f" with {extra}" if extra else "")


def _beside(kafka: KafkaSettings, root: Path, args: argparse.Namespace, r: int,
            alone: float, nice: str, extra_args: str, follow: bool, events: list[Any] | None,
            trainer_first: bool) -> tuple[float, float | None]:
    """One run of the default trainer with a seqnn trainer beside it: its rate / alone,
    and (given ``events``) its rate / the in-memory learn rate measured beside the same
    seqnn trainer, before or after the trainer's run (``trainer_first``)."""
    tag = uuid.uuid4().hex[:8]
    more: dict[str, Any] = {}
    if follow:
        more = {"follow": {"seqnn": root / f"seqnn-{tag}"},
                "follow_every_s": args.follow_every_s,
                "model_params": {"hybrid": {"components": [*DEFAULT_COMPONENTS, "seqnn"]}}}
    mix = TrainerSettings().models
    mem: float | None = None
    child, url = start_seqnn(kafka, root, nice, tag, shlex.split(extra_args))
    try:
        if events is not None and not trainer_first:
            mem = learn_rate(events, mix, args.batch_size)
        before, t0 = learned(url), time.monotonic()
        rate, trainer = train_rate(kafka, args.events, mix, args.batch_size, 1.0, root,
                                   **more)
        after, t1 = learned(url), time.monotonic()
        if events is not None and trainer_first:
            mem = learn_rate(events, mix, args.batch_size)
        end = learned(url)
    finally:
        child.stop()
    extra = ""
    if follow:
        versions = trainer.metrics.registry.get_sample_value(
            "liverec_trainer_followed_snapshot_version", {"model": "seqnn"})
        weight = getattr(trainer.models["hybrid"], "weights", {}).get("seqnn", float("nan"))
        extra = f" (last version taken {versions:.0f}; hybrid weight on seqnn {weight:.2f})"
    what = "following" if follow else "beside"
    mem_cols = "| |" if mem is None else f"| {mem:,.0f} | {rate / mem:.2f} |"
    # The seqnn trainer must still be learning when the last measurement ends.
    print(f"| {r} | {what} {_seqnn(nice, extra_args)}{extra} | {rate:,.0f} | {rate / alone:.2f} "
          f"{mem_cols} {after - before:,.0f} | {(after - before) / (t1 - t0):,.0f} | "
          f"{args.events - end:,.0f} |", flush=True)
    return rate / alone, None if mem is None else rate / mem


if __name__ == "__main__":
    main()
