"""UserKNN: planted structure, bounded indexes, event-time decay, state round trip."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.base import Batch
from online_models.userknn import UserKNN
from tests.models.planted import planted


def test_learns_planted_groups() -> None:
    m = UserKNN(n_neighbours=5, max_user_items=5)
    for chunk in planted(2000).chunks(256):
        m.learn(chunk)
    for user, prefix in (("a1", "A"), ("b2", "B")):
        seen = [i for i, _ in m._user_items[m.users.get(user)].items()]
        recs = m.recommend(user, k=5, exclude=[m.items.ids[i] for i in seen])
        assert len(recs) == 5
        assert all(item.startswith(prefix) for item, _ in recs), recs
    assert all(i.startswith("A") for i, _ in m.similar("A3", 5))


def test_unknown_user_with_history_and_without() -> None:
    m = UserKNN()
    for chunk in planted(1000).chunks(100):
        m.learn(chunk)
    recs = m.recommend("new", 5, history=["B1", "B2"], exclude=["B1", "B2"])
    assert recs and all(item.startswith("B") for item, _ in recs)
    fallback = m.score_all("nobody")
    assert fallback.shape == (m.items.capacity,) and (fallback > 0).all()


def test_indexes_stay_bounded() -> None:
    m = UserKNN(max_users_per_item=3, max_user_items=4)
    users = [f"u{k}" for k in range(10_000)]
    items = [f"i{k % 7}" for k in range(10_000)]
    m.learn(Batch.from_columns(users, items, timestamps=np.arange(10_000.0)))  # 10,000
    m.learn(Batch.from_columns(["u1"] * 9, [f"j{k}" for k in range(9)], timestamps=[1e4] * 9))
    assert max(len(v) for v in m._item_users.values()) <= 3
    assert max(len(v) for v in m._user_items.values()) <= 4
    assert len(m._user_items[m.users.get("u1")]) == 4
    # The most recent users are the ones kept.
    kept = {m.users.get(f"u{k}") for k in (9996, 9989, 9982)}
    assert set(m._item_users[m.items.get("i0")]) == kept


def test_decay_in_event_time_favours_recent_neighbours() -> None:
    day = 86_400.0
    m = UserKNN(half_life_seconds=day)
    # "old" and "new" both share item x with the query user; old did so 10 days earlier.
    m.learn(Batch.from_columns(["old", "old"], ["x", "from_old"], timestamps=[0.0, 0.0]))
    m.learn(Batch.from_columns(["new", "new"], ["x", "from_new"], timestamps=[10 * day] * 2))
    m.learn(Batch.from_columns(["q"], ["x"], timestamps=[10 * day]))
    s = m.score("q", ["from_new", "from_old"])
    assert s[0] > 100 * s[1] > 0
    # Popularity decays too: "from_old" is 10 half-lives old.
    pop = m._pop
    assert pop[m.items.get("from_old")] < 1e-2 < pop[m.items.get("from_new")]


def _entry(m: UserKNN, user: str, item: str) -> complex:
    """The stored ``time + 1j * weight`` of ``user``'s ``item``."""
    return m._user_items[m.users.get(user)][m.items.get(item)]


def test_a_late_duplicate_adds_its_weight_decayed() -> None:
    day, t = 86_400.0, 1.0e7
    m = UserKNN(half_life_seconds=7 * day)
    m.learn(Batch.from_columns(["a", "b"], ["x", "x"], timestamps=[t, t]))
    m.learn(Batch.from_columns(["a"], ["x"], timestamps=[t - 30 * day]))  # 30 days late
    e = _entry(m, "a", "x")
    assert e.real == t
    assert e.imag == pytest.approx(1.0 + 2.0 ** (-30 / 7))
    # The same two events in time order store the same entry.
    inorder = UserKNN(half_life_seconds=7 * day)
    inorder.learn(Batch.from_columns(["a"], ["x"], timestamps=[t - 30 * day]))
    inorder.learn(Batch.from_columns(["a"], ["x"], timestamps=[t]))
    assert _entry(inorder, "a", "x") == pytest.approx(e)


def test_an_event_decades_late_is_applied_without_overflow() -> None:
    m = UserKNN()  # a week's half-life
    m.learn(Batch.from_columns(["a"], ["x"], timestamps=[1.7e9]))
    # 40 years late (within the 50 the stream accepts), then an ordinary event.
    m.learn(Batch.from_columns(["a", "c"], ["x", "z"], timestamps=[1.7e9 - 40 * 365 * 86_400.0,
                                                                      1.7e9]))
    assert _entry(m, "a", "x") == complex(1.7e9, 1.0)  # its weight decayed to nothing
    assert _entry(m, "c", "z") == complex(1.7e9, 1.0)  # the rest of the batch applied
    assert np.isfinite(m.score_all("a")).all()


def test_decay_does_not_depend_on_batch_boundaries() -> None:
    data = planted(600)
    one, many = UserKNN(half_life_seconds=50.0), UserKNN(half_life_seconds=50.0)
    one.learn(data)
    for chunk in data.chunks(7):
        many.learn(chunk)
    assert np.allclose(one.score_all("a3"), many.score_all("a3"), rtol=1e-5)


def test_state_round_trip_is_exact() -> None:
    data = planted(1500)
    m = UserKNN(half_life_seconds=300.0)
    m.learn(data[:1000])
    state = m.get_state()
    state.check()
    r = UserKNN.from_state(state)
    for user in ("a1", "b3", "nobody"):
        assert np.array_equal(m.score_all(user), r.score_all(user))
        assert m.recommend(user, 5) == r.recommend(user, 5)
    m.learn(data[1000:])
    r.learn(data[1000:])
    assert np.array_equal(m.score_all("b1"), r.score_all("b1"))


def test_state_between_snapshots_equals_a_fresh_flatten() -> None:
    """get_state reuses the last flattening for untouched rows: after learning
    (evictions included) and forgetting users, its arrays equal a fresh model's
    first get_state on the same tables, and the restored model answers alike."""
    rng = np.random.default_rng(11)
    m = UserKNN(max_users_per_item=3, max_user_items=4, half_life_seconds=50.0)
    t = 0.0
    for step in range(30):
        n = 40
        users = [f"u{x}" for x in rng.integers(0, 60, n)]
        items = [f"i{x}" for x in rng.integers(0, 25, n)]
        m.learn(Batch.from_columns(users, items, timestamps=t + np.arange(n, dtype=float)))
        t += n
        if step % 7 == 3:
            m.forget_users([f"u{x}" for x in rng.integers(0, 60, 5)])
        if step % 3 == 0:
            state = m.get_state()
            fresh = UserKNN.from_state(state)
            fresh._user_items, fresh._item_users = m._user_items, m._item_users
            expected = fresh.get_state()  # no earlier flattening to reuse
            assert state.arrays.keys() == expected.arrays.keys()
            for key, value in expected.arrays.items():
                assert np.array_equal(state.arrays[key], value), key
            restored = UserKNN.from_state(state)
            for user in ("u1", "u7", "nobody"):
                assert np.array_equal(m.score_all(user), restored.score_all(user))
