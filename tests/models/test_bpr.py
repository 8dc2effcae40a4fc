"""BPR: planted structure, growth, fold-in, exact state round trip, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.base import Batch
from online_models.bpr import BPR
from tests.models.planted import planted


def learn_all(model: BPR, batch: Batch, size: int = 256, epochs: int = 1) -> None:
    for _ in range(epochs):
        for chunk in batch.chunks(size):
            model.learn(chunk)


def test_learns_planted_groups() -> None:
    m = BPR(n_factors=16, learning_rate=0.1, seed=3)
    learn_all(m, planted(6000), epochs=3)
    for user, prefix in (("a1", "A"), ("b2", "B"), ("a7", "A")):
        recs = m.recommend(user, k=10)
        assert len(recs) == 10
        assert all(item.startswith(prefix) for item, _ in recs), recs


def test_folds_in_an_unknown_user_from_history() -> None:
    m = BPR(n_factors=16, learning_rate=0.1, seed=3)
    learn_all(m, planted(6000), epochs=3)
    recs = m.recommend("brand-new", k=5, history=["B1", "B2", "B3"], exclude=["B1", "B2", "B3"])
    assert len(recs) == 5
    assert all(item.startswith("B") for item, _ in recs), recs
    # With nothing to go on the scores are the learned item biases, one per item row.
    assert np.array_equal(m.score_all("nobody"), m._b[: m.items.capacity])


def test_grows_past_initial_capacity_and_handles_batch_sizes() -> None:
    m = BPR(n_factors=4, initial_capacity=2, seed=0)
    m.learn(Batch.from_columns(["u0"], ["i0"]))  # batch of 1
    users = [f"u{k}" for k in range(10_000)]
    items = [f"i{k % 3000}" for k in range(10_000)]
    m.learn(Batch.from_columns(users, items))  # batch of 10,000
    assert m.n_users == 10_000 and m.n_items == 3000
    assert len(m._U) >= 10_000 and len(m._V) >= 3000
    scores = m.score_all("u5")
    assert scores.dtype == np.float32 and scores.shape == (3000,)
    assert np.isfinite(scores).all()
    assert m.item_vectors().shape == (3000, 4)
    assert m.similar("i1", 3)[0][0] != "i1"


def test_state_round_trip_is_exact_and_training_continues_identically() -> None:
    data = planted(3000)
    m = BPR(n_factors=8, initial_capacity=4, seed=1)
    learn_all(m, data[:2000])
    state = m.get_state()
    state.check()
    r = BPR.from_state(state)
    for user in ("a1", "b3", "nobody"):
        assert np.array_equal(m.score_all(user), r.score_all(user))
        assert m.recommend(user, 5) == r.recommend(user, 5)
    learn_all(m, data[2000:])
    learn_all(r, data[2000:])
    assert np.array_equal(m.score_all("a1"), r.score_all("a1"))
    assert r.get_params() == m.get_params()


def test_a_restored_model_gives_newcomers_the_freed_rows_the_live_one_does() -> None:
    # A user's initial vector is drawn for its row: after forget_users, a restored
    # model must reuse the freed rows in the live order, else newcomers diverge.
    data = planted(3000)
    m = BPR(n_factors=8, seed=1)
    learn_all(m, data[:2000])
    m.forget_users(["a3", "b7", "a1", "b2", "a9"])
    r = BPR.from_state(m.get_state())
    newcomers = Batch.from_columns(["n1", "n2", "a1", "n3"], ["A1", "B2", "A3", "B4"],
                                   timestamps=[2000.0, 2001.0, 2002.0, 2003.0])
    for model in (m, r):
        model.learn(newcomers)
        learn_all(model, data[2000:])
    assert [r.users.get(u) for u in ("n1", "n2", "a1", "n3")] == \
        [m.users.get(u) for u in ("n1", "n2", "a1", "n3")]
    for user in ("n1", "n2", "a1", "n3", "b3"):
        assert np.array_equal(m.score_all(user), r.score_all(user))
    got, want = r.get_state().arrays, m.get_state().arrays
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("seed", [0, 7])
def test_same_seed_same_model(seed: int) -> None:
    data = planted(2000)
    a, b = BPR(seed=seed), BPR(seed=seed)
    learn_all(a, data)
    learn_all(b, data)
    assert np.array_equal(a.item_vectors(), b.item_vectors())
    c = BPR(seed=seed + 1)
    learn_all(c, data)
    assert not np.array_equal(a.item_vectors(), c.item_vectors())


def test_one_heavy_user_per_batch_stays_finite() -> None:
    # MovieLens-style batches: one user rates hundreds of items at once, with weights
    # up to 5. Summed per-row steps used to overflow that user's row to inf/NaN.
    m = BPR(n_factors=16, learning_rate=0.5, seed=0)
    rng = np.random.default_rng(0)
    for n in range(60):
        items = [f"i{k}" for k in rng.integers(0, 500, 256)]
        m.learn(Batch.from_columns([f"u{n % 3}"] * 256, items, weights=np.full(256, 5.0)))
    for user in ("u0", "u1", "nobody"):
        assert np.isfinite(m.score_all(user, history=["i1", "i2"])).all()
    assert np.linalg.norm(m._U[: m.users.capacity], axis=1).max() <= m.max_norm + 1e-5


def test_known_user_history_moves_the_query() -> None:
    m = BPR(n_factors=16, seed=3)
    learn_all(m, planted(6000), epochs=2)
    with_b = m.score_all("a1", history=["B1", "B2"])
    plain = m.score_all("a1")
    assert not np.array_equal(with_b, plain)
    rows = m.items.rows(["B3", "B4", "B5"])
    # Recent B clicks lift B items for an A user relative to its plain scores.
    assert (with_b[rows] - plain[rows]).mean() > 0
