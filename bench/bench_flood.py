"""The flood guard's cost on a long stream: admit time, table sizes, snapshot packing.

Run::

    .venv/bin/python bench/bench_flood.py --events 500000

A seeded synthetic stream (``online_models.synthetic.generate_events``, 20,000 users
and items by default) goes through :class:`trainer.flood.FloodGuard` in batches of
``--batch-size``, as the trainer sends it. Printed: CPU seconds of ``admit`` for the
whole stream, the keys left in the user / pair / item tables at the end, and the CPU
seconds of one ``to_arrays`` (what every snapshot packs). Rates are process CPU time,
so they stay meaningful on a loaded machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from online_models.synthetic import generate_events
from trainer.flood import FloodGuard, FloodSettings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=256)
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


if __name__ == "__main__":
    main()
