"""Every registry model against the one model protocol (river-style conformance suite)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from safetensors.numpy import load_file, save_file

from online_models import registry
from online_models.base import Batch, ModelState, OnlineModel
from online_models.datasets import Dataset, to_batches
from online_models.synthetic import generate_events
from tests.models.conftest import ALL_MODELS, learn_all, make_model

pytestmark = pytest.mark.parametrize("name", ALL_MODELS)

K = 10


def _probe_users(stream: Dataset) -> list[str]:
    # A heavy user, a light one, and the most recent one.
    counts: dict[str, int] = {}
    for u in stream.users:
        counts[u] = counts.get(u, 0) + 1
    ranked = sorted(counts, key=lambda u: (-counts[u], u))
    return [ranked[0], ranked[len(ranked) // 2], stream.users[-1]]


def _history(stream: Dataset, user: str, n: int = 20) -> list[str]:
    hist: list[str] = []
    for u, i in zip(stream.users, stream.items, strict=True):
        if u == user:
            if i in hist:
                hist.remove(i)
            hist.append(i)
    return hist[-n:]


def _recs(model: OnlineModel, stream: Dataset) -> list[list[tuple[str, float]]]:
    out = []
    for u in _probe_users(stream):
        h = _history(stream, u)
        out.append(model.recommend(u, K, history=h, exclude=h))
    return out


def _assert_same_recs(a: list, b: list) -> None:
    for ra, rb in zip(a, b, strict=True):
        assert [i for i, _ in ra] == [i for i, _ in rb]
        np.testing.assert_allclose([s for _, s in ra], [s for _, s in rb], rtol=1e-5, atol=1e-6)


@pytest.fixture
def fitted(name: str, small_batches: list[Batch]) -> OnlineModel:
    return learn_all(make_model(name), small_batches)


def test_learns_state_changes_and_ids_grow(name: str, small_batches: list[Batch]) -> None:
    model = make_model(name)
    assert model.n_users == 0 and model.n_items == 0
    model.learn(small_batches[0])
    users_1, items_1 = model.n_users, model.n_items
    assert users_1 > 0 and items_1 > 0
    before = model.get_state()
    for b in small_batches[1:]:
        model.learn(b)
    assert model.n_users > users_1 and model.n_items > items_1
    after = model.get_state()
    changed = before.arrays.keys() != after.arrays.keys() or any(
        a.shape != after.arrays[k].shape or not np.array_equal(a, after.arrays[k])
        for k, a in before.arrays.items()
    )
    assert changed


def test_recommends_k_distinct_unseen_items(
    name: str, fitted: OnlineModel, small_stream: Dataset
) -> None:
    known = set(small_stream.items)
    for user in _probe_users(small_stream):
        hist = _history(small_stream, user)
        extra = [small_stream.items[0], small_stream.items[-1]]
        exclude = set(hist) | set(extra)
        recs = fitted.recommend(user, K, history=hist, exclude=exclude)
        items = [i for i, _ in recs]
        assert len(items) == K
        assert len(set(items)) == K
        assert not exclude & set(items)
        assert set(items) <= known
        scores = [s for _, s in recs]
        assert all(np.isfinite(scores))
        assert scores == sorted(scores, reverse=True)


def test_score_all_shape_and_score_matches_rows(name: str, fitted: OnlineModel) -> None:
    user = fitted.users.ids[0]
    assert user is not None
    all_scores = fitted.score_all(user)
    assert all_scores.dtype == np.float32
    assert all_scores.shape == (fitted.items.capacity,)
    ids = [i for i in fitted.items.ids[:15] if i is not None]
    got = fitted.score(user, [*ids, "never-seen-item"])
    np.testing.assert_array_equal(got[:-1], all_scores[fitted.items.rows(ids)])
    assert got[-1] == -np.inf


def test_state_round_trip_gives_identical_recommendations(
    name: str, fitted: OnlineModel, small_stream: Dataset
) -> None:
    state = fitted.get_state()
    state.check()
    assert state.meta["class"] == name
    assert state.meta["params"] == orjson.loads(orjson.dumps(fitted.get_params()))
    rebuilt = registry.from_state(state)
    assert type(rebuilt) is type(fitted)
    assert (rebuilt.n_users, rebuilt.n_items) == (fitted.n_users, fitted.n_items)
    _assert_same_recs(_recs(fitted, small_stream), _recs(rebuilt, small_stream))


def test_state_survives_safetensors_and_json_on_disk(
    name: str, fitted: OnlineModel, small_stream: Dataset, tmp_path: Path
) -> None:
    state = fitted.get_state()
    arrays = {k: np.ascontiguousarray(v) for k, v in state.arrays.items()}
    save_file(arrays, str(tmp_path / "state.safetensors"))
    (tmp_path / "meta.json").write_bytes(orjson.dumps(state.meta))
    with open(tmp_path / "state.npz", "wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)

    meta = orjson.loads((tmp_path / "meta.json").read_bytes())
    from_st = registry.from_state(ModelState(load_file(str(tmp_path / "state.safetensors")), meta))
    with np.load(tmp_path / "state.npz", allow_pickle=False) as npz:
        from_npz = registry.from_state(ModelState({k: npz[k] for k in npz.files}, meta))
    expected = _recs(fitted, small_stream)
    _assert_same_recs(expected, _recs(from_st, small_stream))
    _assert_same_recs(expected, _recs(from_npz, small_stream))


def test_rebuilt_model_keeps_learning_like_the_original(
    name: str, small_batches: list[Batch], small_stream: Dataset
) -> None:
    original = learn_all(make_model(name), small_batches[:6])
    rebuilt = registry.from_state(original.get_state())
    for b in small_batches[6:]:
        original.learn(b)
        rebuilt.learn(b)
    _assert_same_recs(_recs(original, small_stream), _recs(rebuilt, small_stream))


def test_new_users_and_items_never_raise(name: str, fitted: OnlineModel) -> None:
    n_items = fitted.n_items
    scores = fitted.score_all("brand-new-user")
    assert scores.shape == (fitted.items.capacity,)
    assert not np.isnan(scores).any()
    known = [i for i in fitted.items.ids[:3] if i is not None]
    recs = fitted.recommend("brand-new-user", K, history=["brand-new-item", *known])
    assert len(recs) == K and not {i for i, _ in recs} & {"brand-new-item"}
    sims = fitted.similar("brand-new-item", K)
    assert isinstance(sims, list) and "brand-new-item" not in {i for i, _ in sims}
    fitted.learn(
        Batch.from_columns(
            ["new-u1", "new-u2", "new-u1"],
            ["new-i1", "new-i2", "new-i2"],
            [1.0, 5.0, 2.0],
            [2e9, 2e9 + 1, 2e9 + 2],
        )
    )
    assert fitted.n_items == n_items + 2
    assert fitted.items.get("new-i1") >= 0 and fitted.users.get("new-u2") >= 0
    recs = fitted.recommend("new-u1", K, history=["new-i1", "new-i2"], exclude=["new-i1"])
    assert recs and "new-i1" not in {i for i, _ in recs}


def test_similar_items(name: str, fitted: OnlineModel, small_stream: Dataset) -> None:
    item = max(set(small_stream.items), key=small_stream.items.count)
    sims = fitted.similar(item, K)
    items = [i for i, _ in sims]
    assert 0 < len(items) <= K
    assert item not in items and len(set(items)) == len(items)
    scores = [s for _, s in sims]
    assert scores == sorted(scores, reverse=True)


def test_deterministic_for_a_seed(
    name: str, small_batches: list[Batch], small_stream: Dataset
) -> None:
    a = learn_all(make_model(name), small_batches)
    b = learn_all(make_model(name), small_batches)
    _assert_same_recs(_recs(a, small_stream), _recs(b, small_stream))


def test_batch_of_one_and_of_ten_thousand(name: str) -> None:
    one = make_model(name)
    one.learn(Batch.from_columns(["u"], ["i"], [1.0], [1.7e9]))
    assert one.n_users == 1 and one.n_items == 1
    assert one.score_all("u").shape == (one.items.capacity,)

    big_stream = Dataset.from_records(generate_events(10_000, 500, 1_000, seed=3))
    (big,) = to_batches(big_stream, 10_000)
    assert len(big) == 10_000
    model = make_model(name)
    model.learn(big)
    assert model.n_users > 400 and model.n_items > 700
    user = big_stream.users[-1]
    recs = model.recommend(user, K, history=_history(big_stream, user))
    assert len(recs) == K


def test_clone_is_unfitted_with_the_same_params(name: str, fitted: OnlineModel) -> None:
    params = fitted.get_params()
    clone = fitted.clone()
    assert type(clone) is type(fitted)
    assert clone.get_params() == params
    assert clone.n_users == 0 and clone.n_items == 0
    clone.learn(Batch.from_columns(["cu"], ["ci"], [1.0], [1.7e9]))
    assert fitted.users.get("cu") == -1  # learning the clone leaves the original alone


#: models without item vectors (count models and blends): ``item_vectors()`` is None
NO_ITEM_VECTORS = {"popularity", "itemknn", "userknn", "sequence", "sknn", "hybrid",
                   "content-knn", "ranked"}


def test_item_vectors_align_with_items(name: str, fitted: OnlineModel) -> None:
    vecs = fitted.item_vectors()
    assert (vecs is None) == (name in NO_ITEM_VECTORS)
    if vecs is not None:
        assert vecs.ndim == 2 and vecs.shape[0] == fitted.items.capacity
        assert np.isfinite(vecs).all()


def test_unfitted_model_answers_without_raising(name: str) -> None:
    model = make_model(name)
    assert model.score_all("u").shape == (0,)
    assert model.recommend("u", K, history=["i"]) == []
    assert model.similar("i", K) == []
    vecs = model.item_vectors()
    assert vecs is None or vecs.shape[0] == 0


#: models whose score_many must equal score_all bit for bit (no matrix product whose
#: summation order BLAS may change between a matrix-vector and a matrix-matrix call)
EXACT_BATCH = {"popularity", "itemknn", "sequence", "sknn", "userknn", "hybrid"}


def test_score_many_equals_score_all_for_every_query(
    name: str, fitted: OnlineModel, small_stream: Dataset
) -> None:
    probes = _probe_users(small_stream)
    users = [*probes, probes[0], "never-seen-user", "never-seen-user"]
    histories: list[list[str]] = [_history(small_stream, u) for u in probes]
    # the model's own context (no history), a folded-in stranger, a cold stranger
    histories += [[], _history(small_stream, probes[1])[-3:], []]
    many = fitted.score_many(users, histories)
    assert many.dtype == np.float32
    assert many.shape == (len(users), fitted.items.capacity)
    for r, (u, h) in enumerate(zip(users, histories, strict=True)):
        one = fitted.score_all(u, h)
        if name in EXACT_BATCH:
            np.testing.assert_array_equal(many[r], one)
        else:
            np.testing.assert_allclose(many[r], one, rtol=1e-5, atol=1e-5)
    assert fitted.score_many([], []).shape == (0, fitted.items.capacity)
    with pytest.raises(ValueError):
        fitted.score_many(["a"], [])


def test_adaptable_params_are_declared_and_settable(name: str, fitted: OnlineModel) -> None:
    from online_models.base import ADAPTABLE_KINDS

    declared = fitted.adaptable_params()
    assert set(declared.values()) <= set(ADAPTABLE_KINDS)
    for param, _kind in declared.items():
        old = getattr(fitted, param)
        fitted.set_param(param, old * 0.25)
        assert getattr(fitted, param) == pytest.approx(old * 0.25)
        assert fitted.score_all(fitted.users.ids[0] or "").shape == (fitted.items.capacity,)
        fitted.set_param(param, old)
        assert getattr(fitted, param) == old
        with pytest.raises(ValueError):
            fitted.set_param(param, -1.0)
    with pytest.raises(KeyError):
        fitted.set_param("no_such_parameter", 1.0)
    expected = {
        "popularity": {"half_life_seconds"},
        "itemknn": {"half_life_seconds"},
        "sequence": {"half_life_seconds"},
        "userknn": {"half_life_seconds"},
        "sknn": {"popularity_half_life_seconds"},  # the session half-life is off (None)
        "bpr": {"learning_rate"},
        "embedding": {"learning_rate"},
        "river-funkmf": {"learning_rate"},
        "river-biasedmf": {"learning_rate"},
        "hybrid": set(),  # its components are adapted where they live
        "ranked": set(),  # likewise
        "seqnn": set(),  # its own trainer and step budget keep it in step
        "content-knn": set(),  # no decay to shorten
    }
    assert name in expected, f"declare {name}'s adaptable parameters here"
    assert set(declared) == expected[name]


def test_a_model_restored_before_an_adaptation_stays_in_step(
    name: str, small_batches: list[Batch], small_stream: Dataset
) -> None:
    """Drift adaptation changes parameters in place (:meth:`set_param`) and restores
    them later: a model restored from a snapshot taken before it, given the same
    changes and batches, recommends as the live one does (a half-life change must not
    re-decay mass stored against an old landmark)."""
    live = learn_all(make_model(name), small_batches[:6])
    restored = registry.from_state(live.get_state())
    span = float(small_batches[5].timestamps.max() - small_batches[0].timestamps.min())
    changed = {p: (span / 8 if kind == "half_life" else getattr(live, p) * 2.0)
               for p, kind in live.adaptable_params().items()}
    originals = {p: getattr(live, p) for p in changed}
    for model in (live, restored):
        for p, value in changed.items():
            model.set_param(p, value)
        learn_all(model, small_batches[6:9])
        for p, value in originals.items():
            model.set_param(p, value)
        learn_all(model, small_batches[9:])
    _assert_same_recs(_recs(live, small_stream), _recs(restored, small_stream))


def test_forgotten_users_leave_and_the_model_goes_on(
    name: str, fitted: OnlineModel, small_batches: list[Batch], small_stream: Dataset
) -> None:
    """``forget_users`` (the trainer's bound on users) frees the users' rows; they come
    back as new users, and learning, scoring and the state round trip carry on."""
    users = sorted({u for b in small_batches[-3:] for u in b.users})[:25]
    known = [u for u in users if u in fitted.users]
    assert known, "the probe users are known to the model"
    n_users = fitted.n_users
    fitted.forget_users(users)
    assert not any(u in fitted.users for u in users)
    # A blend's private components (all of them here: nothing is bound) forget too.
    for part in getattr(fitted, "models", {}).values():
        assert not any(u in part.users for u in users), part.name
    assert fitted.n_users == n_users - len(known)
    for u in users[:3]:  # scored like users never seen
        assert np.isfinite(fitted.score_all(u)).all()
    learn_all(fitted, small_batches[-3:])  # they come back, taking freed rows
    assert all(u in fitted.users for u in known)
    rebuilt = registry.from_state(fitted.get_state())
    assert (rebuilt.n_users, rebuilt.n_items) == (fitted.n_users, fitted.n_items)
    _assert_same_recs(_recs(fitted, small_stream), _recs(rebuilt, small_stream))
