"""Online Retail: how much of the next item its stock code gives away, and whether
item-kNN gains from it (round 2, session 25; see BENCHMARKS.md, "Deep models").

On a prefix of the file (``--limit``, default its first 30%: 119,377 purchases), in
the evaluator's protocol (test-then-train per batch of 256; an event counts when its
user has history and its item is known and not in that history):

1. **Baskets.** The share of evaluated events that continue the user's current
   invoice (same timestamp as the user's previous event), and item-kNN's HR@10 on
   those and on the first event of a new invoice.
2. **Stock codes.** How often the next item's code (the number its id starts with)
   lies within 1, 3 and 10 of the previous item's, and the HR@10 of a scorer that
   recommends the 10 known items whose codes are nearest the previous item's.
3. **Blend.** Item-kNN's scores (divided by their maximum) plus ``lambda`` times
   ``exp(-|code - previous code| / scale)``, HR@10 over a small grid.

Run::

    .venv/bin/python bench/analysis_retail_codes.py \\
        ../shared/data/online-retail/online_retail.csv.gz
"""

from __future__ import annotations

import argparse
import bisect
import re
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from online_models import registry
from online_models.datasets import read_interactions, to_batches
from online_models.evaluation import PrequentialEvaluator

LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
SCALES = (1.0, 3.0)


def code(item: str) -> float:
    """The number ``item`` starts with (NaN for ids like ``POST``)."""
    m = re.match(r"\d+", item)
    return float(m.group()) if m else float("nan")


def sort_key(item: str) -> float:
    """:func:`code`, with ids that carry no number sorted first, far from any code."""
    c = code(item)
    return c if c == c else -1e9


def baskets(ds: object) -> None:
    ev = PrequentialEvaluator({"itemknn": registry.create("itemknn")}, k=10)
    last: dict[str, float] = {}
    hits, same = [], []
    for b in tqdm(to_batches(ds, 256), desc="baskets", leave=False):  # type: ignore[arg-type]
        gap = np.empty(len(b))
        for p, (u, t) in enumerate(zip(b.users, b.timestamps, strict=True)):
            gap[p] = t - last.get(u, -np.inf)
            last[u] = t
        out = ev.process(b)
        same.append(gap[out.positions] <= 0)
        hits.append(out.models["itemknn"].hits.astype(bool))
    s, h = np.concatenate(same), np.concatenate(hits)
    print(f"evaluated {len(h):,}; continuing the current invoice: {s.mean():.1%}")
    print(f"item-kNN HR@10: all {h.mean():.4f}, within an invoice {h[s].mean():.4f}, "
          f"first of a new invoice {h[~s].mean():.4f}")


def codes_and_blend(ds: object) -> None:
    model = registry.create("itemknn")
    hist: dict[str, list[str]] = {}
    known: set[str] = set()
    by_code: list[tuple[float, str]] = []
    near = {1: 0, 3: 0, 10: 0}
    nearest_hits = 0
    blend = dict.fromkeys(((lam, s) for lam in LAMBDAS for s in SCALES), 0)
    n = 0
    for b in tqdm(to_batches(ds, 256), desc="codes and blend", leave=False):  # type: ignore[arg-type]
        ids = model.items.ids
        row_codes = np.array([code(i) if i is not None else np.nan for i in ids])
        for u, i in zip(b.users, b.items, strict=True):
            h = hist.setdefault(u, [])
            seen = set(h)
            row = model.items.get(i)
            if h and i in known and i not in seen and row >= 0:
                n += 1
                prev = code(h[-1])
                d = abs(code(i) - prev)
                for k in near:
                    near[k] += d <= k
                # the 10 known items with the nearest codes, outside the history
                key = sort_key(h[-1])
                j = bisect.bisect_left(by_code, (key, ""))
                lo, hi, got = j - 1, j, []
                while len(got) < 10 and (lo >= 0 or hi < len(by_code)):
                    dl = key - by_code[lo][0] if lo >= 0 else np.inf
                    dh = by_code[hi][0] - key if hi < len(by_code) else np.inf
                    if dl <= dh:
                        c, lo = by_code[lo][1], lo - 1
                    else:
                        c, hi = by_code[hi][1], hi + 1
                    if c not in seen:
                        got.append(c)
                nearest_hits += i in got
                sc = np.asarray(model.score_all(u, h), np.float64)
                top = sc.max()
                base = sc / top if top > 0 else sc
                h_rows = np.array([model.items.get(x) for x in h[-200:]])
                h_rows = h_rows[h_rows >= 0]
                dist = np.abs(row_codes - prev)
                for s in SCALES:
                    adj = np.where(np.isnan(dist), 0.0, np.exp(-dist / s))
                    for lam in LAMBDAS:
                        tot = base + lam * adj
                        tot[h_rows] = -np.inf
                        blend[lam, s] += int((tot > tot[row]).sum()) < 10
            h.append(i)
        for i in b.items:
            if i not in known:
                known.add(i)
                bisect.insort(by_code, (sort_key(i), i))
        model.learn(b)
    print(f"evaluated (known to item-kNN) {n:,}; next code within 1 / 3 / 10 of the "
          f"previous item's: {near[1] / n:.1%} / {near[3] / n:.1%} / {near[10] / n:.1%}")
    print(f"HR@10 of the 10 nearest codes: {nearest_hits / n:.4f}")
    print("| lambda | " + " | ".join(f"scale {s:g}" for s in SCALES) + " |")
    print("|---:|" + "---:|" * len(SCALES))
    for lam in LAMBDAS:
        print(f"| {lam:g} | " + " | ".join(f"{blend[lam, s] / n:.4f}" for s in SCALES) + " |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="the Online Retail CSV")
    ap.add_argument("--limit", type=int, default=119_377, help="purchases (default 30%%)")
    args = ap.parse_args(argv)
    ds = read_interactions(args.path, "online-retail")[: args.limit]
    baskets(ds)
    codes_and_blend(ds)


if __name__ == "__main__":
    main()
