"""SessionKNN: sessions, neighbours, position-aware votes, ring, batch boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from online_models import registry
from online_models.base import Batch
from online_models.sknn import SessionKNN
from tests.models.test_knn_models import assert_states_equal, learned, random_stream

HOUR = 3600.0


def test_neighbour_sessions_vote_for_the_item_next_to_the_shared_one() -> None:
    # Ten users browse a -> b -> c -> d; the query holds a, b: c (next to b) beats d.
    users = [f"u{u}" for u in range(10) for _ in range(4)]
    items = list("abcd") * 10
    m = SessionKNN(position_decay=0.5)
    m.learn(Batch.from_columns(users, items, None, np.arange(40.0)))
    recs = [i for i, _ in m.recommend("new", 2, history=["a", "b"], exclude=["a", "b"])]
    assert recs == ["c", "d"]


def test_items_before_the_shared_one_count_before_factor() -> None:
    # x sits right before s and y right after it in every neighbour session.
    users = [f"u{u}" for u in range(5) for _ in range(3)]
    items = ["x", "s", "y"] * 5
    batch = Batch.from_columns(users, items, None, np.arange(15.0))
    fwd = SessionKNN(before_factor=0.5)
    fwd.learn(batch)
    s = fwd.score("new", ["x", "y"], history=["s"])
    assert s[1] > s[0]
    sym = SessionKNN(before_factor=1.0)
    sym.learn(batch)
    s = sym.score("new", ["x", "y"], history=["s"])
    assert s[0] == pytest.approx(s[1], rel=1e-6)


def test_a_gap_or_a_full_session_opens_a_new_one() -> None:
    m = SessionKNN(session_gap_seconds=HOUR, max_session_items=3)
    m.learn(Batch.from_columns(["u"] * 2, ["a", "b"], None, [0.0, 60.0]))
    assert m.n_sessions == 1
    m.learn(Batch.from_columns(["u"], ["c"], None, [2 * HOUR]))  # after a gap
    assert m.n_sessions == 2
    m.learn(Batch.from_columns(["u"] * 3, ["d", "e", "f"], None, [2 * HOUR + 1] * 3))
    assert m.n_sessions == 3  # c, d, e filled the second session


def test_own_sessions_are_not_neighbours() -> None:
    m = SessionKNN()
    m.learn(Batch.from_columns(["me", "me", "other", "other"], ["a", "b", "a", "c"],
                               None, [0.0, 1.0, 2.0, 3.0]))
    scores = m.score("me", ["b", "c"], history=["a"])
    assert scores[1] > scores[0]  # only the other user's session votes (for c)


def test_the_session_ring_forgets_the_oldest_sessions() -> None:
    m = SessionKNN(max_sessions=4, session_gap_seconds=1.0)
    # Eight sessions of two users: a -> old first, then a -> new.
    rows = [(f"u{k % 2}", "a", 10.0 * k) for k in range(8)]
    rows = [r for k, (u, i, t) in enumerate(rows)
            for r in ((u, i, t), (u, "old" if k < 4 else "new", t + 0.5))]
    users, items, times = zip(*rows, strict=True)
    m.learn(Batch.from_columns(users, items, None, times))
    assert m.n_sessions == 8
    assert len(m.get_state().arrays["session.len"]) == 4
    s = m.score("query", ["old", "new"], history=["a"])
    assert s[1] > s[0] and s[0] < 1e-3  # "old" only keeps its popularity tie-break


def test_state_does_not_depend_on_batch_boundaries() -> None:
    stream = random_stream()
    ref = learned(SessionKNN(session_gap_seconds=6 * HOUR), stream, 10_000).get_state()
    for size in (1, 7, 256):
        got = learned(SessionKNN(session_gap_seconds=6 * HOUR), stream, size).get_state()
        assert_states_equal(ref, got, exact=False)


def test_state_round_trip_and_learning_continues_identically() -> None:
    stream = random_stream(1200)
    a = registry.create("sknn")
    for b in stream[:800].chunks(128):
        a.learn(b)
    b2 = registry.from_state(a.get_state())
    for user, hist in (("u1", []), ("u2", ["i1", "i2"]), ("nobody", [])):
        np.testing.assert_array_equal(a.score_all(user, hist), b2.score_all(user, hist))
    for b in stream[800:].chunks(128):
        a.learn(b)
        b2.learn(b)
    assert_states_equal(a.get_state(), b2.get_state(), exact=False)
    assert [i for i, _ in a.similar("i1", 5)] == [i for i, _ in b2.similar("i1", 5)]


def test_idf_prefers_neighbours_that_share_a_rare_item() -> None:
    # Nine sessions hold the common c (then x), one holds the rare r (then y).
    rows = [(f"u{u}", it) for u in range(9) for it in ("c", "x")] + [("v", "r"), ("v", "y")]
    users, items = zip(*rows, strict=True)
    batch = Batch.from_columns(users, items, None, np.arange(len(rows), dtype=float))
    for idf_power, best in ((0.0, "x"), (2.0, "y")):
        m = SessionKNN(n_neighbours=1, idf_power=idf_power, length_power=0.0)
        m.learn(batch)
        recs = m.recommend("new", 1, history=["r", "c"], exclude=["r", "c"])
        assert recs[0][0] == best, idf_power
