"""Is the re-ranker short of a better model or of better features? (Online Retail.)

Runs the re-ranker (``ranked``) prequentially like ``bench/bench_deep.py`` and keeps,
for every evaluated event, the feature rows of its candidates as the re-ranker scored
them, the online MLP's order and where the clicked item was. It then fits a
gradient-boosted ranker (LightGBM's LambdaRank, on the same features) on the events
before each of four cut points in the second half of the stream and ranks the events
up to the next cut, and reports HR@10 there for: the recall order (the blend, the
re-ranker's starting point), the online MLP as it ranked at the time, and the trees.
The trees are fitted twice: on the re-ranker's features, and with three more that
the re-ranker does not have: how far the candidate's stock code is from
the last item's (numerically, and the longest common prefix with the last three), and
how many lines of the current invoice (the user's events at the same time) came before.

This is an analysis, not a model: the trees are refitted from scratch on everything
before each cut, many passes over it, which a streaming re-ranker does not do. It
bounds what a stronger learner could get from these features. LightGBM is not a
dependency of liverec: install it beside the environment (``pip install --target
DIR lightgbm``, then ``PYTHONPATH=DIR``).

Run::

    C6='["popularity","itemknn","sequence","sknn","seqnn","content-knn"]'
    CP='{"seqnn":{"learning_rate":0.001,"lookahead":0}}'
    PYTHONPATH=DIR .venv/bin/python bench/analysis_reranker_features.py \\
        ../shared/data/online-retail/online_retail.csv.gz --preset online-retail \\
        --limit 119377 --components "$C6" --component-params "$CP" --train-sample 128
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from online_models.content import load_item_features
from online_models.datasets import read_interactions, to_batches
from online_models.evaluation import PrequentialEvaluator
from online_models.reranker import _N_OTHER, ReRanker


class _Recorder:
    """Wraps one re-ranker's scoring to keep each query's candidate features."""

    def __init__(self, model: ReRanker) -> None:
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        #: per query: the stock-code features of its candidates (``_code_features``)
        self.extra: list[np.ndarray] = []
        matrix, candidates, features = model._matrix, model._candidates, model._features
        score_all = model.score_all
        last: dict[str, Any] = {}  # what the query being scored computed

        def record_matrix(*a: Any) -> np.ndarray:
            last["mat"] = matrix(*a)
            return last["mat"]  # type: ignore[no-any-return]

        def record_candidates(*a: Any) -> tuple[np.ndarray, np.ndarray]:
            last["cand"], last["recall"] = candidates(*a)
            return last["cand"], last["recall"]

        def record_features(*a: Any) -> np.ndarray:
            last["x"] = features(*a)
            return last["x"]  # type: ignore[no-any-return]

        def record_scores(user: str, history: Any = ()) -> np.ndarray:
            last.clear()
            out: np.ndarray = score_all(user, history)
            if "cand" not in last:  # nothing known yet: no candidates
                empty = np.zeros(0, np.int64)
                width = 2 * len(model.components) + _N_OTHER
                self.rows.append((np.zeros((0, width), np.float32), empty, np.zeros(0)))
                self.extra.append(np.zeros((0, 2), np.float32))
                return out
            cand = last["cand"]
            x = last.get("x")
            if x is None:  # warm-up: the recall order, no features computed
                x = features(last["mat"], last["recall"], cand, cand, user, list(history),
                             model._watermark)
            self.rows.append((x.astype(np.float32), cand, out[cand]))
            ids = model.items.ids
            self.extra.append(_code_features([ids[r] or "" for r in cand.tolist()],
                                             list(history)))
            return out

        model._matrix = record_matrix  # type: ignore[method-assign]
        model._candidates = record_candidates  # type: ignore[method-assign]
        model._features = record_features  # type: ignore[method-assign]
        model.score_all = record_scores  # type: ignore[method-assign]


_DIGITS = re.compile(r"\d+")


def _code_number(code: str) -> float:
    m = _DIGITS.match(code)
    return float(m.group()) if m else np.nan


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _code_features(cands: list[str], history: list[str]) -> np.ndarray:
    """Per candidate: log1p of its stock code's numeric distance to the last item's
    (NaN when either has no leading digits), and the longest common prefix of its code
    with one of the last three items' codes."""
    out = np.full((len(cands), 2), np.nan, np.float32)
    if not history:
        return out
    last = _code_number(history[-1])
    recent = history[-3:]
    for j, c in enumerate(cands):
        out[j, 0] = np.log1p(abs(_code_number(c) - last))
        out[j, 1] = max(_common_prefix(c, h) for h in recent)
    return out


