"""``seqnn`` inside the default trainer, at its smallest compute budget: issue 9's bars.

Issue 14 allows two ways to deploy the neural model without slowing the stream: its
own trainer beside the default one (``bench/bench_beside.py``), or inside the trainer
"with a compute budget per batch that lowers the replay steps, never the batch's own
events". This script measures the second at its floor: the default models plus
``seqnn`` with ``step_budget_seconds`` 0 (one step on each batch's own events, no
replay step). On the issue-9 topic it reports, per round and in one run, the same three
rates as ``bench/bench_train.py`` (an independent librdkafka read of the topic, the mix
learning the events in memory, the whole ``liverec train`` service), so both of issue
9's bars can be read off: ``train / learn`` >= 0.8 and ``train / raw`` >= 0.02.

Run (a local broker is started unless ``LIVEREC_KAFKA_BOOTSTRAP`` is set)::

    .venv/bin/python bench/bench_seqnn_inprocess.py --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import (
    add_stream_options,
    click_events,
    event_batches,
    fresh_mix,
    learn_timed,
    prefilled_topic,
    raw_rate,
    train_rate,
)

from liverec.runtime import configure_malloc
from online_models import registry
from stream.events import ClickEvent


def learn(events: list[ClickEvent], mix: str, params: dict, batch_size: int
          ) -> tuple[float, dict[str, float], int]:
    """In-memory events/s of the mix, each model's learn seconds, seqnn's steps."""
    models = fresh_mix(mix, params)
    wall, seconds = learn_timed(models, event_batches(events, batch_size))
    return len(events) / wall, seconds, int(models["seqnn"].steps_total)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_stream_options(ap)
    ap.add_argument("--rounds", type=int, default=2, help="raw, learn, train in turns")
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="seqnn's step_budget_seconds (0: one step per batch, no replay)")
    args = ap.parse_args(argv)
    configure_malloc("train")  # the allocator setting `liverec train` runs with
    mix = ",".join((*registry.DEFAULT_MODELS, "seqnn"))
    params = {"seqnn": {"step_budget_seconds": args.budget_s}}
    events = click_events(args.events, args.users, args.items)
    print(f"{len(events):,} events, {args.users:,} users, {args.items:,} items, batch "
          f"{args.batch_size}; models {mix}; seqnn step_budget_seconds {args.budget_s}")
    print("| round | raw librdkafka msg/s | in-memory learn events/s | of it seqnn (s) "
          "| seqnn steps | train events/s | train / learn | train / raw |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as d, prefilled_topic(events, Path(d)) as kafka:
        raw_rate(kafka.bootstrap, kafka.topic, len(events))  # warm-up read
        for r in range(1, args.rounds + 1):
            raw = raw_rate(kafka.bootstrap, kafka.topic, len(events))
            rate, seconds, steps = learn(events, mix, params, args.batch_size)
            train, _ = train_rate(kafka, len(events), mix, args.batch_size, 1.0, Path(d),
                                  model_params=params)
            print(f"| {r} | {raw:,.0f} | {rate:,.0f} | {seconds['seqnn']:.1f} | {steps} "
                  f"| {train:,.0f} | {train / rate:.2f} | {train / raw:.4f} |", flush=True)


if __name__ == "__main__":
    main()
