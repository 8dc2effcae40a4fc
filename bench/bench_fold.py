"""What the scale-out merge writer's fold costs, in memory, against learning.

In scale-out mode (``liverec train --scale-out``) every trainer learns its own users'
events with ``learn_local`` and publishes one update message per polled batch; the
owner of the last partition also folds everyone's messages into the item state
(:class:`trainer.folding.UpdateFold`: ``decode_deltas``, then each model's
``apply_deltas`` over the messages read in ``fold_every_s``). The fold is the merge
writer's extra work, so it bounds how much a second trainer can add.

This splits the issue-9 stream (``liverec generate``'s synthetic events) between
``--senders`` trainers by user (a CRC-32 of the id, as keyed partitions would), lets
each learn its share in ``--batch-size`` polls and encode the messages, then folds them
into fresh models in groups of ``--chunk`` messages. It prints CPU seconds per 100,000
events: one model set learning everything (``learn``, the one-process trainer's work),
the senders' ``learn_local`` and encoding, and the fold (decoding and each model's
``apply_deltas``). No Kafka. Rounds run one after another (fresh models each).

Run::

    .venv/bin/python bench/bench_fold.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib

import numpy as np
from bench_train import add_stream_options, click_events, event_batches

from online_models import registry
from online_models.base import Batch, OnlineModel, learning_order
from online_models.deltas import decode_deltas, encode_deltas
from trainer.folding import PendingFold


def make(mix: str) -> dict[str, OnlineModel]:
    """Fresh models of ``mix``, bound, in learning order."""
    return registry.create_models(registry.parse_models(mix))


def one_round(mix: str, batches: list[Batch], senders: int, chunk: int
              ) -> dict[str, float]:
    """CPU seconds of each phase for the whole stream."""
    out: dict[str, float] = {}
    whole = make(mix)
    order = learning_order(whole)
    t = time.thread_time()
    for b in batches:
        for name in order:
            whole[name].learn(b)
    out["learn, one process"] = time.thread_time() - t

    sets = [make(mix) for _ in range(senders)]
    msgs: list[bytes] = []
    learn_s = encode_s = 0.0
    for b in batches:
        owner = np.fromiter((zlib.crc32(u.encode()) % senders for u in b.users),
                            np.int64, count=len(b))
        for k, models in enumerate(sets):
            sel = np.flatnonzero(owner == k)
            if not len(sel):
                continue
            part = b[sel]
            t = time.thread_time()
            deltas = {n: models[n].learn_local(part) for n in order}  # type: ignore[attr-defined]
            t2 = time.thread_time()
            msgs.append(encode_deltas(deltas, {"partition": k, "events": len(part)}))
            learn_s += t2 - t
            encode_s += time.thread_time() - t2
    out["learn_local, all senders"] = learn_s
    out["encode"] = encode_s

    folder = make(mix)
    decode_s = 0.0
    apply_s = dict.fromkeys(order, 0.0)
    for start in range(0, len(msgs), chunk):
        t = time.thread_time()
        pending = PendingFold()  # what trainer.folding's read holds: one id table
        for raw in msgs[start:start + chunk]:
            meta, deltas = decode_deltas(raw)
            pending.add(deltas, meta, len(raw))
        decode_s += time.thread_time() - t
        for name in order:
            t = time.thread_time()
            folder[name].apply_deltas(pending.deltas.get(name, []))  # type: ignore[attr-defined]
            apply_s[name] += time.thread_time() - t
    out["fold: decode and id table"] = decode_s
    for name, s in apply_s.items():
        out[f"fold: {name}.apply_deltas"] = s
    out["fold, total"] = decode_s + sum(apply_s.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_stream_options(ap, batch_size=2000,
                       batch_help="events per poll, one update message per sender each "
                                  "(bench_scale_out.py's batch)")
    ap.add_argument("--models", default="popularity,itemknn,sequence",
                    help="the scale-out mix (default: bench_scale_out.py's)")
    ap.add_argument("--senders", type=int, default=2, help="trainers publishing (default 2)")
    ap.add_argument("--chunk", type=int, default=25,
                    help="messages per fold (default 25: about what fold_every_s 0.5 "
                         "gathers from two trainers at 50k events/s, 2,000-event polls)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    events = click_events(args.events, args.users, args.items)
    batches = event_batches(events, args.batch_size)
    per = 100_000 / len(events)
    rounds = []
    for r in range(args.repeats):
        got = one_round(args.models, batches, args.senders, args.chunk)
        rounds.append(got)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v * per:.3f}" for k, v in got.items()),
              flush=True)
    print(f"CPU s per 100,000 events, median of {args.repeats} rounds "
          f"({args.senders} senders, polls of {args.batch_size}, {args.chunk} messages "
          f"per fold):")
    for key in rounds[0]:
        print(f"  {key:36s} {statistics.median(r[key] for r in rounds) * per:.3f}")
    fold = statistics.median(r["fold, total"] / r["learn, one process"] for r in rounds)
    print(f"  fold / learn (one process): {fold:.2f}")


if __name__ == "__main__":
    main()