def _hr(order_of: list[np.ndarray], truth_pos: np.ndarray, k: int = 10) -> float:
    """Share of events whose clicked candidate (-1: none) is in the top k of its order."""
    hits = [t >= 0 and t in o[:k] for o, t in zip(order_of, truth_pos, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--components", required=True, help="JSON list of component names")
    ap.add_argument("--component-params", default="{}")
    ap.add_argument("--train-sample", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import lightgbm as lgb  # an analysis-only dependency (see the module docstring)

    torch.set_num_threads(1)
    ds = read_interactions(args.path, args.preset)
    if args.limit:
        ds = ds[: args.limit]
    features = load_item_features(args.path, args.preset)
    ranked = ReRanker(components=json.loads(args.components),
                      component_params=json.loads(args.component_params),
                      train_sample=args.train_sample)
    ranked.set_item_features(features)
    rec = _Recorder(ranked)
    ev = PrequentialEvaluator({"ranked": ranked}, k=10)
    truth_rows: list[int] = []
    invoice_pos: list[int] = []  # per evaluated event: earlier lines of its invoice
    lines: dict[tuple[str, float], int] = {}
    t0 = time.perf_counter()
    for batch in tqdm(to_batches(ds, 256), total=-(-len(ds) // 256), unit="batch", leave=False):
        before = len(rec.rows)
        line_of = []
        for u, t in zip(batch.users, batch.timestamps.tolist(), strict=True):
            line_of.append(lines.get((u, t), 0))
            lines[(u, t)] = line_of[-1] + 1
        out = ev.process(batch, learn=False)
        pos = out.positions
        assert len(rec.rows) - before == len(pos), (len(rec.rows) - before, len(pos))
        truth_rows.extend(ranked.items.get(batch.items[p]) for p in pos.tolist())
        invoice_pos.extend(line_of[p] for p in pos.tolist())
        ranked.learn(batch)
    hr_eval = ev.totals("ranked")["hr"]
    print(f"{len(rec.rows)} evaluated events, HR@10 {hr_eval:.4f} "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    n = len(rec.rows)
    truth_pos = np.array([int(np.flatnonzero(c == t)[0]) if t in c else -1
                          for (_, c, _), t in zip(rec.rows, truth_rows, strict=True)])
    online = [np.argsort(-s, kind="stable") for _, _, s in rec.rows]
    recall_col = 2 * len(ranked.components)
    recall = [np.argsort(-x[:, recall_col], kind="stable") for x, _, _ in rec.rows]
    cuts = np.linspace(n // 2, n, 5).astype(int)
    params = {"objective": "lambdarank", "learning_rate": 0.05, "num_leaves": 31,
              "min_data_in_leaf": 50, "lambdarank_truncation_level": 20,
              "num_threads": 1, "verbose": -1, "seed": 0}

    def rows(i: int, with_extra: bool) -> np.ndarray:
        """Event ``i``'s candidate feature rows (``with_extra``: and the three extras)."""
        x = rec.rows[i][0]
        if not with_extra:
            return x
        line = np.full((len(x), 1), invoice_pos[i], np.float32)
        return np.hstack([x, rec.extra[i], line])

    folds = []
    for lo, hi in itertools.pairwise(cuts):
        train = [i for i in range(lo) if truth_pos[i] >= 0]
        y = np.concatenate([(np.arange(len(rec.rows[i][1])) == truth_pos[i]).astype(int)
                            for i in train])
        group = [len(rec.rows[i][1]) for i in train]
        fold = {"events": [int(lo), int(hi)], "train_groups": len(train),
                "in_candidates": float(np.mean(truth_pos[lo:hi] >= 0)),
                "recall": _hr(recall[lo:hi], truth_pos[lo:hi]),
                "online_mlp": _hr(online[lo:hi], truth_pos[lo:hi])}
        for name, extra in (("trees", False), ("trees_extra", True)):
            x = np.concatenate([rows(i, extra) for i in train])
            booster = lgb.train(params, lgb.Dataset(x, y, group=group), num_boost_round=300)
            order = [np.argsort(-booster.predict(rows(i, extra)), kind="stable")
                     for i in range(lo, hi)]
            fold[name] = _hr(order, truth_pos[lo:hi])
        folds.append(fold)
        print(json.dumps(fold), file=sys.stderr)
    total = {k: float(np.average([f[k] for f in folds], weights=np.diff(cuts)))
             for k in ("in_candidates", "recall", "online_mlp", "trees", "trees_extra")}
    report = {"evaluated": n, "hr_ranked": hr_eval, "folds": folds, "second_half": total,
              "params": vars(args) | {"path": str(args.path), "json": str(args.json)}}
    print(json.dumps(total, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
