"""The trainer's per-event guard state on a long stream: the flood guard and the
de-duplication window, what they cost per event and what every snapshot packs.

Run::

    .venv/bin/python bench/bench_trainer_state.py --events 500000

A seeded synthetic stream (``online_models.synthetic.generate_events``, 20,000 users
and items by default) goes through :class:`trainer.flood.FloodGuard` in batches of
``--batch-size``, as the trainer sends it. Printed: CPU seconds of ``admit`` for the
whole stream, the keys left in the user / pair / item tables at the end, and the CPU
seconds of one ``to_arrays`` (what every snapshot packs). Then the same stream's event
ids go through :class:`trainer.dedup.DedupWindow` (default window and ``max_ids``):
``add_many`` CPU seconds for all but the last ``--tail`` events, one snapshot's packing
there, ``add_many`` for the tail, and the next snapshot's packing (the steady state: a
snapshot every ``--tail`` events). Last, a model's string id index
(:class:`online_models.ids.IdIndex`, as every model keeps for users and items) of
``--ids`` ids: one snapshot's packing, then the next after ``--tail`` new ids. CPU
times are process CPU time, so they stay meaningful on a loaded machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from online_models.base import IdIndex
from online_models.synthetic import generate_events
from trainer.dedup import DedupWindow
from trainer.flood import FloodGuard, FloodSettings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--tail", type=int, default=30_000)
    ap.add_argument("--ids", type=int, default=1_000_000)
    args = ap.parse_args(argv)

    rows = generate_events(args.events, args.users, args.items, seed=0)
    users = [r["user_id"] for r in rows]
    items = [r["item_id"] for r in rows]
    ts = np.asarray([r["timestamp"] for r in rows], np.float64)
    guard = FloodGuard(FloodSettings())
    capped = 0
    t0 = time.process_time()
    for lo in range(0, len(users), args.batch_size):
        hi = lo + args.batch_size
        _, why = guard.admit(users[lo:hi], items[lo:hi], ts[lo:hi])
        capped += sum(why.values())
    admit_s = time.process_time() - t0
    t0 = time.process_time()
    guard.to_arrays()
    pack_s = time.process_time() - t0
    sizes = {name: len(table.state) for name, table in guard._tables().items()
             if name != "all"}
    print(f"{args.events} events over {(ts.max() - ts.min()) / 3600:.1f} h of event time, "
          f"batches of {args.batch_size}")
    print("| admit CPU s | capped | keys (users / pairs / items) | to_arrays CPU ms |")
    print("|---:|---:|---|---:|")
    print(f"| {admit_s:.2f} | {capped} | {sizes['users']:,} / {sizes['pairs']:,} / "
          f"{sizes['items']:,} | {1000 * pack_s:.1f} |")

    ids = [r["event_id"] for r in rows]
    head = max(0, len(ids) - args.tail)
    dedup = DedupWindow()
    times = []
    for lo, hi in ((0, head), (head, len(ids))):
        t0 = time.process_time()
        for b in range(lo, hi, args.batch_size):
            e = min(hi, b + args.batch_size)
            dedup.add_many(ids[b:e], ts[b:e])
        times.append(time.process_time() - t0)
        t0 = time.process_time()
        dedup.to_arrays()
        times.append(time.process_time() - t0)
    print()
    print(f"| dedup add_many CPU s ({head:,} ids) | first snapshot ms | add_many "
          f"({len(ids) - head:,} more) | next snapshot ms | ids kept |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {times[0]:.2f} | {1000 * times[1]:.1f} | {times[2]:.3f} | {1000 * times[3]:.1f} "
          f"| {len(dedup):,} |")

    index = IdIndex(f"u{k:09d}" for k in range(args.ids))
    t0 = time.process_time()
    index.to_arrays("users")
    first = time.process_time() - t0
    index.add_many([f"v{k:09d}" for k in range(args.tail)])
    t0 = time.process_time()
    index.to_arrays("users")
    nxt = time.process_time() - t0
    print()
    print(f"| IdIndex of {args.ids:,} ids: first snapshot ms | next, after {args.tail:,} "
          "new ids, ms |")
    print("|---:|---:|")
    print(f"| {1000 * first:.1f} | {1000 * nxt:.1f} |")


if __name__ == "__main__":
    main()
