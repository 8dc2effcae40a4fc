"""Prequential evaluator: exact metrics on tiny hand-made streams."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Self

import numpy as np
import pytest

from online_models.base import Batch, IdIndex, ModelState, OnlineModel, UserHistory
from online_models.click_auc import sampled_auc
from online_models.evaluation import (
    MISS_RANK,
    EvalSample,
    PrequentialEvaluator,
    rank_of,
)
from online_models.popularity import Popularity


class Fixed(OnlineModel):
    """Scores each known item by a fixed table; records what it had learned when scored."""

    name = "fixed"

    def __init__(self, table: Mapping[str, float], forget: Sequence[str] = ()) -> None:
        self.table = dict(table)
        self.forget = list(forget)
        self.items, self.users = IdIndex(), IdIndex()
        self.learned = 0
        self.seen_at_scoring: list[int] = []

    def learn(self, batch: Batch) -> None:
        self.users.add_many(batch.users)
        self.items.add_many([i for i in batch.items if i not in self.forget])
        self.learned += len(batch)

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        self.seen_at_scoring.append(self.learned)
        return np.asarray([self.table.get(i or "", 0.0) for i in self.items.ids], np.float32)

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        return []

    def get_state(self) -> ModelState:
        return ModelState(meta={"class": self.name, "params": {}})

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        return cls({})

    def item_vectors(self) -> np.ndarray | None:
        return None


def batch(rows: list[tuple[str, str]], t0: float = 0.0) -> Batch:
    users, items = zip(*rows, strict=True)
    return Batch.from_columns(users, items, None, np.arange(len(rows)) + t0)


SEED = batch([("u1", "a"), ("u1", "b"), ("u1", "c"), ("u1", "d")])
TABLE = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0}


def test_exact_ranks_hr_ndcg_mrr_and_eligibility() -> None:
    ev = PrequentialEvaluator({"m": Fixed(TABLE)}, k=2)
    first = ev.process(SEED)
    # Every item of the first batch is new to the stream: nothing is evaluated.
    assert first.n_evaluated == 0
    out = ev.process(
        batch([("u2", "a"), ("u2", "c"), ("u2", "b"), ("u2", "a"), ("u2", "e")], t0=10)
    )
    # (u2,a): no history; (u2,a) again: already in history; (u2,e): unseen item.
    assert out.positions.tolist() == [1, 2]
    m = out.models["m"]
    # c: candidates b, c, d (a is history) -> rank 2; b: candidates b, d -> rank 1.
    assert m.ranks.tolist() == [2, 1]
    assert m.hits.tolist() == [1, 1]
    np.testing.assert_allclose(m.ndcg, [1 / math.log2(3), 1.0])
    tot = ev.totals("m")
    assert tot["n"] == 2
    assert tot["hr"] == 1.0
    assert tot["mrr"] == pytest.approx(0.75)
    assert tot["ndcg"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert tot["precision"] == pytest.approx(0.5)
    ev1 = PrequentialEvaluator({"m": Fixed(TABLE)}, k=1)
    ev1.process(SEED)
    ev1.process(batch([("u2", "a"), ("u2", "c"), ("u2", "b")], t0=10))
    assert ev1.totals("m")["hr"] == 0.5
    # MRR@1: the rank-2 event adds nothing beyond the cut-off (it added 1/2 before).
    assert ev1.totals("m")["mrr"] == 0.5


def test_history_items_are_excluded_even_when_scored_highest() -> None:
    ev = PrequentialEvaluator({"m": Fixed({"a": 100.0, "b": 50.0, "c": 1.0, "d": 0.0})}, k=1)
    ev.process(SEED)
    out = ev.process(batch([("u2", "a"), ("u2", "b"), ("u2", "c")], t0=10))
    # b ranks first once a (history) is gone; c ranks first once a and b are gone.
    assert out.models["m"].ranks.tolist() == [1, 1]


def test_test_then_train_order() -> None:
    model = Fixed(TABLE)
    ev = PrequentialEvaluator({"m": model}, k=2)
    ev.process(SEED)
    ev.process(batch([("u1", "a"), ("u2", "a"), ("u2", "b"), ("u2", "c")], t0=10))
    # Every event of the second batch was scored by a model that had learned only
    # the first batch; the model learns the second one afterwards.
    assert model.seen_at_scoring == [4, 4]
    assert model.learned == 8


def test_history_moves_event_by_event_within_a_batch() -> None:
    ev = PrequentialEvaluator({"m": Fixed(TABLE)}, k=2)
    out = ev.process(batch([("u", "a"), ("u", "b"), ("v", "a"), ("v", "b")]))
    # (v, a) has no history; (v, b) is evaluated: v's history ([a]) and the item b
    # were both seen earlier in the same batch, before the model learned anything.
    assert out.positions.tolist() == [3]
    # The model knows no item yet: a miss, not "1st of 0 candidates".
    assert out.models["m"].ranks.tolist() == [MISS_RANK]
    assert out.models["m"].hits.tolist() == [0]
    assert ev.history.get("v") == ["a", "b"]


def test_unknown_items_miss_and_ties_are_pessimistic() -> None:
    flat = Fixed(dict.fromkeys("abcd", 1.0))
    blind = Fixed(TABLE, forget=["c"])
    ev = PrequentialEvaluator({"flat": flat, "blind": blind}, k=2)
    ev.process(SEED)
    out = ev.process(batch([("u2", "a"), ("u2", "c")], t0=10))
    # Three candidates with equal scores: the true item is ranked last.
    assert out.models["flat"].ranks.tolist() == [3]
    # c is unknown to "blind": a miss at any cut-off (not 3rd of its 2 candidates).
    assert out.models["blind"].ranks.tolist() == [MISS_RANK]
    assert out.models["blind"].hits.tolist() == [0]


def test_rolling_window_and_per_event_arrays() -> None:
    ev = PrequentialEvaluator({"m": Fixed(TABLE)}, k=1, rolling_window=1)
    ev.process(SEED)
    ev.process(batch([("u2", "a"), ("u2", "c"), ("u2", "b")], t0=10))
    assert ev.totals("m")["hr"] == 0.5
    assert ev.rolling("m")["hr"] == 1.0  # only the last event (a hit)
    assert ev.rolling("m")["n"] == 1


def test_list_metrics_are_in_range() -> None:
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}") for u, i in zip(rng.integers(0, 30, 600),
                                                 rng.zipf(1.5, 600) % 60, strict=True)]
    ev = PrequentialEvaluator({"pop": Popularity(half_life_seconds=None)}, k=5)
    for start in range(0, 600, 100):
        ev.process(batch(rows[start : start + 100], t0=start))
    tot = ev.totals("pop")
    assert tot["n"] > 100
    assert 0 < tot["coverage"] <= 1
    assert tot["novelty"] > 0
    assert 0 <= tot["diversity"] <= 1.5
    # Popularity recommends nearly the same list to everyone: low coverage.
    assert tot["coverage"] < 0.5


def test_sketch_rows_sum_their_users_signs_and_deferring_them_changes_nothing() -> None:
    rng = np.random.default_rng(1)
    rows = [(f"u{u}", f"i{i}") for u, i in zip(rng.integers(0, 40, 900),
                                                 rng.zipf(1.5, 900) % 80, strict=True)]
    eager = PrequentialEvaluator({"pop": Popularity(half_life_seconds=None)}, k=5)
    eager.SKETCH_LAG = 1  # every batch enters the sketch at once
    lazy = PrequentialEvaluator({"pop": Popularity(half_life_seconds=None)}, k=5)
    for start in range(0, 900, 100):
        for ev in (eager, lazy):
            ev.process(batch(rows[start : start + 100], t0=start))
    assert lazy._unsketched  # the last batches still wait
    assert eager.totals("pop") == lazy.totals("pop")
    lazy._flush_signs()
    np.testing.assert_array_equal(eager._sketch, lazy._sketch)
    # Each item's row is the sum of its events' users' +-1 vectors.
    want = np.zeros_like(lazy._sketch)
    for u, i in rows:
        want[lazy.catalog.get(i)] += lazy._user_signs([u])[0]
    np.testing.assert_array_equal(lazy._sketch, want)
    signs = lazy._user_signs([f"u{n}" for n in range(400)])
    assert set(np.unique(signs).tolist()) == {-1.0, 1.0}
    assert abs(float(signs.mean())) < 0.05  # balanced, independent bits
    assert np.array_equal(signs[:1], lazy._user_signs(["u0"]))  # fixed per user


def test_rank_of_counts_only_finite_candidates() -> None:
    s = np.array([1.0, 2.0, -np.inf, 2.0], np.float32)
    assert rank_of(s, 1) == 2  # tie with row 3, pessimistic
    assert rank_of(s, 0) == 3
    assert rank_of(s, 2) == MISS_RANK  # not finite: a miss, not 4th of 3 candidates
    assert rank_of(s, -1) == MISS_RANK
    assert rank_of(s, 0, exclude=np.array([1, 3])) == 1


@pytest.mark.parametrize("bad", [np.nan, -np.inf, np.inf])
def test_rank_of_non_finite_true_item_is_a_miss_even_with_no_finite_candidate(
    bad: float,
) -> None:
    # An empty or diverged model (every score non-finite) used to rank the truth 1st.
    assert rank_of(np.full(5, bad, np.float32), 2) == MISS_RANK
    assert rank_of(np.zeros(0, np.float32), 0) == MISS_RANK


class Diverged(Fixed):
    """Knows every item but scores them all NaN, like a diverged factor model."""

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        return np.full(self.items.capacity, np.nan, np.float32)


def test_diverged_model_earns_no_hits() -> None:
    ev = PrequentialEvaluator({"nan": Diverged({}), "fixed": Fixed(TABLE)}, k=10)
    ev.process(SEED)
    out = ev.process(batch([("u2", "a"), ("u2", "b"), ("u2", "c")], t0=10))
    assert out.n_evaluated == 2
    assert out.models["nan"].hits.tolist() == [0, 0]
    assert ev.totals("nan")["hr"] == 0.0
    assert ev.totals("nan")["mrr"] < 1e-12
    assert ev.totals("fixed")["hr"] == 1.0  # 4 known items, k=10: the sane model hits


def test_default_history_is_unbounded() -> None:
    # u's 300 items all outscore the truth "t". With the old 200-item bound the
    # oldest 100 were neither excluded nor "already in history".
    old = [f"i{n}" for n in range(300)]
    table = {**dict.fromkeys(old, 10.0), "t": 5.0}
    ev = PrequentialEvaluator({"fixed": Fixed(table)}, k=1)
    ev.process(batch([("v", i) for i in [*old, "t"]]))
    ev.process(batch([("u", i) for i in old], t0=1000))
    assert len(ev.history.get("u")) == 300
    out = ev.process(batch([("u", "i0")], t0=2000))
    assert out.n_evaluated == 0  # i0 is u's history: not a new item to predict
    out = ev.process(batch([("u", "t")], t0=3000))
    assert out.n_evaluated == 1
    assert out.models["fixed"].ranks.tolist() == [1]  # all 300 history items excluded


class Clicky:
    def __init__(self, good: bool) -> None:
        self.items = IdIndex(["a", "b", "c", "d", "e"])
        self.good = good

    def click_proba(
        self, user: str, items: Sequence[str], history: Sequence[str] = ()
    ) -> np.ndarray:
        if not self.good:
            return np.full(len(items), 0.5)
        return np.asarray([1.0 if i == f"{user}-fav" or i == "a" else 0.1 for i in items])


def _histories(**users: list[str]) -> UserHistory:
    h = UserHistory()
    for user, items in users.items():
        h.extend([user] * len(items), items)
    return h


def test_sampled_auc() -> None:
    h = _histories(u=["e"], v=["e"])
    good = sampled_auc(Clicky(True), ["u", "v"], ["a", "a"], n_negatives=10, history=h)
    assert (good.auc, good.positives) == (1.0, 2)
    assert 0 < good.negatives <= 2 * 10
    flat = sampled_auc(Clicky(False), ["u"], ["a"], n_negatives=10, history=h)
    assert (flat.auc, flat.positives) == (0.5, 1) and flat.negatives > 0
    none = sampled_auc(Popularity(), ["u"], ["a"], history=h)
    assert math.isnan(none.auc) and (none.positives, none.negatives) == (0, 0)


def test_sampled_auc_counts_only_the_positives_hr_evaluates() -> None:
    """An unknown item (which click_proba scores 0.0), a repeat and a user's first event
    are no positives of the AUC, as they are no evaluated events of HR@K; the result
    says how many positives and pairs it rests on and what it left out."""
    h = _histories(u=["b"], w=["c"])
    # Clicky(True) scores "a" 1.0 and everything else 0.1: "zz" (unknown) and "b" (a
    # repeat) would be losses or ties; "v" has no history before its event.
    users = ["u", "u", "u", "v", "w", "w"]
    items = ["zz", "b", "a", "a", "a", "a"]
    r = sampled_auc(Clicky(True), users, items, history=h, n_negatives=3)
    assert r.auc == 1.0
    assert r.positives == 2  # u->a and w's first a; w's second a is a repeat
    assert r.excluded == {"unknown_item": 1, "first_user_event": 1, "repeat_item": 2}
    assert 0 < r.negatives <= 2 * 3 and r.correct == r.negatives
    # The old reading (every click a positive) would have counted the unknown item
    # and the repeat as losses; max_positives stops at the first evaluable ones.
    first = sampled_auc(Clicky(True), users, items, history=h, n_negatives=3, max_positives=1)
    assert first.positives == 1 and first.excluded["first_user_event"] == 0
    # An item seen earlier in the stretch is known from then on (as for HR@K).
    later = sampled_auc(Clicky(True), ["v", "u"], ["new", "new"], history=h, n_negatives=3,
                        known=lambda i: i != "new")
    assert later.positives == 1 and later.excluded["unknown_item"] == 1


# ------------------------------------------------------------------ batched, sampled, cold


def _run(models: dict[str, OnlineModel], stream: Batch, size: int = 200,
         **kw: object) -> PrequentialEvaluator:
    ev = PrequentialEvaluator(models, k=10, **kw)  # type: ignore[arg-type]
    for b in stream.chunks(size):
        ev.process(b)
    return ev


def test_batched_ranks_equal_per_event_score_all_reference() -> None:
    from online_models.itemknn import ItemKNN
    from tests.models.planted import planted

    stream = planted(3000, seed=3, n_users=40, n_items=60)
    model, ref_model = ItemKNN(), ItemKNN()
    ev = PrequentialEvaluator({"m": model}, k=10)
    history: dict[str, list[str]] = {}
    seen: set[str] = set()
    for b in stream.chunks(256):
        expected = []
        for u, i in zip(b.users, b.items, strict=True):
            hist = history.get(u, [])
            if hist and i in seen and i not in hist:
                s = ref_model.score_all(u, hist).copy()
                rows = ref_model.items.rows(hist)
                expected.append(rank_of(s, ref_model.items.get(i), rows[rows >= 0]))
            seen.add(i)
            history.setdefault(u, [])
            if i in history[u]:
                history[u].remove(i)
            history[u].append(i)
        out = ev.process(b)
        ref_model.learn(b)
        assert out.models["m"].ranks.tolist() == expected


def test_sampled_hr_lies_in_the_binomial_interval_of_the_full_hr() -> None:
    from scipy.stats import binom

    from online_models.itemknn import ItemKNN
    from tests.models.planted import planted

    stream = planted(12_000, seed=11, n_users=60, n_items=80)
    full = _run({"m": ItemKNN()}, stream)
    sampled = _run({"m": ItemKNN()}, stream, sample=EvalSample(fraction=0.2, seed=5))
    p, n_full = full.totals("m")["hr"], int(full.totals("m")["n"])
    n_s = int(sampled.totals("m")["n"])
    # The sample is a fifth of the same evaluable events (both saw all of them).
    assert sampled.totals("m")["n_eligible"] == full.totals("m")["n_eligible"] == n_full
    assert 0.15 * n_full < n_s < 0.25 * n_full
    lo, hi = binom.interval(0.99, n_s, p)
    assert lo / n_s <= sampled.totals("m")["hr"] <= hi / n_s
    assert 0.1 < p < 0.9  # the planted structure is learned, not a degenerate 0 or 1
    # The rolling window counts sampled events too.
    assert sampled.rolling("m")["n"] == min(n_s, sampled.rolling_window)


def test_sample_is_seeded_and_independent_of_batch_boundaries() -> None:
    from online_models.itemknn import ItemKNN
    from tests.models.planted import planted

    stream = planted(3000, seed=2)
    spec = EvalSample(fraction=0.3, seed=9)
    a = _run({"m": ItemKNN()}, stream, size=100, sample=spec)
    b = _run({"m": ItemKNN()}, stream, size=100, sample=spec)
    c = _run({"m": Popularity()}, stream, size=250, sample=spec)
    assert a.totals("m") == b.totals("m")
    # Same draws per event, whatever the batch size: the same events are evaluated.
    assert a.totals("m")["n"] == c.totals("m")["n"]
    other = _run({"m": ItemKNN()}, stream, size=100, sample=EvalSample(fraction=0.3, seed=10))
    assert other.totals("m")["n"] != a.totals("m")["n"]


def test_sample_budget_in_events_per_second_of_wall_time() -> None:
    from tests.models.planted import planted

    now = [0.0]
    ev = PrequentialEvaluator(
        {"m": Popularity()}, k=10, sample=EvalSample(max_per_s=50.0, seed=0),
        clock=lambda: now[0],
    )
    scored = []
    for b in planted(20_000, seed=1, n_users=100, n_items=5000).chunks(500):
        now[0] += 0.1  # 0.1 s of wall time per batch: a budget of ~5 events per batch
        scored.append(ev.process(b).n_evaluated)
    # ~50 events per second over 4 s of wall time (plus the first second's burst).
    assert 150 <= sum(scored) <= 300
    assert ev.totals("m")["n"] == sum(scored)
    assert ev.totals("m")["n_eligible"] > 10 * sum(scored)


def test_a_tight_budget_scores_fewer_larger_groups_at_the_same_rate() -> None:
    from tests.models.planted import planted

    def run(min_batch: int) -> list[int]:
        now = [0.0]
        ev = PrequentialEvaluator(
            {"m": Popularity()}, k=10,
            sample=EvalSample(max_per_s=20.0, seed=0, min_batch=min_batch),
            clock=lambda: now[0],
        )
        scored = []
        for b in planted(40_000, seed=1, n_users=100, n_items=5000).chunks(250):
            now[0] += 0.1  # a budget of ~2 events per batch
            scored.append(ev.process(b).n_evaluated)
        return scored

    spread, grouped = run(1), run(32)
    # Same budget, about the same number of scored events (~20/s over 16 s + burst)...
    assert 250 <= sum(spread) <= 450 and 250 <= sum(grouped) <= 450
    # ... but the grouped run scores them in a few batches of ~32, not ~2 per batch.
    assert sum(1 for x in grouped if x) < sum(1 for x in spread if x) / 4
    assert np.median([x for x in grouped if x]) >= 20


def test_eval_sample_validates() -> None:
    with pytest.raises(ValueError):
        EvalSample(fraction=0.0)
    with pytest.raises(ValueError):
        EvalSample(fraction=1.5)
    with pytest.raises(ValueError):
        EvalSample(max_per_s=0)
    with pytest.raises(ValueError):
        EvalSample(min_batch=0)


def test_cold_item_and_cold_user_segments() -> None:
    model = Fixed(dict.fromkeys("abcdefgh", 1.0) | {"h": 9.0, "g": 8.0})
    ev = PrequentialEvaluator({"m": model}, k=1, cold_threshold=2)
    # Item h seen 3 times, g once; user w has 3 earlier events, u one.
    ev.process(batch([("v", "h"), ("x", "h"), ("y", "h"), ("y", "g"),
                      ("w", "a"), ("w", "b"), ("w", "c"), ("u", "d")]))
    out = ev.process(batch([("u", "h"), ("w", "g")], t0=100))
    assert out.cold_item.tolist() == [False, True]  # h: 3 earlier events, g: 1
    assert out.cold_user.tolist() == [True, False]  # u: 1 earlier event, w: 3
    tot = ev.totals("m")
    assert tot["n_cold_item"] == 1 and tot["n_cold_user"] == 1
    assert tot["hr_cold_user"] == 1.0  # u gets h (score 9): a hit
    # w's truth g (8) is below h (9): a miss, and the cold-item event it is.
    assert tot["hr_cold_item"] == 0.0


def test_cold_segments_can_be_turned_off() -> None:
    ev = PrequentialEvaluator({"m": Fixed(TABLE)}, k=1, cold_threshold=0)
    ev.process(SEED)
    out = ev.process(batch([("u2", "a"), ("u2", "b")], t0=10))
    assert out.n_evaluated == 1 and not out.cold_item.any() and not out.cold_user.any()
    assert ev.totals("m")["n_cold_user"] == 0 and len(ev._user_count) == 0


class Reordering(Fixed):
    """Adds a batch's items last-first (rows that do not follow the catalog's), may
    learn an item no event has shown (content-only), and may expire one."""

    def __init__(self, extra: str = "", expire: str = "") -> None:
        super().__init__({})
        self.extra, self.expire = extra, expire

    def learn(self, batch: Batch) -> None:
        self.items.add_many(list(batch.items)[::-1])
        if self.extra:
            self.items.add(self.extra)
        if self.expire and self.expire in self.items:
            self.items.remove(self.expire)


def test_model_rows_map_to_the_catalog_whatever_order_models_add_them() -> None:
    """Each model's row -> catalog row map matches a look-up of its ids after every
    batch, for a model that follows the catalog's order, one that does not, one that
    learns an item outside the stream and one that frees a row."""
    models = {"same": Fixed({}), "reversed": Reordering(),
              "content": Reordering(extra="x"), "expiring": Reordering(expire="b")}
    ev = PrequentialEvaluator(models, k=2)
    stream = [batch([("u1", "a"), ("u2", "b"), ("u1", "c")]),
              batch([("u2", "a"), ("u3", "d"), ("u1", "b")], 3.0),
              batch([("u3", "x"), ("u2", "e"), ("u2", "c")], 6.0)]
    for b in stream:
        out = ev.process(b)
        ev._sync()
        for name, model in models.items():
            want = [-1 if i is None else ev.catalog.get(i) for i in model.items.ids]
            assert ev._maps.rows(name).tolist() == want, name
    assert "x" in ev.catalog  # the content-only item is a known item ...
    assert out.n_eligible == 2  # ... so u3's click on it is evaluable, as u2's on c


def test_an_expiring_model_is_scored_on_the_item_that_reuses_a_freed_row() -> None:
    """An embedding model with expiry frees a stale item's row and gives it to the next
    new item; a click on that item is ranked by the model (before the fix it was a
    miss: the evaluator's map left the reused row pointing nowhere)."""
    from online_models.embedding import EmbeddingModel

    model = EmbeddingModel(dim=4, expiry_seconds=100.0, seed=0)
    ev = PrequentialEvaluator({"m": model}, k=10)
    ev.process(Batch.from_columns(["u1", "u2"], ["old", "keep"], None, [0.0, 50.0]))
    old_row = model.items.get("old")
    ev.process(Batch.from_columns(["u2"], ["keep"], None, [120.0]))  # "old" expires
    ev.process(Batch.from_columns(["u3"], ["fresh"], None, [130.0]))
    assert model.items.get("fresh") == old_row  # the freed row, reused
    out = ev.process(Batch.from_columns(["u2"], ["fresh"], None, [140.0]))
    assert out.n_evaluated == 1
    assert out.models["m"].ranks.tolist() != [MISS_RANK]


class Churning(Fixed):
    """Learns a batch's items, then frees a few random rows (an expiring model)."""

    def __init__(self, seed: int) -> None:
        super().__init__({})
        self.rng = np.random.default_rng(seed)

    def learn(self, batch: Batch) -> None:
        self.items.add_many(list(batch.items))
        live = [k for k in self.items.ids if k is not None]
        for k in self.rng.choice(live, size=min(2, len(live)), replace=False).tolist():
            self.items.remove(k)


@pytest.mark.parametrize("log_size", [1 << 16, 3])
def test_an_expiring_models_map_stays_exact_from_the_change_log_or_in_full(
    log_size: int,
) -> None:
    model = Churning(seed=7)
    model.items.CHANGE_LOG = log_size
    ev = PrequentialEvaluator({"m": model}, k=3)
    rng = np.random.default_rng(8)
    for t in range(40):
        users = [f"u{x}" for x in rng.integers(0, 10, 8).tolist()]
        items = [f"i{x}" for x in rng.integers(0, 50, 8).tolist()]
        ev.process(Batch.from_columns(users, items, None, np.arange(8) + 8.0 * t))
        ev._sync()
        want = [-1 if i is None else ev.catalog.get(i) for i in model.items.ids]
        assert ev._maps.rows("m").tolist() == want


def test_events_that_are_not_evaluable_are_counted_by_why() -> None:
    """What every model's figures leave out, by reason, adds up with the evaluable ones."""
    ev = PrequentialEvaluator({"pop": Popularity()})
    users = ["u1", "u1", "u1", "u2", "u2", "u1", "u3"]
    items = ["a", "b", "a", "c", "b", "c", "a"]
    # u1 a: unknown item; u1 b: unknown; u1 a: repeat; u2 c: unknown; u2 b: evaluable;
    # u1 c: evaluable; u3 a: first event of u3
    ev.process(Batch.from_columns(users, items, None, np.arange(7.0)))
    assert ev.excluded == {"unknown_item": 3, "first_user_event": 1, "repeat_item": 1}
    assert ev.n_eligible == 2 and ev.n_eligible + sum(ev.excluded.values()) == ev.n_events
