"""The learned re-ranker learns a click model that orders its candidates better."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from online_models import registry
from online_models.base import Batch, UserHistory
from online_models.click_auc import sampled_auc
from online_models.evaluation import PrequentialEvaluator
from online_models.hybrid import Hybrid
from online_models.reranker import ReRanker
from online_models.snapshot import SnapshotStore
from tests.models.planted import planted_chains


def _mixed_stream(n: int) -> Batch:
    """Next-item chains (what `sequence` knows) on one item range, popularity noise on another."""
    chain = planted_chains(n, seed=5, n_items=200, p_next=0.8)
    rng = np.random.default_rng(5)
    noise = [f"N{int(x)}" for x in rng.zipf(1.5, n) % 50]
    use_noise = rng.random(n) < 0.3
    items = np.where(use_noise, np.asarray(noise, object), chain.items)
    return Batch.from_columns(chain.users, items, timestamps=chain.timestamps)


def test_trained_click_model_beats_the_untrained_one_and_ranks_clicks_high() -> None:
    stream = _mixed_stream(5_000)
    comps = ("popularity", "sequence")
    ranked = ReRanker(components=comps, warmup_examples=500, seed=0)
    # Round 1's re-ranker (unweighted recall, pointwise loss, no recall term): the MLP
    # alone orders the candidates, trained and untrained (its random initial order),
    # so what it learns shows.
    legacy: dict[str, Any] = {"base": "sum", "loss": "pointwise", "residual": False}
    mlp = ReRanker(components=comps, warmup_examples=500, seed=0, **legacy)
    frozen = ReRanker(components=comps, warmup_examples=0, learning_rate=0.0, seed=0, **legacy)
    ev = PrequentialEvaluator(
        {"popularity": registry.create("popularity"), "ranked": ranked, "mlp": mlp,
         "frozen": frozen}, k=10
    )
    batches = list(stream.chunks(256))
    for b in batches[:-1]:
        ev.process(b)
    last = batches[-1]
    hr = {n: ev.totals(n)["hr"] for n in ev.models}
    # Measured: popularity 0.10, frozen (random MLP) 0.04, mlp 0.50, ranked 0.57.
    assert hr["mlp"] > 1.3 * hr["frozen"], hr
    assert hr["ranked"] > 2 * hr["popularity"], hr
    auc = sampled_auc(ranked, list(last.users), list(last.items), history=ev.history,
                      known=ev.seen)
    assert auc.auc > 0.8 and auc.positives > 50, auc


def test_untrained_residual_reranker_keeps_the_tuned_blend_order() -> None:
    """The residual logit starts at the recall's order, and the recall is the blend the
    internal hybrid tunes: untrained, the re-ranker recommends what that hybrid does."""
    stream = _mixed_stream(2_000)
    comps = ("popularity", "sequence")
    ranked = ReRanker(components=comps, warmup_examples=0, learning_rate=0.0, seed=0)
    hybrid = Hybrid(components=comps)
    for b in stream.chunks(256):
        ranked.learn(b)
        hybrid.learn(b)
    assert ranked.blend == hybrid.weights != {"popularity": 0.5, "sequence": 0.5}
    users = list(dict.fromkeys(stream.users[-200:]))[:40]
    for user in users:
        hist = ranked.history.get(user)
        got = [i for i, _ in ranked.recommend(user, 10, history=hist, exclude=hist)]
        want = [i for i, _ in hybrid.recommend(user, 10, history=hist, exclude=hist)]
        assert got == want, user


def test_state_round_trip_and_features_reach_components() -> None:
    from online_models.content import ItemFeatures

    stream = _mixed_stream(1_200)
    m = ReRanker(components=("popularity", "content-knn"), warmup_examples=0, seed=0)
    m.set_item_features(ItemFeatures.from_texts({f"I{k}": f"word{k % 9}" for k in range(200)}))
    for b in stream.chunks(256):
        m.learn(b)
    assert m.models["content-knn"].features is m.features  # type: ignore[attr-defined]
    rebuilt = registry.from_state(m.get_state())
    hist = ["I1", "I2"]
    np.testing.assert_allclose(rebuilt.score_all("u1", hist), m.score_all("u1", hist),
                               rtol=1e-6)
    assert isinstance(rebuilt, ReRanker) and rebuilt.n_trained == m.n_trained > 0


def test_a_round_1_snapshot_still_loads() -> None:
    """Snapshots written before the recall blend, the listwise loss and the recall term
    restore as the re-ranker they were (the replay of single rows is dropped)."""
    from online_models.base import ModelState

    legacy: dict[str, Any] = {"base": "sum", "loss": "pointwise", "residual": False}
    m = ReRanker(components=("popularity", "sequence"), warmup_examples=0, seed=0, **legacy)
    for b in _mixed_stream(600).chunks(256):
        m.learn(b)
    st = m.get_state()
    # Round 1's layout: no new parameters, the bare MLP's keys, a replay of rows.
    arrays = {(k[len("mlp."):] if k.startswith("mlp.mlp.") else k): v
              for k, v in st.arrays.items()}
    arrays["replay.x"] = arrays["replay.x"].reshape(-1, arrays["replay.x"].shape[-1])
    arrays["replay.y"] = arrays["replay.y"].reshape(-1)
    params = {k: v for k, v in st.meta["params"].items() if k not in {*legacy, "blend_params"}}
    meta = {k: v for k, v in st.meta.items() if k != "blend"} | {"params": params}
    old = registry.from_state(ModelState(arrays=arrays, meta=meta))
    assert isinstance(old, ReRanker) and (old.base, old.loss, old.residual) == (
        "sum", "pointwise", False)
    assert old._r_len == 0  # the rows' replay is not reused as groups
    np.testing.assert_allclose(old.score_all("u1", ["I1", "I2"]), m.score_all("u1", ["I1", "I2"]),
                               rtol=1e-6)


def test_bound_reranker_recommends_like_one_with_private_copies(tmp_path: Path) -> None:
    """Bound to the models beside it (what the trainer and `liverec evaluate` do), the
    re-ranker learns no copies, and re-ranks as it does with private ones."""
    stream = _mixed_stream(1_500)
    comps = ["popularity", "sequence"]
    private = ReRanker(components=comps, warmup_examples=0, seed=0)
    models = registry.create_models([*comps, "ranked"], {"ranked": {
        "components": comps, "warmup_examples": 0, "seed": 0}})
    shared = models["ranked"]
    assert isinstance(shared, ReRanker) and sorted(shared.shared_components()) == comps
    assert next(iter(models)) == "ranked"  # learns before the components it reads
    for b in stream.chunks(256):
        private.learn(b)
        for name in models:
            models[name].learn(b)
    assert shared.blend == private.blend and shared.n_trained == private.n_trained > 0
    for user in list(dict.fromkeys(stream.users[-100:]))[:20]:
        hist = private.history.get(user)
        np.testing.assert_allclose(shared.score_all(user, hist), private.score_all(user, hist),
                                   rtol=1e-5)
    state = shared.get_state()  # names its shared components, holds no copy of them
    assert state.meta["shared"] == comps and not any(k.startswith("sequence/") for k in
                                                     state.arrays)
    # What `liverec serve` loads: the snapshot's re-ranker reads the snapshot's models.
    store = SnapshotStore(tmp_path)
    store.write(models, history=UserHistory(), offsets={}, events_total=len(stream),
                watermark=None)
    snap = store.load()
    rebuilt = snap.models["ranked"]
    assert isinstance(rebuilt, ReRanker)
    assert all(rebuilt.shared_components()[c] is snap.models[c] for c in comps)
    hist = private.history.get(stream.users[-1])
    np.testing.assert_allclose(rebuilt.score_all(stream.users[-1], hist),
                               shared.score_all(stream.users[-1], hist), rtol=1e-6)
