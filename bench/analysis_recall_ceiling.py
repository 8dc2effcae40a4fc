"""How far down its list the best blend has the next item (round 2, session 35; see
BENCHMARKS.md, "Online Retail: a linear autoencoder, seqnn seeds and windows").

HR@10 is recall@10 with one relevant item. A re-ranker over the hybrid's top ``N``
can reach at most its recall@N, and a blend that always picked the right component
for each event at most the share of events that some component has in its top 10.
This script measures both, and the
same HR@10 split by the event's context (does it continue the user's invoice; how many
earlier events the user has), in the evaluator's protocol (test-then-train per batch of
256; an event counts when its user has history and its item is known and not in that
history), for the six-component blend of BENCHMARKS.md's best Online Retail figures
(``seqnn`` at learning rate 1e-3 without lookahead, the setting chosen on the file's
first 30%), bound to the same component instances, with item features from the preset.

Run (default: Online Retail's first 30%, 119,377 purchases)::

    .venv/bin/python bench/analysis_recall_ceiling.py \\
        ../shared/data/online-retail/online_retail.csv.gz --preset online-retail
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from online_models import registry
from online_models.content import load_item_features
from online_models.datasets import read_interactions, to_batches
from online_models.evaluation import PrequentialEvaluator

COMPONENTS = ("popularity", "itemknn", "sequence", "sknn", "seqnn", "content-knn")
SEQNN = {"learning_rate": 0.001, "lookahead": 0}
CUTS = (10, 20, 50, 100, 200)
HISTORY_BUCKETS = ((1, 5), (5, 20), (20, 100), (100, None))


def contexts(ds: Any) -> dict[str, np.ndarray]:
    """Masks over the data set's events: continuing the user's invoice or not, and
    the user's number of earlier events by :data:`HISTORY_BUCKETS`."""
    last: dict[str, str] = {}
    count: dict[str, int] = {}
    same = np.zeros(len(ds), bool)
    prior = np.zeros(len(ds), np.int64)
    for i, (user, session) in enumerate(zip(ds.users, ds.session_ids, strict=True)):
        same[i] = last.get(user) == session
        prior[i] = count.get(user, 0)
        last[user], count[user] = session, prior[i] + 1
    out = {"continues the invoice": same, "starts an invoice": ~same}
    for lo, hi in HISTORY_BUCKETS:
        out[f"{lo}-{hi - 1 if hi else ''} earlier events"] = (prior >= lo) & (
            prior < (hi or np.iinfo(np.int64).max))
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path")
    ap.add_argument("--preset", default="online-retail")
    ap.add_argument("--limit", type=int, default=119_377, help="events (0: the whole file)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    ds = read_interactions(args.path, args.preset)
    if args.limit:
        ds = ds[: args.limit]
    models = {n: registry.create(n, **(SEQNN if n == "seqnn" else {})) for n in COMPONENTS}
    models["hybrid"] = registry.create("hybrid", components=list(COMPONENTS),
                                       component_params={"seqnn": SEQNN})
    registry.bind(models)
    registry.give_item_features(models, load_item_features(args.path, args.preset))
    ev = PrequentialEvaluator(models, k=10)
    ranks: dict[str, list[np.ndarray]] = {n: [] for n in models}
    where: list[np.ndarray] = []  # each evaluated event's index in the data set
    seen = 0
    for batch in tqdm(to_batches(ds, 256), total=-(-len(ds) // 256), unit="batch",
                      leave=False):
        out = ev.process(batch)
        where.append(seen + out.positions)
        seen += len(batch)
        for n in models:
            ranks[n].append(out.models[n].ranks)
    rank = {n: np.concatenate(r) for n, r in ranks.items()}
    result = {n: {f"recall@{k}": float((r <= k).mean()) for k in CUTS} for n, r in rank.items()}
    any_component = np.stack([rank[n] for n in COMPONENTS])
    result["some component"] = {f"recall@{k}": float((any_component <= k).any(0).mean())
                                for k in CUTS}
    print(f"{len(rank['hybrid'])} evaluated events")
    print("| model | " + " | ".join(f"recall@{k}" for k in CUTS) + " |")
    print("|---|" + "---:|" * len(CUTS))
    for n, r in result.items():
        print(f"| {n} | " + " | ".join(f"{r[f'recall@{k}']:.4f}" for k in CUTS) + " |")
    at = np.concatenate(where)
    print("\nHR@10 by the event's context")
    print("| context | events | " + " | ".join(rank) + " | some component |")
    print("|---|" + "---:|" * (len(rank) + 2))
    for label, mask in contexts(ds).items():
        m = mask[at]
        hr = {n: float((r[m] <= 10).mean()) for n, r in rank.items()}
        hr["some component"] = float((any_component[:, m] <= 10).any(0).mean())
        result[label] = {"events": float(m.sum()), **hr}
        print(f"| {label} | {int(m.sum())} | " + " | ".join(f"{v:.3f}" for v in hr.values())
              + " |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
