"""Ranking pieces: exclusion-aware top-k and the approximate factor index."""

from __future__ import annotations

import numpy as np

from online_models.base import top_k
from online_models.snapshot import Snapshot
from serving.live import LiveContext
from serving.ranking import FactorIndex, LoadedSnapshot, top_k_excluding
from serving.synthetic_state import random_bpr, random_history, random_popularity


def test_top_k_excluding_matches_masked_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.standard_normal(500).astype(np.float32)
        scores[rng.integers(0, 500, 20)] = -np.inf
        exclude = rng.choice(500, size=30, replace=False)
        k = int(rng.integers(1, 60))
        masked = scores.copy()
        masked[exclude] = -np.inf
        before = scores.copy()
        got = top_k_excluding(scores, k, exclude)
        assert got.tolist() == top_k(masked, k).tolist()
        assert np.array_equal(scores, before)  # the model's buffer is never written


def test_factor_index_recall_against_brute_force() -> None:
    model = random_bpr(n_users=200, n_items=5000, dim=16, seed=1)
    index = FactorIndex(model)
    hits = 0
    for u in range(100):
        user = f"u{u}"
        truth = set(top_k(model.score_all(user), 10).tolist())
        q = model._query_vector(user, ())
        assert q is not None
        rows, scores = index.query(q, 10)
        hits += len(truth & set(rows.tolist()))
        exact = model.score_all(user)[rows]
        assert np.allclose(scores, exact, atol=1e-4)  # ANN scores are the model's scores
    assert hits / 1000 >= 0.95


def test_loaded_snapshot_with_ann_serves_the_same_top_items() -> None:
    bpr = random_bpr(n_users=100, n_items=3000, dim=16, seed=2)
    history = random_history(100, 3000, per_user=5, seed=2)
    snap = Snapshot(
        version=1,
        path=None,  # type: ignore[arg-type]
        manifest={"watermark": 1.0, "created_at": "2024-01-01T00:00:00+00:00"},
        models={"bpr": bpr, "popularity": random_popularity(3000, 5000)},
        history=history,
    )
    exact = LoadedSnapshot(snap, "bpr")
    approx = LoadedSnapshot(snap, "bpr", ann=True)
    live = LiveContext()
    overlap = 0
    for u in range(50):
        a = exact.recommend(f"u{u}", 10, live=live).items
        b = approx.recommend(f"u{u}", 10, live=live).items
        assert not {i for i, _ in b} & set(history.get(f"u{u}"))
        overlap += len({i for i, _ in a} & {i for i, _ in b})
    assert overlap / 500 >= 0.95
