"""River baselines: planted structure, state round trip, determinism."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from online_models.base import Batch
from online_models.datasets import Dataset, to_batches
from online_models.river_baseline import RiverBiasedMF, RiverFunkMF
from online_models.synthetic import generate_events
from tests.models.planted import planted as _planted


def planted(n_events: int, seed: int = 0) -> Batch:
    """The shared two-world stream, with fewer users and items."""
    return _planted(n_events, seed, n_users=10, n_items=8)


MODELS = [RiverFunkMF, RiverBiasedMF]


@pytest.mark.parametrize("cls", MODELS)
def test_learns_planted_groups(cls: type[RiverFunkMF]) -> None:
    m = cls(n_factors=8, learning_rate=0.05, n_negatives=3, seed=0)
    data = planted(4000)
    for _ in range(3):
        for chunk in data.chunks(256):
            m.learn(chunk)
    for user, prefix in (("a1", "A"), ("b2", "B")):
        recs = m.recommend(user, k=8)
        assert len(recs) == 8
        assert all(item.startswith(prefix) for item, _ in recs), recs
    recs = m.recommend("new", 4, history=["B1", "B2"], exclude=["B1", "B2"])
    assert len(recs) == 4
    assert all(item.startswith("B") for item, _ in recs), recs


@pytest.mark.parametrize("cls", MODELS)
def test_state_round_trip_is_exact_and_continues(cls: type[RiverFunkMF]) -> None:
    data = planted(1500)
    m = cls(n_factors=4, seed=3)
    m.learn(data[:1000])
    state = m.get_state()
    state.check()
    r = cls.from_state(state)
    for user in ("a1", "b3", "nobody"):
        assert np.array_equal(m.score_all(user), r.score_all(user))
    # Unseen ids after the round trip draw the same initial latents, so learning continues.
    more = Batch.from_columns(["zz", "a1"], ["ZZ", "A1"], timestamps=[2000.0, 2001.0])
    for model in (m, r):
        model.learn(data[1000:])
        model.learn(more)
    assert np.array_equal(m.score_all("zz"), r.score_all("zz"))
    assert np.array_equal(m.item_vectors(), r.item_vectors())


@pytest.mark.parametrize("cls", MODELS)
def test_a_changed_learning_rate_is_the_step_river_takes(cls: type[RiverFunkMF]) -> None:
    # Drift adaptation sets a new rate in place: learning goes on at that rate, as in
    # a model built with it (before, the optimisers got a bare float, which river
    # cannot read as a schedule: the next learn raised AttributeError).
    data = planted(600)
    m = cls(n_factors=4, learning_rate=0.01, seed=3)
    m.set_param("learning_rate", 0.04)
    built = cls(n_factors=4, learning_rate=0.04, seed=3)
    for model in (m, built):
        model.learn(data)
    assert {getattr(m.river, a).learning_rate for a in m._optimizer_attrs} == {0.04}
    assert np.array_equal(m.score_all("a1"), built.score_all("a1"))


@pytest.mark.parametrize("cls", MODELS)
def test_same_seed_same_model_and_batch_of_one(cls: type[RiverFunkMF]) -> None:
    data = planted(500)
    a, b = cls(seed=5), cls(seed=5)
    a.learn(data)
    for chunk in data.chunks(1):
        b.learn(chunk)
    assert np.array_equal(a.score_all("a2"), b.score_all("a2"))
    assert a.n_items == len({*data.items.tolist()})
    assert a.similar("A1", 3)[0][0] != "A1"


@pytest.mark.parametrize("cls", MODELS)
def test_stays_finite_over_a_long_stream_with_heavy_users(cls: type[RiverFunkMF]) -> None:
    # Few users, each with ~1,000 events, all purchases (weight 5) as in Online Retail:
    # squared loss on weight targets with step 0.05 drifted there (scores ~10 on this
    # stream) and went all-NaN after ~46k Online Retail events.
    records = generate_events(20_000, 20, 300, seed=2)
    ds = Dataset.from_records(({**r, "event_type": "purchase"} for r in records), name="heavy")
    assert float(min(b.weights.min() for b in to_batches(ds, 256))) == 5.0
    m = cls(n_factors=10, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow on the way either
        for b in to_batches(ds, 256):
            m.learn(b)
        for user in [*m.users.ids[:20], "nobody"]:
            scores = m.score_all(user, history=list(ds.items[:5]))  # type: ignore[arg-type]
            assert np.isfinite(scores).all()
            assert np.abs(scores).max() < 3.0  # targets are 0/1: scores stay near them
    assert np.isfinite(m.item_vectors()).all()
