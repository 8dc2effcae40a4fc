"""Where the default trainer's time goes, next to the same models learning in memory.

The issue-9 benchmark (``bench/bench_train.py``) gives one ratio, ``train / learn``.
This script splits the trainer's wall time into its phases, on the same pre-filled
topic, so that whoever works on that ratio sees what is left to win:

* each model's ``learn`` time inside the service (the trainer's
  ``liverec_trainer_learn_duration_seconds`` sums) against the same model's time
  learning the same batches in memory, timed in the same way;
* the learner thread's other steps, timed by wrapping the trainer's methods:
  evaluation (and its main steps), de-duplication, the flood guard, data drift,
  building the batch, state copies for snapshots (``_capture``), the final synchronous
  snapshot, waiting for the Kafka source, and the time before the first batch arrives;
  each with its wall time and the learner thread's CPU time in it (the difference is
  waiting, nearly all of it for the GIL while the source thread decodes);
* the source thread's CPU time (poll, decode, queue) and its decoding's part: under
  the GIL this work does not overlap the learner's Python work, it takes turns with it.

The wrappers add a few microseconds per call (about 4,000 calls per 100k events).

Run (a local broker is started unless ``LIVEREC_KAFKA_BOOTSTRAP`` is set)::

    .venv/bin/python bench/bench_train_phases.py --events 100000 --rounds 2
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

import trainer.service as service
from liverec.runtime import configure_malloc
from online_models.base import Batch
from online_models.evaluation import PrequentialEvaluator
from online_models.history import UserHistory
from stream.columns import decode_columns
from stream.events import ClickEvent
from trainer import source as source_module
from trainer.source import BatchSource

#: CPU-only rows: the source thread's whole CPU time, and its decoding's part
SOURCE = "source thread: poll, decode, queue (its own CPU; holds the GIL mostly)"
SOURCE_DECODE = "  source thread: decode"

#: wall seconds per phase of the current trainer run
PHASES: dict[str, float] = defaultdict(float)
#: the calling thread's CPU seconds per phase (wall - CPU: waits, mostly for the GIL)
PHASES_CPU: dict[str, float] = defaultdict(float)


def _timed(fn: Callable[..., Any], phase: str, wall: bool = True) -> Callable[..., Any]:
    """``fn`` with its wall time (unless not ``wall``: the source thread mostly waits
    for room in its queue) and its thread's CPU time added to ``phase``."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            if wall:
                PHASES[phase] += time.perf_counter() - t0
            PHASES_CPU[phase] += time.thread_time() - c0
    return wrapper


