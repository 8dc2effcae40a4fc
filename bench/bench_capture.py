"""What a snapshot's capture costs the learner, in memory, per model.

A trainer's only pause for a snapshot is :func:`online_models.snapshot.capture`: every
model's ``get_state`` plus a copy of what the model may still change (the writing runs
on another thread). This learns the issue-9 stream (``liverec generate``'s synthetic
events) with a model mix in batches, captures the state every ``--every`` batches and
after the last one, as a trainer does, and prints the learning time, the capture time
(total, last, share of learning) and each model's ``get_state`` time. No Kafka, no
disk. Rounds run one after another in one process (fresh models each).

Run::

    .venv/bin/python bench/bench_capture.py --events 100000 --every 100 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, cast

from bench_train import add_stream_options, click_events, event_batches

from liverec.runtime import configure_malloc
from online_models import registry
from online_models.base import Batch, ModelState, OnlineModel, UserHistory, learning_order
from online_models.snapshot import capture


def one_round(mix: str, batches: list[Batch], every: int
              ) -> tuple[float, list[float], dict[str, float]]:
    """Learning seconds, each capture's seconds, and each model's get_state seconds."""
    models = {n: registry.create(n) for n in registry.parse_models(mix)}
    registry.bind(models)
    order = learning_order(models)
    history = UserHistory()
    learn_s = 0.0
    get_state: dict[str, float] = {}
    captures: list[float] = []
    timed = {n: _Timed(m, n, get_state) for n, m in models.items()}
    for b, batch in enumerate(batches):
        t0 = time.perf_counter()
        for name in order:
            models[name].learn(batch)
        learn_s += time.perf_counter() - t0
        history.extend(batch.users, batch.items)
        if (b + 1) % every == 0 or b == len(batches) - 1:
            t0 = time.perf_counter()
            capture(cast(dict[str, OnlineModel], timed), history=history, offsets={},
                    events_total=0, watermark=None)
            captures.append(time.perf_counter() - t0)
    return learn_s, captures, get_state


class _Timed:
    """A model whose ``get_state`` adds its time to ``spent[name]`` (else the model)."""

    def __init__(self, model: Any, name: str, spent: dict[str, float]) -> None:
        self._model, self._name, self._spent = model, name, spent

    def get_state(self) -> ModelState:
        t0 = time.perf_counter()
        state: ModelState = self._model.get_state()
        self._spent[self._name] = self._spent.get(self._name, 0.0) + time.perf_counter() - t0
        return state

    def __getattr__(self, attr: str) -> object:
        return getattr(self._model, attr)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_options(ap)
    ap.add_argument("--mix", default="all", help="models (default: the default mix)")
    ap.add_argument("--every", type=int, default=100,
                    help="batches between captures (a trainer at ~10k events/s that "
                         "snapshots every 2-3 s: ~100)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    configure_malloc("train")  # as `liverec train` runs
    batches = event_batches(click_events(args.events, args.users, args.items),
                            args.batch_size)
    totals = []
    for r in range(args.repeats):
        learn_s, caps, per_model = one_round(args.mix, batches, args.every)
        totals.append(sum(caps))
        slowest = sorted(per_model.items(), key=lambda kv: -kv[1])
        models = " ".join(f"{n} {s * 1e3:.0f}" for n, s in slowest)
        print(f"round {r + 1}: learning {learn_s:.2f} s; {len(caps)} captures "
              f"{sum(caps) * 1e3:.0f} ms ({sum(caps) / learn_s:.1%} of learning), last "
              f"{caps[-1] * 1e3:.0f} ms; get_state ms: {models}", flush=True)
    print(f"captures, median of {len(totals)} rounds: {statistics.median(totals) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
