"""The hybrid blending the trainer's own models: no double learning, same recommendations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from online_models import hybrid as hybrid_module
from online_models import registry
from online_models.base import Batch, ModelState, UserHistory, learning_order
from online_models.datasets import Dataset, to_batches
from online_models.evaluation import PrequentialEvaluator
from online_models.hybrid import Hybrid
from online_models.snapshot import SnapshotStore
from online_models.synthetic import generate_events

COMPONENTS = ["popularity", "itemknn", "sequence", "sknn"]


@pytest.fixture(scope="module")
def stream() -> Dataset:
    return Dataset.from_records(generate_events(4_000, 60, 150, seed=21), name="hybrid")


def _probe(model: Hybrid, stream: Dataset) -> list[list[str]]:
    out = []
    for u in sorted(set(stream.users))[:12]:
        hist = [i for v, i in zip(stream.users, stream.items, strict=True) if v == u][-10:]
        out.append([i for i, _ in model.recommend(u, 10, history=hist, exclude=hist)])
    out.append([i for i, _ in model.recommend("stranger", 10)])
    return out


def _shared_models() -> dict:
    return registry.create_models([*COMPONENTS, "hybrid"])


def test_shared_hybrid_recommends_like_one_with_private_copies(stream: Dataset) -> None:
    private = Hybrid(COMPONENTS)
    models = _shared_models()
    shared = models["hybrid"]
    assert isinstance(shared, Hybrid)
    assert sorted(shared.shared_components()) == sorted(COMPONENTS)
    assert next(iter(models)) == "hybrid"  # learns before the components it reads
    for b in to_batches(stream, 256):
        private.learn(b)
        for name in models:  # learning order
            models[name].learn(b)
    assert shared.weights == private.weights
    assert _probe(shared, stream) == _probe(private, stream)
    users = sorted(set(stream.users))[:20]
    hists = [[i for v, i in zip(stream.users, stream.items, strict=True) if v == u][-15:]
             for u in users]
    np.testing.assert_array_equal(shared.score_many(users, hists),
                                  private.score_many(users, hists))


def test_shared_hybrid_does_not_learn_its_components(stream: Dataset) -> None:
    models = _shared_models()
    first = next(iter(to_batches(stream, 256)))
    models["hybrid"].learn(first)
    assert all(models[c].n_items == 0 for c in COMPONENTS)  # only their owner learns them
    for c in COMPONENTS:
        models[c].learn(first)
    assert models["hybrid"].n_items == models["itemknn"].n_items > 0


def test_evaluator_reuses_component_scores_and_matches_private_hybrid(stream: Dataset) -> None:
    models = _shared_models()
    ev_shared = PrequentialEvaluator(models, k=10)
    ev_private = PrequentialEvaluator({"hybrid": Hybrid(COMPONENTS)}, k=10)
    for b in to_batches(stream, 256):
        a = ev_shared.process(b)
        p = ev_private.process(b)
        assert a.models["hybrid"].ranks.tolist() == p.models["hybrid"].ranks.tolist()
    assert ev_shared.totals("hybrid") == ev_private.totals("hybrid")


def test_snapshot_names_shared_components_and_rebinds_them(
    stream: Dataset, tmp_path: Path
) -> None:
    models = _shared_models()
    for b in to_batches(stream, 256):
        for m in models.values():
            m.learn(b)
    state = models["hybrid"].get_state()
    assert state.meta["shared"] == COMPONENTS
    assert not any("/" in k and not k.startswith("map/") for k in state.arrays)  # no copies
    store = SnapshotStore(tmp_path)
    store.write(models, history=UserHistory(), offsets={}, events_total=len(stream),
                watermark=None)
    snap = store.load()
    hybrid = snap.models["hybrid"]
    assert isinstance(hybrid, Hybrid)
    assert all(hybrid.shared_components()[c] is snap.models[c] for c in COMPONENTS)
    assert _probe(hybrid, stream) == _probe(models["hybrid"], stream)


def test_old_snapshots_with_embedded_copies_still_load(stream: Dataset) -> None:
    private = Hybrid(COMPONENTS)
    for b in to_batches(stream, 256):
        private.learn(b)
    state = private.get_state()
    assert "shared" in state.meta
    del state.meta["shared"]  # the format before shared components
    old = registry.from_state(ModelState(arrays=state.arrays, meta=state.meta))
    assert isinstance(old, Hybrid) and not old.shared_components()
    assert _probe(old, stream) == _probe(private, stream)


def test_bind_refuses_conflicting_component_params() -> None:
    h = Hybrid(["popularity", "itemknn"], component_params={"itemknn": {"window": 3}})
    with pytest.raises(ValueError, match="window"):
        h.bind({"itemknn": registry.create("itemknn", window=5), "hybrid": h})
    # A matching model binds; a model of another kind under the name does not.
    assert h.bind({"itemknn": registry.create("itemknn", window=3)}) == ["itemknn"]
    assert Hybrid(["popularity", "itemknn"]).bind({"itemknn": registry.create("sequence")}) == []


def test_learning_order_puts_readers_first() -> None:
    models = {"popularity": registry.create("popularity"),
              "hybrid": registry.create("hybrid", components=["popularity", "itemknn"]),
              "bpr": registry.create("bpr")}
    bound = registry.bind(models)
    assert list(bound) == learning_order(bound) == ["hybrid", "popularity", "bpr"]
    # itemknn is not among the models: the hybrid keeps a private one and learns it.
    hybrid = bound["hybrid"]
    assert sorted(hybrid.shared_components()) == ["popularity"]
    hybrid.learn(Batch.from_columns(["u", "u"], ["a", "b"], None, [0, 1]))
    assert hybrid.models["itemknn"].n_items == 2  # type: ignore[attr-defined]
    assert bound["popularity"].n_items == 0


def _gains_blending_every_item(h: Hybrid, m: np.ndarray, hist: np.ndarray,
                               truth: int) -> np.ndarray:
    """The reference for ``Hybrid._gains``: every blend of every item, summed component
    by component, the history ranked out, ties against the truth."""
    grid = h._grid
    blends = grid[:, :1] * m[0]
    for c in range(1, len(m)):
        blends = blends + grid[:, c : c + 1] * m[c]
    blends[:, hist] = -np.inf
    rank = (blends >= blends[:, truth][:, None]).sum(axis=1)
    return np.where(rank <= h.tune_k, 1.0 / np.log2(rank + 1.0), 0.0)


def test_tuning_gains_equal_blending_every_item() -> None:
    """``Hybrid._gains`` blends only the items that score at least the truth's in some
    component, and skips the blends when more than ``tune_k`` items beat it in every
    component; its gains equal those of blending every item (the same sum, component
    by component), ties included."""
    rng = np.random.default_rng(7)
    h = Hybrid()
    skipped = 0
    for trial in range(400):
        n = 300
        # Coarse levels make many exact ties, as normalised count scores have.
        m = rng.integers(0, 6, size=(len(h.components), n)).astype(np.float64) / 5.0
        m[:, rng.random(n) < 0.5] = 0.0
        truth = int(rng.integers(n))
        hist = rng.choice(np.setdiff1d(np.arange(n), [truth]), size=5, replace=False)
        expected = _gains_blending_every_item(h, m, hist, truth)
        np.testing.assert_array_equal(h._gains(m, hist, truth), expected, err_msg=str(trial))
        above = (m >= m[:, truth : truth + 1]).all(axis=0)
        above[hist] = False
        skipped += int(above.sum() > h.tune_k)
    assert 50 < skipped < 400  # both paths were exercised


@pytest.mark.parametrize("k", [1, 3, 10])
def test_tuning_gains_with_a_dense_component_equal_blending_every_item(k: int) -> None:
    """With a component that scores every item (seqnn), ``_gains`` first ranks the truth
    among each component's top items and sums over every item only the blends where it
    may still be in the top k; the gains equal blending every item, bit for bit."""
    rng = np.random.default_rng(11 + k)
    h = Hybrid(components=["popularity", "itemknn", "sequence", "sknn", "seqnn"], tune_k=k)
    pruned = hits = 0
    for trial in range(300):
        n = 3000
        m = rng.integers(0, 6, size=(len(h.components), n)).astype(np.float64) / 5.0
        m[:4, rng.random(n) < 0.7] = 0.0  # sparse count components, ties included
        m[4] = rng.random(n)  # the dense one
        truth = int(rng.integers(n))
        m[:, truth] = np.maximum(m[:, truth], rng.random() * 1.2)  # sometimes on top
        hist = rng.choice(np.setdiff1d(np.arange(n), [truth]), size=5, replace=False)
        expected = _gains_blending_every_item(h, m, hist, truth)
        np.testing.assert_array_equal(h._gains(m, hist, truth), expected, err_msg=str(trial))
        ge = (m >= m[:, truth : truth + 1]).any(axis=0)
        pruned += int(ge.sum() > hybrid_module._PRUNE_FACTOR * (h.tune_k + 1) * len(m))
        hits += int(expected.any())
    assert pruned > 150 and 10 < hits < 290  # both paths, with and without a gain
