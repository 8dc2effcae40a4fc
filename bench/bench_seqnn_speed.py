"""Learning rate of ``seqnn`` configurations on a real stream, per core (process CPU time).

Learn-only (no evaluation): the first ``--warmup`` batches untimed, the next
``--batches`` timed with ``time.process_time`` (so the figure is per core and less
sensitive to neighbours on a shared machine than wall-clock time). Each
configuration is ``name:json-params``.

Example::

    .venv/bin/python bench/bench_seqnn_speed.py ../shared/data/movielens-small/ratings.csv \\
        --preset movielens --limit 30000 --config 'default:{}' \\
        --config 'steps2:{"steps_per_batch": 2}'
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from online_models.content import load_item_features  # noqa: E402
from online_models.datasets import read_interactions, to_batches  # noqa: E402
from online_models.seqnn import SeqNN  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--limit", type=int, default=30_000)
    ap.add_argument("--warmup", type=int, default=40, help="untimed batches")
    ap.add_argument("--batches", type=int, default=40, help="timed batches")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--config", action="append", default=[], help="name:json-params")
    ap.add_argument("--no-features", action="store_true")
    args = ap.parse_args()
    ds = read_interactions(args.path, args.preset)[: args.limit]
    batches = list(to_batches(ds, args.batch_size))[: args.warmup + args.batches]
    features = None if args.no_features else load_item_features(args.path, args.preset)
    for spec in args.config or ["default:{}"]:
        name, _, params = spec.partition(":")
        model = SeqNN(**json.loads(params or "{}"))
        if features is not None:
            model.set_item_features(features)
        for b in batches[: args.warmup]:
            model.learn(b)
        steps0 = model.steps_total
        t = time.process_time()
        n = 0
        for b in batches[args.warmup :]:
            model.learn(b)
            n += len(b)
        cpu = time.process_time() - t
        steps = model.steps_total - steps0
        print(f"{name:<16} {n / cpu:8,.0f} events/s CPU  ({steps} steps, "
              f"{1e3 * cpu / max(steps, 1):.1f} ms/step, {model.n_items} items)", flush=True)


if __name__ == "__main__":
    main()
