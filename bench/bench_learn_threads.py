"""Would a second learner thread speed up the default mix? One thread against two.

The default model mix learns the issue-9 stream in memory three ways, in turns per
round: one thread (each batch's models in learning order, each model timed), and two
threads, where a second thread learns some models of each batch while the first learns
the rest (the hybrid and its components stay together: the hybrid reads them). Two
splits are tried: bpr, embedding and user-kNN on the second thread, and bpr and
embedding alone. If the models released the GIL for long, two threads would take less
wall time; they do not, so the trainer keeps one learner thread.

Run::

    .venv/bin/python bench/bench_learn_threads.py --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import (
    add_stream_options,
    click_events,
    event_batches,
    fresh_mix,
    learn_timed,
)

from liverec.runtime import configure_malloc
from online_models.base import Batch, learning_order

SPLITS = (("bpr", "embedding", "userknn"), ("bpr", "embedding"))


def two_threads(batches: list[Batch], second: tuple[str, ...]) -> float:
    """Wall seconds with ``second`` learned on another thread, batch by batch."""
    models = fresh_mix("all")
    order = learning_order(models)
    first = [n for n in order if n not in second]
    rest = [n for n in order if n in second]
    t0 = time.perf_counter()
    for b in batches:
        def learn_rest(b: Batch = b) -> None:
            for n in rest:
                models[n].learn(b)
        th = threading.Thread(target=learn_rest)
        th.start()
        for n in first:
            models[n].learn(b)
        th.join()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_stream_options(ap)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    configure_malloc("train")
    batches = event_batches(click_events(args.events, args.users, args.items),
                            args.batch_size)
    print("| round | one thread (s) | " + " | ".join(
        f"two threads, second: {'+'.join(s)} (s)" for s in SPLITS) + " | hybrid (s) |")
    print("|---:|---:|" + "---:|" * len(SPLITS) + "---:|")
    for r in range(1, args.rounds + 1):
        wall, per = learn_timed(fresh_mix("all"), batches)
        twos = [two_threads(batches, s) for s in SPLITS]
        print(f"| {r} | {wall:.2f} | " + " | ".join(f"{t:.2f}" for t in twos)
              + f" | {per['hybrid']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
