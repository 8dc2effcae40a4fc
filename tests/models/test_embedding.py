"""EmbeddingModel: planted structure, growth, admission, expiry, click model, state."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.base import Batch
from online_models.embedding import EmbeddingModel
from tests.models.planted import planted


def learn_all(model: EmbeddingModel, batch: Batch, size: int = 128) -> None:
    for chunk in batch.chunks(size):
        model.learn(chunk)


@pytest.fixture(scope="module")
def trained() -> EmbeddingModel:
    m = EmbeddingModel(dim=16, n_negatives=16, reranker=True, rerank_top=10, seed=0)
    learn_all(m, planted(8000))
    return m


def test_learns_planted_groups(trained: EmbeddingModel) -> None:
    for user, prefix in (("a1", "A"), ("b2", "B")):
        recs = trained.recommend(user, k=10)
        assert len(recs) == 10
        assert all(item.startswith(prefix) for item, _ in recs), recs


def test_retrieval_alone_learns_planted_groups() -> None:
    m = EmbeddingModel(dim=16, n_negatives=16, seed=1)
    learn_all(m, planted(8000))
    recs = m.recommend("b5", k=10)
    assert len(recs) == 10
    assert all(item.startswith("B") for item, _ in recs), recs


def test_folds_in_an_unknown_user_and_falls_back_to_popularity(
    trained: EmbeddingModel,
) -> None:
    recs = trained.recommend("new", 5, history=["A1", "A2"], exclude=["A1", "A2"])
    assert len(recs) == 5
    assert all(item.startswith("A") for item, _ in recs), recs
    pop = trained.score_all("nobody")
    assert np.allclose(pop, np.log1p(trained._it.count[: trained.items.capacity]))


def test_click_model_separates_in_group_from_cross_group(trained: EmbeddingModel) -> None:
    a_items = [f"A{k}" for k in range(15)]
    b_items = [f"B{k}" for k in range(15)]
    p_in = trained.click_proba("a3", a_items)
    p_out = trained.click_proba("a3", b_items)
    assert ((p_in >= 0) & (p_in <= 1)).all()
    assert p_in.mean() > p_out.mean() + 0.2
    assert trained.click_proba("a3", ["never-seen"]).tolist() == [0.0]


def test_grows_past_initial_capacity_and_handles_batch_sizes() -> None:
    m = EmbeddingModel(dim=8, initial_capacity=2, seed=0)
    m.learn(Batch.from_columns(["u0"], ["i0"]))  # batch of 1
    users = [f"u{k}" for k in range(10_000)]
    items = [f"i{k % 3000}" for k in range(10_000)]
    m.learn(Batch.from_columns(users, items))  # batch of 10,000
    assert m.n_users == 10_000 and m.n_items == 3000
    assert len(m._ut) >= 10_000 and len(m._it) >= 3000
    assert m._ut.alive[:10_000].all()
    scores = m.score_all("u5")
    assert scores.dtype == np.float32 and scores.shape == (3000,)
    assert np.isfinite(scores).all()
    assert m.item_vectors().shape == (3000, 8)


def test_admission_threshold() -> None:
    m = EmbeddingModel(dim=4, admission_threshold=3, seed=0)
    m.learn(Batch.from_columns(["u", "u"], ["x", "x"], timestamps=[0, 1]))
    assert m.n_users == 0 and m.n_items == 0
    assert m.score_all("u").shape == (0,)
    m.learn(Batch.from_columns(["u", "v"], ["x", "y"], timestamps=[2, 3]))
    assert "u" in m.users and "x" in m.items
    assert "v" not in m.users and "y" not in m.items
    # The admitting event gives the user a live row (and, scored, a finite answer).
    assert m._ut.alive[m.users.get("u")]
    assert np.isfinite(m.score_all("u")).all() and m.score_all("u").shape == (1,)


def test_expiry_frees_zeroes_and_reuses_rows() -> None:
    m = EmbeddingModel(dim=4, expiry_seconds=100.0, seed=0)
    m.learn(Batch.from_columns(["u1", "u2"], ["old", "keep"], timestamps=[0.0, 50.0]))
    old_row = m.items.get("old")
    m.learn(Batch.from_columns(["u2"], ["keep"], timestamps=[120.0]))
    assert "old" not in m.items and "u1" not in m.users
    assert "keep" in m.items
    assert not m._it.weight[old_row].any() and float(m._it.acc[old_row]) == 0.0
    scores = m.score_all("u2")
    assert scores[old_row] == -np.inf
    assert "old" not in [i for i, _ in m.recommend("u2", 10)]
    m.learn(Batch.from_columns(["u3"], ["fresh"], timestamps=[130.0]))
    assert m.items.get("fresh") == old_row  # the freed row is reused
    assert m._it.weight[old_row].any()  # and re-initialised on admission


def test_state_round_trip_is_exact_and_training_continues_identically() -> None:
    data = planted(3000)
    m = EmbeddingModel(
        dim=8,
        reranker=True,
        admission_threshold=2,
        expiry_seconds=2000.0,
        seed=2,
        initial_capacity=4,
    )
    learn_all(m, data[:2000])
    state = m.get_state()
    state.check()
    r = EmbeddingModel.from_state(state)
    for user in ("a1", "b3", "nobody"):
        assert np.array_equal(m.score_all(user), r.score_all(user))
        assert m.recommend(user, 5) == r.recommend(user, 5)
    learn_all(m, data[2000:])
    learn_all(r, data[2000:])
    assert np.array_equal(m.score_all("a1"), r.score_all("a1"))
    assert np.array_equal(m.click_proba("b1", ["B1", "A1"]), r.click_proba("b1", ["B1", "A1"]))


def test_a_restored_model_reuses_freed_rows_in_the_live_order() -> None:
    # Expiry frees item and user rows; forget_users frees more user rows. New ids get
    # rows (and row-drawn initial vectors) in the order they were freed: a model
    # restored in between must give them the rows the live one does.
    data = planted(3000)
    m = EmbeddingModel(dim=8, expiry_seconds=300.0, seed=2)
    learn_all(m, data[:1500])
    m.learn(Batch.from_columns(["late"] * 4, ["X1", "X2", "X3", "X4"],
                               timestamps=[1900.0, 1901.0, 1902.0, 1903.0]))  # expires most
    m.forget_users(["late"])
    assert m.items.capacity > len(m.items) and m.users.capacity > len(m.users)
    r = EmbeddingModel.from_state(m.get_state())
    for model in (m, r):
        learn_all(model, data[1500:])
    assert r.items.ids == m.items.ids and r.users.ids == m.users.ids
    for user in ("a1", "b3", "a7"):
        assert np.array_equal(m.score_all(user), r.score_all(user))
    got, want = r.get_state().arrays, m.get_state().arrays
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_same_seed_same_model() -> None:
    data = planted(1500)
    a, b = EmbeddingModel(dim=8, seed=4), EmbeddingModel(dim=8, seed=4)
    learn_all(a, data)
    learn_all(b, data)
    assert np.array_equal(a.item_vectors(), b.item_vectors())