def instrument() -> dict[str, float]:
    """Wrap the trainer's steps (class-level for its methods, per instance for its
    helpers); returns a dict that receives the time of the first batch."""
    first: dict[str, float] = {}
    for name, phase in (("_evaluate", "evaluate"), ("_learn", "learn (all models)"),
                        ("_capture", "state copies for snapshots (the final one too)"),
                        ("_forget_evicted", "forget evicted users")):
        setattr(service.Trainer, name, _timed(getattr(service.Trainer, name), phase))
    # The evaluation's steps: which are its own work and which wait for the GIL.
    for cls, name, phase in (
            (PrequentialEvaluator, "_score_batch", "scoring the sample"),
            (PrequentialEvaluator, "_sync", "model rows -> catalog rows"),
            (PrequentialEvaluator, "_catalog_rows", "catalog rows and counts"),
            (PrequentialEvaluator, "_user_counts", "user counts"),
            (UserHistory, "advance", "user histories")):
        setattr(cls, name, _timed(getattr(cls, name), f"  evaluate: {phase}"))
    BatchSource.get = _timed(BatchSource.get, "waiting for the Kafka source")  # type: ignore[method-assign]
    BatchSource._run = _timed(BatchSource._run, SOURCE, wall=False)  # type: ignore[method-assign]
    source_module.decode_columns = _timed(decode_columns, SOURCE_DECODE, wall=False)
    Batch.from_columns = _timed(Batch.from_columns, "building the batch")  # type: ignore[method-assign]

    handle, init, checkpoint = (service.Trainer.handle, service.Trainer.__init__,
                                service.Trainer.checkpoint)

    def first_handle(self: service.Trainer, polled: Any) -> int:
        first.setdefault("t", time.perf_counter())
        return handle(self, polled)

    def wrapped_init(self: service.Trainer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.dedup.add_many = _timed(self.dedup.add_many, "de-duplication")  # type: ignore[method-assign]
        self.flood.admit = _timed(self.flood.admit, "flood guard")  # type: ignore[method-assign]
        self.data_drift.update = _timed(self.data_drift.update, "data drift")  # type: ignore[method-assign]

    def timed_checkpoint(self: service.Trainer, reason: str = "periodic",
                         wait: bool = False) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return checkpoint(self, reason, wait)
        finally:
            if reason == "shutdown":
                PHASES["final snapshot (its copy + write)"] += time.perf_counter() - t0
                PHASES_CPU["final snapshot (its copy + write)"] += time.thread_time() - c0

    service.Trainer.handle = first_handle  # type: ignore[method-assign]
    service.Trainer.__init__ = wrapped_init  # type: ignore[method-assign]
    service.Trainer.checkpoint = timed_checkpoint  # type: ignore[method-assign]
    return first


def learn_in_memory(events: list[ClickEvent], mix: str, batch_size: int) -> dict[str, float]:
    """Each model's seconds learning the events in memory (fresh models, batches of
    ``batch_size``, in learning order)."""
    return learn_timed(fresh_mix(mix), event_batches(events, batch_size))[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_options(ap)
    ap.add_argument("--mix", default="all", help="model mix (default: the default one)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    configure_malloc("train")
    first = instrument()
    events = click_events(args.events, args.users, args.items)
    with tempfile.TemporaryDirectory() as tmp, prefilled_topic(events, Path(tmp)) as kafka:
        raw_rate(kafka.bootstrap, kafka.topic, args.events)  # warm-up, as bench_train
        for r in range(args.rounds):
            memory = learn_in_memory(events, args.mix, args.batch_size)
            PHASES.clear()
            PHASES_CPU.clear()
            first.clear()
            t0 = time.perf_counter()
            rate, trainer = train_rate(kafka, args.events, args.mix, args.batch_size, 1.0,
                                       Path(tmp))
            cpu = trainer.process_cpu_s  # type: ignore[attr-defined]
            wall = args.events / rate
            learn_s = sum(memory.values())
            print(f"\nround {r + 1}: trainer {wall:.2f} s, in memory {learn_s:.2f} s, "
                  f"train / learn {learn_s / wall:.2f}; first batch after "
                  f"{first.get('t', t0) - t0:.2f} s")
            print("| model | learn in memory (s) | learn in the trainer (s) | ratio |")
            print("|---|---:|---:|---:|")
            reg = trainer.metrics.registry
            for name, mem in memory.items():
                inside = reg.get_sample_value("liverec_trainer_learn_duration_seconds_sum",
                                              {"model": name}) or 0.0
                print(f"| {name} | {mem:.2f} | {inside:.2f} | {inside / max(mem, 1e-9):.2f} |")
            print(f"process CPU {cpu:.2f} s ({cpu / wall:.2f} cores busy)")
            print("| phase of the trainer | wall (s) | its thread's CPU (s) | share of the run |")
            print("|---|---:|---:|---:|")
            for phase, s in sorted(PHASES.items(), key=lambda kv: -kv[1]):
                print(f"| {phase} | {s:.2f} | {PHASES_CPU[phase]:.2f} | {s / wall:.1%} |")
            for phase in (SOURCE, SOURCE_DECODE):
                c = PHASES_CPU[phase]
                print(f"| {phase} | | {c:.2f} | {c / wall:.1%} |")


if __name__ == "__main__":
    main()
