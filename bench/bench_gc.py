"""Time Python's cyclic garbage collector in the issue-9 runs: the in-memory learn and
the whole trainer, side by side, as ``bench/bench_train.py`` measures them.

Run (a local broker is started unless ``LIVEREC_KAFKA_BOOTSTRAP`` is set)::

    .venv/bin/python bench/bench_gc.py --rounds 2

Prints, per round and side: the rate, the wall time, the seconds spent in collections
(``gc.callbacks``, every thread) and the number of collections per generation.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import click_events, learn_rate, prefilled_topic, train_rate

from liverec.runtime import configure_malloc


class GcClock:
    """Seconds spent in collections and their count per generation, since :meth:`reset`."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self.reset()
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.seconds = 0.0
        self.counts = [0, 0, 0]

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0
            self.counts[info["generation"]] += 1

    def line(self) -> str:
        return f"gc {self.seconds:.2f} s, collections by generation {self.counts}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of learn, then train")
    ap.add_argument("--events", type=int, default=100_000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    configure_malloc("train")
    clock = GcClock()
    events = click_events(args.events, 20_000, 20_000)
    with tempfile.TemporaryDirectory() as tmp, prefilled_topic(events, Path(tmp)) as kafka:
        for r in range(args.rounds):
            clock.reset()
            t = time.perf_counter()
            learn = learn_rate(events, "all", 256)
            print(f"round {r + 1} learn: {learn:,.0f} events/s, {time.perf_counter() - t:.2f} s "
                  f"wall, {clock.line()}", flush=True)
            clock.reset()
            t = time.perf_counter()
            rate, _ = train_rate(kafka, args.events, "all", 256, 1.0, Path(tmp))
            print(f"round {r + 1} train: {rate:,.0f} events/s, {time.perf_counter() - t:.2f} s "
                  f"wall, {clock.line()}; train / learn {rate / learn:.2f}", flush=True)


if __name__ == "__main__":
    main()
