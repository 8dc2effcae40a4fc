"""Ranking pieces: exclusion-aware top-k, the exact factor scorer and the ANN index."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from online_models.base import top_k
from online_models.bpr import BPR
from online_models.snapshot import Snapshot
from serving.live import LiveContext
from serving.ranking import FactorIndex, FactorScorer, LoadedSnapshot, top_k_excluding
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
    scorer = FactorScorer.probe(model)
    assert scorer is not None
    index = FactorIndex(scorer)
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


def _snapshot(n_items: int = 3000, seed: int = 2) -> Snapshot:
    return Snapshot(
        version=1,
        path=None,  # type: ignore[arg-type]
        manifest={"watermark": 1.0, "created_at": "2024-01-01T00:00:00+00:00"},
        models={
            "bpr": random_bpr(n_users=100, n_items=n_items, dim=16, seed=seed),
            "popularity": random_popularity(n_items, 5000),
        },
        history=random_history(100, n_items, per_user=5, seed=seed),
    )


def test_factor_scorer_equals_score_all_then_exclusion() -> None:
    model = random_bpr(n_users=50, n_items=2000, dim=8, seed=3)
    scorer = FactorScorer.probe(model)
    assert scorer is not None
    rng = np.random.default_rng(3)
    for u in range(50):
        user = f"u{u}" if u % 5 else f"cold-{u}"  # cold users fold in their history
        history = [f"i{r}" for r in rng.integers(0, 2000, 7)] if u % 3 else []
        exclude = model.items.rows(history)
        k = int(rng.integers(1, 40))
        want = top_k_excluding(model.score_all(user, history), k, exclude)
        rows, scores = scorer.top_k(scorer.query(user, history), k, exclude)
        assert rows.tolist() == want.tolist()
        assert np.allclose(scores, model.score_all(user, history)[want], atol=1e-5)


def test_factor_scorer_refuses_models_it_would_mis_score() -> None:
    class Reranked(BPR):
        def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
            return super().score_all(user, history) * 2.0 + 1.0

    model = random_bpr(n_users=20, n_items=300, dim=8)
    model.__class__ = Reranked
    assert FactorScorer.probe(model) is None
    assert FactorScorer.probe(random_popularity(300, 1000)) is None


def test_factor_scorer_buffers_are_per_thread() -> None:
    model = random_bpr(n_users=64, n_items=5000, dim=16, seed=4)
    scorer = FactorScorer.probe(model)
    assert scorer is not None
    users = [f"u{u}" for u in range(64)] * 4
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda u: scorer.top_k(scorer.query(u, ()), 10, np.zeros(0, int))[0],
                            users))
    for user, rows in zip(users, got, strict=True):
        assert rows.tolist() == top_k(model.score_all(user), 10).tolist()


def test_ann_only_from_the_catalogue_threshold() -> None:
    snap = _snapshot(n_items=3000)
    assert set(LoadedSnapshot(snap, "bpr", ann=True, ann_min_items=3000).ann) == {"bpr"}
    assert not LoadedSnapshot(snap, "bpr", ann=True, ann_min_items=3001).ann
    assert set(LoadedSnapshot(snap, "bpr").scorers) == {"bpr"}


def test_loaded_snapshot_with_ann_serves_the_same_top_items() -> None:
    snap = _snapshot()
    history = snap.history
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


def test_ann_index_is_reused_across_swaps_and_rescored_with_new_factors() -> None:
    old = LoadedSnapshot(_snapshot(seed=2), "bpr", ann=True, ann_min_items=0)
    # A new snapshot with different factors (and the same item rows): the swap keeps
    # the old index for candidates, but scores come from the new model only.
    new_snap = _snapshot(seed=5)
    new = LoadedSnapshot(new_snap, "bpr", ann=True, ann_min_items=0, previous=old)
    assert new.ann["bpr"] is old.ann["bpr"]
    model = new_snap.models["bpr"]
    live = LiveContext()
    for u in range(20):
        user = f"u{u}"
        got = new.recommend(user, 5, live=live).items
        assert len(got) == 5
        scores = model.score_all(user, new.history(user, live))
        for item, score in got:
            assert np.isclose(score, scores[model.items.get(item)], atol=1e-5)
    new.rebuild_indexes()
    assert new.ann["bpr"] is not old.ann["bpr"]


def test_default_model_is_the_re_ranker_where_the_snapshot_has_one() -> None:
    """`ranked` answers requests that name no model when a trainer learned it; the
    default trainer does not, and then the hybrid does (then the next fallback)."""
    from online_models import registry
    from serving.settings import ServeSettings

    s = ServeSettings(snapshots="/tmp/unused")
    snap = _snapshot(200)
    base = dict(snap.models)
    cases = [({"hybrid": registry.create("hybrid"), "ranked": registry.create("ranked")},
              "ranked"), ({"hybrid": registry.create("hybrid")}, "hybrid"), ({}, "bpr")]
    for extra, want in cases:
        snap.models = {**base, **extra}
        loaded = LoadedSnapshot(snap, s.default_model, s.model_fallbacks)
        assert loaded.default_model == want


def test_models_that_are_not_factor_models_score_one_request_at_a_time() -> None:
    """Rank threads take turns in ``score_all`` (``PYTHON_SCORING``): scoring that is
    many small steps under the interpreter lock only loses to threads running it at
    once. The answers are those of the same requests one after another."""
    import threading
    import time

    from online_models.popularity import Popularity

    class Watched(Popularity):
        in_flight = 0
        most = 0
        guard = threading.Lock()

        def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
            with Watched.guard:
                Watched.in_flight += 1
                Watched.most = max(Watched.most, Watched.in_flight)
            time.sleep(0.002)  # lets another thread in, were it not for the lock
            try:
                return super().score_all(user, history)
            finally:
                with Watched.guard:
                    Watched.in_flight -= 1

    snap = _snapshot(500)
    pop = snap.models["popularity"]
    watched = Watched.from_state(pop.get_state())
    snap.models = {**snap.models, "watched": watched}
    loaded = LoadedSnapshot(snap, "watched")
    users = [f"u{i}" for i in range(40)]
    alone = [loaded.recommend(u, 5, "watched").items for u in users]
    assert Watched.most == 1
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda u: loaded.recommend(u, 5, "watched").items, users))
    assert together == alone
    assert Watched.most == 1
    assert all(len(items) == 5 for items in alone)
