"""How many events arrive together with their user's previous one (same timestamp), and
whether an Online Retail invoice's line order carries structure a model can learn.

Figures for BENCHMARKS.md, "Events that arrive together" (session 48):

    .venv/bin/python bench/analysis_tie_groups.py

prints, per shared data set, the share of the events after a user's first that have
the timestamp of the user's previous event, and for Online Retail how often the
numeric parts of two adjacent lines' stock codes lie within 3 of each other, in the
file's order and with each group's lines shuffled (seeded).
"""

from __future__ import annotations

import argparse
import re
from itertools import pairwise
from pathlib import Path

import numpy as np

from online_models.datasets import read_interactions

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {"online-retail": DATA / "online-retail" / "online_retail.csv.gz",
        "movielens": DATA / "movielens-small" / "ratings.csv"}


def _code(item: str) -> int | None:
    match = re.match(r"\d+", item)
    return int(match.group()) if match else None


def _near_share(groups: list[list[int | None]]) -> float:
    near = pairs = 0
    for group in groups:
        for a, b in pairwise(group):
            if a is not None and b is not None:
                pairs += 1
                near += abs(a - b) <= 3
    return near / max(pairs, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffles")
    args = ap.parse_args()
    for preset, path in SETS.items():
        ds = read_interactions(path, preset=preset)
        last: dict[str, float] = {}
        groups: dict[tuple[str, float], list[int | None]] = {}
        after_first = same = 0
        for user, item, t in zip(ds.users, ds.items, ds.timestamps.tolist(), strict=True):
            if user in last:
                after_first += 1
                same += last[user] == t
            last[user] = t
            groups.setdefault((user, t), []).append(_code(item))
        print(f"{preset}: {same / after_first:.3f} of {after_first:,} events after a "
              "user's first have the timestamp of the user's previous event")
        if preset == "online-retail":
            rng = np.random.default_rng(args.seed)
            ordered = list(groups.values())
            shuffled = [[g[i] for i in rng.permutation(len(g))] for g in ordered]
            print(f"{preset}: adjacent lines' stock codes within 3: "
                  f"{_near_share(ordered):.3f} in the file's order, "
                  f"{_near_share(shuffled):.3f} shuffled within each group")


if __name__ == "__main__":
    main()
