"""``similar()`` of a factor model on a large catalogue: top-k by ``argpartition``
(:func:`online_models.base.top_k`, what the models use) against a full ``lexsort`` of
the catalogue (what they used before), on the same similarity vectors, interleaved.

Run::

    .venv/bin/python bench/bench_similar.py --items 500000 --dim 32 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from online_models.base import top_k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    V = rng.standard_normal((args.items, args.dim)).astype(np.float32)
    norms = np.linalg.norm(V, axis=1) + 1e-12
    times: dict[str, list[float]] = {"whole similar(), lexsort": [], "whole similar(), top_k": []}
    for r in range(args.repeats):
        row = int(rng.integers(args.items))
        for name in (list(times) if r % 2 == 0 else list(times)[::-1]):
            t0 = time.perf_counter()
            sims = (V @ V[row]) / (norms * norms[row])
            sims[row] = -np.inf
            if name.endswith("lexsort"):
                order = np.lexsort((np.arange(len(sims)), -sims))[: args.k]
            else:
                order = top_k(sims, args.k)
            times[name].append(time.perf_counter() - t0)
        assert set(order.tolist()) == set(np.argsort(-sims, kind="stable")[: args.k].tolist())
    base = statistics.median(times["whole similar(), lexsort"])
    print(f"{args.items} items x {args.dim} dims, k={args.k}, median of {args.repeats}:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:28s} {med * 1000:8.2f} ms  ({base / med:.1f}x)")


if __name__ == "__main__":
    main()
