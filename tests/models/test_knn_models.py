"""Popularity, ItemKNN, SequenceModel and Hybrid: behaviour, state, batch independence."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from online_models import registry
from online_models.base import Batch, ModelState, OnlineModel
from online_models.hybrid import Hybrid
from online_models.itemknn import ItemKNN, _PairStore
from online_models.popularity import Popularity
from online_models.sequence import SequenceModel

DAY = 86_400.0


def random_stream(n: int = 3000, seed: int = 0, span: float = 60 * DAY) -> Batch:
    rng = np.random.default_rng(seed)
    users = [f"u{x}" for x in rng.integers(0, 80, n)]
    items = [f"i{x}" for x in rng.zipf(1.4, n) % 300]
    t = np.sort(rng.uniform(0, span, n))
    w = rng.choice([1.0, 2.0, 5.0], n)
    return Batch.from_columns(users, items, w, t)


def learned(model: OnlineModel, stream: Batch, size: int) -> OnlineModel:
    for b in stream.chunks(size):
        model.learn(b)
    return model


def assert_states_equal(a: ModelState, b: ModelState, exact: bool = True) -> None:
    assert a.meta["params"] == b.meta["params"]
    assert set(a.arrays) == set(b.arrays)
    for name in a.arrays:
        x, y = a.arrays[name], b.arrays[name]
        assert x.shape == y.shape, name
        if exact or x.dtype.kind in "iu":
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-300, err_msg=name)


# ------------------------------------------------------------------ popularity


def test_popularity_halves_after_one_half_life() -> None:
    m = Popularity(half_life_seconds=DAY)
    m.learn(Batch.from_columns(["u"], ["a"], [4.0], [0.0]))
    assert m.popularity("a") == pytest.approx(4.0)
    m.learn(Batch.from_columns(["v"], ["b"], [1.0], [DAY]))
    assert m.popularity("a") == pytest.approx(2.0)
    m.learn(Batch.from_columns(["v"], ["b"], [1.0], [3 * DAY]))
    assert m.popularity("a") == pytest.approx(0.5)
    assert m.popularity("b") == pytest.approx(1.0 + 0.25)


def test_popularity_survives_many_half_lives_and_ranks_recent_items() -> None:
    m = Popularity(half_life_seconds=1.0)
    # 2000 half-lives: forward-decayed mass would overflow without rescaling.
    m.learn(Batch.from_columns(["u"] * 3, ["old", "old", "old"], None, [0, 0, 0]))
    m.learn(Batch.from_columns(["u"], ["new"], None, [2000.0]))
    assert np.isfinite(m.score_all("u")).all()
    assert [i for i, _ in m.recommend("anyone", 2)] == ["new", "old"]
    assert m.popularity("new") == pytest.approx(1.0)


# ------------------------------------------------------------------ batch boundaries


@pytest.mark.parametrize(
    "make",
    [
        lambda: Popularity(half_life_seconds=DAY),
        lambda: ItemKNN(window=5, half_life_seconds=7 * DAY, gap_half_life_seconds=DAY),
        lambda: SequenceModel(half_life_seconds=0.05 * DAY),  # forces rescaling
    ],
    ids=["popularity", "itemknn", "sequence"],
)
def test_state_does_not_depend_on_batch_boundaries(make: Callable[[], OnlineModel]) -> None:
    stream = random_stream()
    ref = learned(make(), stream, 10_000).get_state()
    for size in (1, 7, 256):
        assert_states_equal(ref, learned(make(), stream, size).get_state(), exact=False)


# ------------------------------------------------------------------ half-life changes
# Drift adaptation sets a shorter half-life on an alarm and restores it later. The
# forward-decayed models keep mass relative to a landmark that may lie many half-lives
# behind the watermark: a change must not re-decay that stretch under the new value.

FORWARD_DECAYED = pytest.mark.parametrize(
    "make",
    [
        lambda: Popularity(half_life_seconds=DAY),
        lambda: ItemKNN(window=5, half_life_seconds=DAY, gap_half_life_seconds=DAY),
        lambda: SequenceModel(half_life_seconds=DAY),
    ],
    ids=["popularity", "itemknn", "sequence"],
)


def _scores(m: OnlineModel) -> list[np.ndarray]:
    return [m.score_all(u, h) for u, h in (("u1", []), ("u2", ["i1", "i2"]), ("nobody", []))]


@FORWARD_DECAYED
def test_a_half_life_change_leaves_the_state_at_the_watermark(
    make: Callable[[], OnlineModel],
) -> None:
    m = learned(make(), random_stream(), 256)  # landmark ~60 half-lives back
    before, scores = m.get_state(), _scores(m)
    m.set_param("half_life_seconds", DAY / 4)
    after = m.get_state()
    after.meta["params"]["half_life_seconds"] = DAY
    assert_states_equal(before, after, exact=False)
    for x, y in zip(scores, _scores(m), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)


@FORWARD_DECAYED
def test_a_model_restored_before_a_half_life_change_stays_in_step(
    make: Callable[[], OnlineModel],
) -> None:
    stream = random_stream()
    live = learned(make(), stream[:2000], 256)
    restored = registry.from_state(live.get_state())
    for m in (live, restored):
        m.set_param("half_life_seconds", DAY / 4)
        learned(m, stream[2000:2500], 256)
        m.set_param("half_life_seconds", DAY)  # the adaptation ends
        learned(m, stream[2500:], 256)
    assert_states_equal(live.get_state(), restored.get_state(), exact=False)
    for x, y in zip(_scores(live), _scores(restored), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)


def test_popularity_decays_by_the_new_half_life_from_the_change_on() -> None:
    m = Popularity(half_life_seconds=DAY)
    m.learn(Batch.from_columns(["u"], ["old"], [1.0], [0.0]))
    m.learn(Batch.from_columns(["u"], ["new"], [1.0], [10 * DAY]))  # 10 half-lives on
    assert m.popularity("old") == pytest.approx(2.0**-10)
    m.set_param("half_life_seconds", DAY / 2)
    assert m.popularity("old") == pytest.approx(2.0**-10)
    m.learn(Batch.from_columns(["u"], ["new"], [1.0], [11 * DAY]))  # Δ = 1 day = 2 new ones
    assert m.popularity("old") == pytest.approx(2.0**-12)
    assert m.popularity("new") == pytest.approx(1.0 + 2.0**-2)


def test_itemknn_counts_decay_by_the_new_half_life_from_the_change_on() -> None:
    m = ItemKNN(half_life_seconds=DAY)
    m.learn(Batch.from_columns(["a", "a"], ["x", "y"], None, [0.0, 0.0]))
    m.learn(Batch.from_columns(["b"], ["z"], None, [10 * DAY]))
    m.set_param("half_life_seconds", DAY / 2)
    m.learn(Batch.from_columns(["b"], ["z"], None, [11 * DAY]))
    state = m.get_state()
    counts = dict(zip(m.items.ids, state.arrays["counts"].tolist(), strict=False))
    assert counts["x"] == pytest.approx(2.0**-12)
    assert counts["z"] == pytest.approx(1.0 + 2.0**-2)
    np.testing.assert_allclose(state.arrays["pairs.values"], 2.0**-12)  # x-y both ways


@pytest.mark.parametrize("cls", [Popularity, ItemKNN])
def test_a_half_life_set_on_an_undecayed_model_decays_from_the_watermark(
    cls: type[Popularity] | type[ItemKNN],
) -> None:
    empty = cls(half_life_seconds=None)
    empty.set_param("half_life_seconds", DAY)  # before any event: nothing to move
    assert empty.get_state().meta["watermark"] is None
    m = cls(half_life_seconds=None)
    m.learn(Batch.from_columns(["u", "u", "u"], ["a", "a", "a"], None, [0.0, 0.0, 0.0]))
    m.learn(Batch.from_columns(["v"], ["b"], None, [10 * DAY]))
    m.set_param("half_life_seconds", DAY)  # plain counts, now at the watermark
    m.learn(Batch.from_columns(["v"], ["b"], None, [11 * DAY]))
    mass = m.get_state().arrays["mass" if cls is Popularity else "counts"]
    counts = dict(zip(m.items.ids, mass.tolist(), strict=False))
    assert counts["a"] == pytest.approx(1.5)
    assert counts["b"] == pytest.approx(1.5)


# ------------------------------------------------------------------ item-kNN


def planted_pairs() -> Batch:
    rows = []
    for u in range(20):
        rows += [(f"u{u}", "x"), (f"u{u}", "y"), (f"u{u}", f"noise{u}")]
    for u in range(20, 30):
        rows += [(f"u{u}", "p"), (f"u{u}", "q")]
    users, items = zip(*rows, strict=True)
    return Batch.from_columns(users, items, None, np.arange(len(rows), dtype=float))


def test_itemknn_similar_items() -> None:
    m = ItemKNN(window=2, half_life_seconds=None)
    m.learn(planted_pairs())
    assert m.similar("x", 1)[0][0] == "y"
    assert m.similar("p", 1)[0][0] == "q"
    assert "x" not in [i for i, _ in m.similar("x", 50)]
    assert m.similar("unknown") == []


def test_itemknn_recommends_from_history_and_own_window() -> None:
    m = ItemKNN(window=2, half_life_seconds=None)
    m.learn(planted_pairs())
    assert m.recommend("newcomer", 1, history=["p"], exclude=["p"])[0][0] == "q"
    # Without a history, the user's own recent window is the query: u25 saw p, q.
    m.learn(Batch.from_columns(["u25"], ["x"], None, [1000.0]))
    assert m.recommend("u25", 1, exclude=["p", "q", "x"])[0][0] == "y"


def test_itemknn_unknown_user_and_items_do_not_raise() -> None:
    m = ItemKNN()
    assert len(m.score_all("nobody")) == 0
    m.learn(planted_pairs())
    s = m.score_all("nobody", history=["never-seen"])
    assert s.shape == (m.items.capacity,)
    assert np.isfinite(s).all()


def test_itemknn_recent_cooccurrence_outweighs_decayed() -> None:
    m = ItemKNN(window=1, half_life_seconds=DAY, popularity_tiebreak=0.0)
    old = Batch.from_columns([f"o{u}" for u in range(10) for _ in (0, 1)],
                             ["a", "old"] * 10, None, np.zeros(20))
    new = Batch.from_columns([f"n{u}" for u in range(5) for _ in (0, 1)],
                             ["a", "new"] * 5, None, np.full(10, 10 * DAY))
    m.learn(old)
    m.learn(new)
    assert m.similar("a", 1)[0][0] == "new"


def test_itemknn_storage_is_sparse() -> None:
    m = learned(ItemKNN(window=3), random_stream(2000), 256)
    assert isinstance(m, ItemKNN)
    # Never anywhere near items x items.
    assert m.n_pairs <= 2 * 3 * 2000
    assert m.get_state().arrays["pairs.keys"].dtype == np.int64


# ------------------------------------------------------------------ sequence


def test_sequence_predicts_next_item_of_a_planted_chain() -> None:
    rng = np.random.default_rng(1)
    chain = ["c0", "c1", "c2", "c3", "c4"]
    rows = []
    for u in range(40):
        rows += [(f"u{u}", f"rand{x}") for x in rng.integers(0, 50, 3)]
        rows += [(f"u{u}", c) for c in chain]
    users, items = zip(*rows, strict=True)
    m = SequenceModel()
    m.learn(Batch.from_columns(users, items, None, np.arange(len(rows), dtype=float)))
    for k in range(1, 4):
        hist = ["rand1", *chain[:k]]
        assert m.recommend("fresh", 1, history=hist, exclude=hist)[0][0] == chain[k]


# ------------------------------------------------------------------ hybrid


def test_hybrid_falls_back_to_popularity_for_unknown_users() -> None:
    stream = random_stream(1500)
    h = learned(Hybrid(), stream, 256)
    assert isinstance(h, Hybrid)
    pop = h.models["popularity"]
    assert [i for i, _ in h.recommend("stranger", 10)] == [
        i for i, _ in pop.recommend("stranger", 10)
    ]


def test_hybrid_tunes_weights_towards_the_accurate_component() -> None:
    # Long deterministic chains: the next item is fully predictable from the last.
    rows = []
    for u in range(60):
        start = u % 7
        rows += [(f"u{u}", f"s{(start + j) % 40}") for j in range(25)]
    users, items = zip(*rows, strict=True)
    stream = Batch.from_columns(users, items, None, np.arange(len(rows), dtype=float))
    h = learned(Hybrid(["popularity", "itemknn", "sequence"], tune_sample=64, tune_decay=0.99),
                stream, 100)
    assert isinstance(h, Hybrid)
    w = h.weights
    assert w["sequence"] > w["popularity"]
    assert sum(w.values()) == pytest.approx(1.0)


def test_hybrid_can_hold_two_instances_of_one_model() -> None:
    h = Hybrid(["popularity", "itemknn", "itemknn@short"],
               component_params={"itemknn@short": {"window": 2}}, tune_sample=8)
    stream = random_stream(800)
    learned(h, stream, 128)
    assert h.models["itemknn@short"].get_params()["window"] == 2
    assert h.models["itemknn"].get_params()["window"] != 2
    back = registry.from_state(h.get_state())
    np.testing.assert_array_equal(back.score_all("u1"), h.score_all("u1"))


def test_hybrid_rejects_missing_fallback_and_unknown_components() -> None:
    with pytest.raises(ValueError, match="popularity"):
        Hybrid(components=["itemknn"])
    with pytest.raises(ValueError, match="unknown model"):
        Hybrid(components=["popularity", "no-such-model"])


# ------------------------------------------------------------------ state round trip


@pytest.mark.parametrize("name", ["popularity", "itemknn", "sequence", "hybrid"])
def test_state_round_trip_is_exact_and_learning_continues_identically(name: str) -> None:
    stream = random_stream(1200)
    a = registry.create(name)
    for b in stream[:800].chunks(128):
        a.learn(b)
    state = a.get_state()
    state.check()
    b2 = registry.from_state(state)
    assert type(b2) is type(a)
    assert_states_equal(state, b2.get_state())
    for user, hist in (("u1", []), ("u2", ["i1", "i2"]), ("nobody", [])):
        np.testing.assert_array_equal(a.score_all(user, hist), b2.score_all(user, hist))
    for b in stream[800:].chunks(128):
        a.learn(b)
        b2.learn(b)
    # Equal up to float rounding: the restored model's decay landmark differs.
    assert_states_equal(a.get_state(), b2.get_state(), exact=False)
    sa, sb = a.similar("i1", 5), b2.similar("i1", 5)
    assert [i for i, _ in sa] == [i for i, _ in sb]
    np.testing.assert_allclose([s for _, s in sa], [s for _, s in sb], rtol=1e-9)


@pytest.mark.parametrize("name", ["popularity", "itemknn", "sequence", "hybrid"])
def test_single_event_and_large_batches(name: str) -> None:
    m = registry.create(name)
    m.learn(Batch.from_columns(["solo"], ["only"], None, [5.0]))
    assert m.recommend("solo", 5, exclude=["only"]) == []
    m.learn(random_stream(10_000, seed=3))
    assert m.n_items > 100
    recs = m.recommend("u3", 10)
    assert len(recs) == 10
    assert len({i for i, _ in recs}) == 10
    assert m.get_params() == m.clone().get_params()


# ------------------------------------------------------------------ tuning knobs


@pytest.mark.parametrize("cls", [ItemKNN, SequenceModel])
def test_weight_power_zero_counts_every_interaction_alike(cls: type[ItemKNN]) -> None:
    users = ["a", "a", "b", "b"]
    items = ["x", "y", "x", "z"]
    heavy_y = Batch.from_columns(users, items, [1.0, 5.0, 1.0, 1.0], [0, 1, 2, 3])
    flat = cls(weight_power=0.0, half_life_seconds=None)
    flat.learn(heavy_y)
    # y and z each followed x once: with weights ignored they tie...
    s = flat.score("new", ["y", "z"], history=["x"])
    assert s[0] == pytest.approx(s[1], rel=1e-6, abs=1e-9)
    weighted = cls(weight_power=1.0, half_life_seconds=None)
    weighted.learn(heavy_y)
    # ...while with weights the purchase-like y (weight 5) wins.
    s = weighted.score("new", ["y", "z"], history=["x"])
    assert s[0] > s[1]


def test_itemknn_position_decay_prefers_adjacent_partners() -> None:
    # x is followed by y directly and by z three steps later, in every user's window.
    users = [f"u{n}" for n in range(5) for _ in range(4)]
    items = ["x", "y", "f", "z"] * 5
    stream = Batch.from_columns(users, items, None, np.arange(20.0))
    flat = ItemKNN(position_decay=1.0, half_life_seconds=None)
    flat.learn(stream)
    near = ItemKNN(position_decay=0.5, half_life_seconds=None)
    near.learn(stream)
    f_y, f_z = flat.score("new", ["y", "z"], history=["x"])
    n_y, n_z = near.score("new", ["y", "z"], history=["x"])
    assert f_y == pytest.approx(f_z, rel=1e-6)
    assert n_y > 2 * n_z


@pytest.mark.parametrize("norm", ["minmax", "max", "rank"])
def test_hybrid_normalizations_keep_the_best_item_first(norm: str) -> None:
    h = Hybrid(normalization=norm)
    vals = np.array([0.0, 3.0, 1.0, 1.0, 9.0])
    out = h._normalize(vals)
    assert int(np.argmax(out)) == 4
    assert out[4] == pytest.approx(1.0)
    assert out[2] == out[3]  # ties stay ties
    assert out[1] > out[2] > out[0] == 0.0
    assert np.all(h._normalize(np.full(3, 2.0)) == 0.0)  # a constant scorer says nothing


def test_hybrid_rank_normalization_only_scores_the_top() -> None:
    h = Hybrid(normalization="rank", rank_depth=2, rank_constant=0.0)
    out = h._normalize(np.array([5.0, 4.0, 3.0, 2.0]))
    np.testing.assert_allclose(out, [1.0, 0.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="normalization"):
        Hybrid(normalization="softmax")


def test_pair_store_stacked_matrix_follows_every_change_of_its_runs() -> None:
    """The cached stacked matrix is rebuilt after every change of the runs. It was
    keyed by the ids of the run arrays, and a freed array's id is soon reused: a
    stale matrix was served now and then (two identical sampled evaluations in one
    process disagreed in MRR). Here the new runs reuse the very same key array."""
    from online_models.itemknn import _PairStore

    store = _PairStore()
    store.add(np.array([0, 1, 1]), np.array([1, 0, 2]), np.array([1.0, 2.0, 3.0]))
    before = store.stacked(3).toarray()
    keys, vals = store.runs[0]
    store.runs = [(keys, vals * 10.0)]  # same key array object, new masses
    assert np.array_equal(store.stacked(3).toarray(), before * 10.0)
    store.add(np.array([2]), np.array([2]), np.array([5.0]))  # appended run
    assert store.stacked(3).toarray().sum() == before.sum() * 10.0 + 5.0
    store.compact()
    assert np.array_equal(store.stacked(3).toarray(),
                          _pair_store_from(store.runs).stacked(3).toarray())


def _pair_store_from(runs: list[tuple[np.ndarray, np.ndarray]]) -> _PairStore:
    fresh = _PairStore()
    fresh.runs = [(k.copy(), v.copy()) for k, v in runs]
    return fresh


def test_pair_store_rebuilds_only_changed_runs_and_equals_a_fresh_build() -> None:
    """:meth:`_PairStore.stacked` copies again only the runs after the unchanged
    leading ones: through adds (merges cascading), rescaling in place, compaction,
    replaced runs and a growing row count, every matrix equals one built from
    scratch, array for array."""
    from online_models.itemknn import _PairStore

    rng = np.random.default_rng(5)
    store = _PairStore(merge_ratio=2.0)
    n_rows = 40
    most_runs = 0
    for step in range(120):
        n = int(rng.integers(1, 30))
        store.add(rng.integers(0, n_rows, n), rng.integers(0, n_rows, n), rng.random(n))
        if step % 17 == 16:
            store.scale(0.5)
        if step % 41 == 40:
            store.compact()
        if step % 29 == 28:
            n_rows += 7  # the catalogue grew: every run's row starts change
        if step % 53 == 52:
            store.runs = [(k, v.copy()) for k, v in store.runs]  # same keys, new runs
        got = store.stacked(n_rows)
        want = _pair_store_from(store.runs).stacked(n_rows)
        for attr in ("indptr", "indices", "data"):
            assert np.array_equal(getattr(got, attr), getattr(want, attr)), (step, attr)
        assert got.shape == want.shape
        most_runs = max(most_runs, len(store.runs))
    assert most_runs >= 3  # leading runs stayed while later ones changed


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_store_merge_and_compaction_sum_every_key(seed: int) -> None:
    """Merging two sorted runs (one mask for keys and values) and compacting runs
    smallest first give every key the sum of its masses, keys sorted and unique, as a
    dict summing the same pairs does."""
    from online_models.itemknn import _PairStore

    rng = np.random.default_rng(seed)
    store = _PairStore()
    expected: dict[tuple[int, int], float] = {}
    for _ in range(25):
        n = int(rng.integers(0, 200))
        i, j = rng.integers(0, 30, n), rng.integers(0, 30, n)
        w = rng.integers(1, 5, n).astype(np.float64)  # integers: sums exact in any order
        store.add(i, j, w)
        for a, b, c in zip(i.tolist(), j.tolist(), w.tolist(), strict=True):
            expected[(a, b)] = expected.get((a, b), 0.0) + c
    keys, vals = store.compact()
    assert len(store.runs) == 1
    assert np.all(np.diff(keys) > 0)
    got = {(int(k >> 32), int(k & 0xFFFFFFFF)): float(v)
           for k, v in zip(keys.tolist(), vals.tolist(), strict=True)}
    assert got == expected
    k1, v1 = np.array([1, 4, 9]), np.array([1.0, 2.0, 3.0])
    k2, v2 = np.array([0, 4, 10, 11]), np.array([5.0, 6.0, 7.0, 8.0])
    mk, mv = _PairStore._merge(k1, v1, k2, v2)
    assert mk.tolist() == [0, 1, 4, 9, 10, 11]
    assert mv.tolist() == [5.0, 1.0, 8.0, 3.0, 7.0, 8.0]
