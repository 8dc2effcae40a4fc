"""Prequential (test-then-train) evaluation of online models, in event-time order.

The evaluator replays a stream the way the live system sees it:

* a user's :class:`~online_models.base.UserHistory` (what is excluded from their
  recommendations and the recent items a model may use as query context) moves
  **event by event**, as the serving side's does;
* model parameters learn **once per mini-batch**, after every event of the batch
  has been scored.

An event is *evaluated* when its user already has history, its item was seen
earlier in the stream, and the item is not already in the user's history. Each
model then ranks every known item minus the user's history; the position of the
true item gives HR@K (= Recall@K with one relevant item), NDCG@K, reciprocal rank
and Precision@K (= HR@K / K). Items a model does not know score ``-inf`` (a miss,
ranked last) and ties are broken pessimistically: the true item is ranked below
every item with an equal score, so a constant scorer earns nothing.

On the recommended top-K lists the evaluator also reports catalog coverage
(distinct recommended items / known items), novelty (mean self-information
``-log2 p(i)`` of recommended items, ``p`` from the stream's item counts) and
intra-list diversity (``1 -`` mean pairwise cosine within a list). Diversity uses a
model's own item vectors when it has them (``item_vectors()``), else a cheap
random-indexing sketch of the item-user matrix kept by the evaluator: every user
gets a fixed random ±1 vector (``sketch_dim`` wide) and an item's sketch is the sum
of its users' vectors, so sketch cosine approximates the cosine of the items'
user-incidence vectors (a co-occurrence similarity) at O(dim) per event.

Every metric is available per event (for drift detectors), over a rolling window
and in total. :func:`sampled_auc` scores a click model (``click_proba``) on
positives against sampled negatives.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from online_models.base import Batch, OnlineModel, UserHistory, top_k

__all__ = [
    "METRICS",
    "BatchOutcome",
    "ClickModel",
    "ModelOutcome",
    "PrequentialEvaluator",
    "rank_of",
    "sampled_auc",
]

#: names of the metrics in :meth:`PrequentialEvaluator.totals` / ``rolling``
METRICS: tuple[str, ...] = (
    "hr",
    "ndcg",
    "mrr",
    "precision",
    "coverage",
    "novelty",
    "diversity",
)


def rank_of(scores: np.ndarray, row: int, exclude: np.ndarray | None = None) -> int:
    """1-based rank of ``row`` among finite candidates, ties broken pessimistically.

    Rows in ``exclude`` are not candidates. A row whose score is not finite (or a
    negative ``row``: an item the model does not know) ranks after every finite
    candidate.

    >>> s = np.array([0.5, 0.9, 0.5, -np.inf], dtype=np.float32)
    >>> rank_of(s, 1), rank_of(s, 0), rank_of(s, 0, exclude=np.array([1])), rank_of(s, 3)
    (1, 3, 2, 4)
    """
    if exclude is not None and len(exclude):
        scores = scores.copy()
        scores[exclude] = -np.inf
    finite = np.isfinite(scores)
    if row < 0 or row >= len(scores) or not finite[row]:
        return int(finite.sum()) + 1
    return int(np.count_nonzero(scores >= scores[row]))


@dataclass
class ModelOutcome:
    """One model's results on the evaluated events of a batch, in event order."""

    hits: np.ndarray  # int8, 1 when the true item is in the top K
    ranks: np.ndarray  # int64, 1-based rank of the true item
    ndcg: np.ndarray  # float64, 1/log2(rank+1) for hits, else 0
    rr: np.ndarray  # float64, 1/rank
    novelty: np.ndarray  # float64, mean self-information of the top-K list
    diversity: np.ndarray  # float64, intra-list diversity of the top-K list (nan if < 2 items)


@dataclass
class BatchOutcome:
    """What :meth:`PrequentialEvaluator.process` measured on one batch.

    ``positions`` are the indices (in the batch) of the evaluated events;
    ``models[name]`` holds that model's per-event arrays aligned with them.
    """

    n_events: int
    positions: np.ndarray
    models: dict[str, ModelOutcome] = field(default_factory=dict)

    @property
    def n_evaluated(self) -> int:
        return len(self.positions)


class _Ring:
    """Fixed-size ring buffer of floats with a running sum (nan-aware counts)."""

    def __init__(self, size: int) -> None:
        self.buf = np.full(size, np.nan)
        self.pos = 0
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        size = len(self.buf)
        values = np.asarray(values, np.float64)[-size:]
        idx = (self.pos + np.arange(len(values))) % size
        self.buf[idx] = values
        self.pos = (self.pos + len(values)) % size
        self.n = min(size, self.n + len(values))

    def mean(self) -> float:
        if self.n == 0:
            return float("nan")
        vals = self.buf if self.n == len(self.buf) else self.buf[: self.n]
        ok = ~np.isnan(vals)
        return float(vals[ok].mean()) if ok.any() else float("nan")


class _Tracker:
    """Totals and rolling windows of one model's metrics."""

    def __init__(self, k: int, window: int) -> None:
        self.k = k
        self.window = window
        self.n = 0
        self.sums = dict.fromkeys(("hr", "ndcg", "mrr", "novelty"), 0.0)
        self.div_sum = 0.0
        self.div_n = 0
        self.rings = {m: _Ring(window) for m in ("hr", "ndcg", "mrr", "novelty", "diversity")}
        self.recommended: set[int] = set()  # item rows ever recommended (totals)
        self.recent_lists: list[np.ndarray] = []  # top-K lists in the window
        self.recent_counts: Counter[int] = Counter()

    def add(self, out: ModelOutcome, lists: list[np.ndarray]) -> None:
        self.n += len(out.hits)
        self.sums["hr"] += float(out.hits.sum())
        self.sums["ndcg"] += float(out.ndcg.sum())
        self.sums["mrr"] += float(out.rr.sum())
        self.sums["novelty"] += float(out.novelty.sum())
        ok = ~np.isnan(out.diversity)
        self.div_sum += float(out.diversity[ok].sum())
        self.div_n += int(ok.sum())
        for name, arr in (("hr", out.hits), ("ndcg", out.ndcg), ("mrr", out.rr),
                          ("novelty", out.novelty), ("diversity", out.diversity)):
            self.rings[name].extend(arr)
        for lst in lists:
            self.recommended.update(lst.tolist())
            self.recent_lists.append(lst)
            self.recent_counts.update(lst.tolist())
        excess = len(self.recent_lists) - self.window
        if excess > 0:
            for lst in self.recent_lists[:excess]:
                self.recent_counts.subtract(lst.tolist())
            self.recent_lists = self.recent_lists[excess:]
            # Counter.subtract leaves zeros behind; drop them so len() is the coverage.
            self.recent_counts = +self.recent_counts

    def totals(self, n_known: int) -> dict[str, float]:
        n = self.n
        nan = float("nan")
        return {
            "n": float(n),
            "hr": self.sums["hr"] / n if n else nan,
            "ndcg": self.sums["ndcg"] / n if n else nan,
            "mrr": self.sums["mrr"] / n if n else nan,
            "precision": self.sums["hr"] / n / self.k if n else nan,
            "coverage": len(self.recommended) / n_known if n_known else nan,
            "novelty": self.sums["novelty"] / n if n else nan,
            "diversity": self.div_sum / self.div_n if self.div_n else nan,
        }

    def rolling(self, n_known: int) -> dict[str, float]:
        hr = self.rings["hr"].mean()
        return {
            "n": float(self.rings["hr"].n),
            "hr": hr,
            "ndcg": self.rings["ndcg"].mean(),
            "mrr": self.rings["mrr"].mean(),
            "precision": hr / self.k,
            "coverage": len(self.recent_counts) / n_known if n_known else float("nan"),
            "novelty": self.rings["novelty"].mean(),
            "diversity": self.rings["diversity"].mean(),
        }


class PrequentialEvaluator:
    """Test-then-train evaluation of several models on one stream.

    Parameters
    ----------
    models
        Registry-style name -> model. The evaluator scores them and, unless
        ``process(..., learn=False)``, makes them learn each batch after scoring it.
    k
        Cut-off of HR/NDCG/Precision and length of the recommended lists.
    history
        The shared per-user history (query context and exclusions); a fresh
        ``UserHistory()`` when ``None``.
    rolling_window
        Number of evaluated events in the rolling metrics.
    sketch_dim
        Width of the random-indexing item sketch used for diversity when a model
        has no item vectors.
    use_model_vectors
        Measure diversity with a model's own ``item_vectors()`` when it has them;
        ``False`` uses the evaluator's sketch for every model (comparable numbers).
    seed
        Seed of the sketch's random user vectors.

    Examples
    --------
    >>> from online_models.base import Batch
    >>> class LastItem(OnlineModel):  # scores the alphabetically next item highest
    ...     name = "toy"
    ...     def __init__(self):
    ...         from online_models.base import IdIndex
    ...         self.items, self.users = IdIndex(), IdIndex()
    ...     def learn(self, batch): self.items.add_many(batch.items)
    ...     def score_all(self, user, history=()):
    ...         return -np.asarray([abs(ord(i) - ord(history[-1]) - 1) for i in self.items.ids],
    ...                            dtype=np.float32)
    ...     def similar(self, item, k=10): return []
    ...     def get_state(self): raise NotImplementedError
    ...     @classmethod
    ...     def from_state(cls, state): raise NotImplementedError
    >>> ev = PrequentialEvaluator({"toy": LastItem()}, k=1)
    >>> _ = ev.process(Batch.from_columns(["v", "v", "v"], ["a", "b", "c"], None, [1, 2, 3]))
    >>> out = ev.process(Batch.from_columns(["u", "u", "u"], ["a", "b", "c"], None, [4, 5, 6]))
    >>> out.n_evaluated, out.models["toy"].hits.tolist(), ev.totals("toy")["hr"]
    (2, [1, 1], 1.0)
    """

    def __init__(
        self,
        models: Mapping[str, OnlineModel],
        k: int = 10,
        history: UserHistory | None = None,
        rolling_window: int = 1000,
        sketch_dim: int = 32,
        use_model_vectors: bool = True,
        seed: int = 0,
    ) -> None:
        if k <= 0:
            raise ValueError("k must be positive")
        self.models = dict(models)
        self.k = k
        self.history = history if history is not None else UserHistory()
        self.rolling_window = rolling_window
        self.sketch_dim = sketch_dim
        self.use_model_vectors = use_model_vectors
        self.seed = seed

        self.n_events = 0
        self._item_count: dict[str, int] = {}  # items seen in the stream -> events
        self._trackers = {name: _Tracker(k, rolling_window) for name in self.models}
        self._sketch: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ stream state
    @property
    def n_known_items(self) -> int:
        return len(self._item_count)

    def seen(self, item: str) -> bool:
        """Whether ``item`` was seen earlier in the stream (or is known to a model).

        Counting items the models know makes a restarted evaluator (fresh counts,
        models restored from a snapshot) treat the restored catalog as seen.
        """
        return item in self._item_count or any(item in m.items for m in self.models.values())

    def _user_vector(self, user: str) -> np.ndarray:
        # Derived from the id, not from arrival order, so it survives restarts.
        rng = np.random.default_rng([self.seed, zlib.crc32(user.encode("utf-8"))])
        return rng.choice(np.array([-1.0, 1.0], np.float32), size=self.sketch_dim)

    def _observe(self, user: str, item: str) -> None:
        self._item_count[item] = self._item_count.get(item, 0) + 1
        sk = self._sketch.get(item)
        if sk is None:
            sk = self._sketch[item] = np.zeros(self.sketch_dim, np.float32)
        sk += self._user_vector(user)
        self.history.append(user, item)
        self.n_events += 1

    # ------------------------------------------------------------------ processing
    def process(self, batch: Batch, learn: bool = True) -> BatchOutcome:
        """Score every evaluable event of ``batch``, then (``learn``) train the models on it."""
        names = list(self.models)
        positions: list[int] = []
        cols: dict[str, dict[str, list[float]]] = {
            n: {"rank": [], "nov": [], "div": []} for n in names
        }
        lists: dict[str, list[np.ndarray]] = {n: [] for n in names}
        # Model parameters do not move inside a batch, so item vectors are read once.
        vectors = {
            n: (m.item_vectors() if self.use_model_vectors else None)
            for n, m in self.models.items()
        }
        for pos, (user, item) in enumerate(zip(batch.users, batch.items, strict=True)):
            hist = self.history.get(user)
            if hist and item not in hist and self.seen(item):
                positions.append(pos)
                for name in names:
                    rank, top, nov, div = self._score_event(
                        self.models[name], vectors[name], user, item, hist
                    )
                    c = cols[name]
                    c["rank"].append(rank)
                    c["nov"].append(nov)
                    c["div"].append(div)
                    lists[name].append(top)
            self._observe(user, item)

        outcome = BatchOutcome(n_events=len(batch), positions=np.asarray(positions, np.int64))
        for name in names:
            ranks = np.asarray(cols[name]["rank"], np.int64)
            hits = (ranks <= self.k).astype(np.int8)
            ndcg = np.where(hits == 1, 1.0 / np.log2(ranks + 1.0), 0.0)
            out = ModelOutcome(
                hits=hits,
                ranks=ranks,
                ndcg=ndcg,
                rr=1.0 / ranks if len(ranks) else np.zeros(0),
                novelty=np.asarray(cols[name]["nov"], np.float64),
                diversity=np.asarray(cols[name]["div"], np.float64),
            )
            outcome.models[name] = out
            self._trackers[name].add(out, lists[name])
        if learn:
            for model in self.models.values():
                model.learn(batch)
        return outcome

    def run(self, batches: Iterable[Batch]) -> dict[str, dict[str, float]]:
        """Process every batch; return :meth:`totals` of every model."""
        for b in batches:
            self.process(b)
        return {name: self.totals(name) for name in self.models}

    def _score_event(
        self,
        model: OnlineModel,
        vectors: np.ndarray | None,
        user: str,
        item: str,
        hist: Sequence[str],
    ) -> tuple[int, np.ndarray, float, float]:
        scores = np.array(model.score_all(user, hist), dtype=np.float32, copy=True)
        h_rows = model.items.rows(hist)
        scores[h_rows[h_rows >= 0]] = -np.inf
        row = model.items.get(item)
        rank = rank_of(scores, row)
        top = top_k(scores, self.k)
        return rank, top, self._novelty(model, top), self._diversity(model, vectors, top)

    def _novelty(self, model: OnlineModel, top: np.ndarray) -> float:
        if len(top) == 0:
            return float("nan")
        ids = model.items.ids
        total = self.n_events + 1
        counts = [self._item_count.get(ids[r] or "", 0) + 1 for r in top.tolist()]
        return float(np.mean([-math.log2(c / total) for c in counts]))

    def _diversity(self, model: OnlineModel, vectors: np.ndarray | None, top: np.ndarray) -> float:
        if len(top) < 2:
            return float("nan")
        if vectors is not None and len(vectors) > int(top.max()):
            v = np.asarray(vectors[top], np.float64)
        else:
            ids = model.items.ids
            zero = np.zeros(self.sketch_dim, np.float32)
            v = np.stack([self._sketch.get(ids[r] or "", zero) for r in top.tolist()]).astype(
                np.float64
            )
        norms = np.linalg.norm(v, axis=1)
        v = v / np.where(norms > 0, norms, 1.0)[:, None]
        sim = v @ v.T
        n = len(top)
        mean_sim = (sim.sum() - np.trace(sim)) / (n * (n - 1))
        return float(1.0 - mean_sim)

    # ------------------------------------------------------------------ metrics
    def totals(self, model: str) -> dict[str, float]:
        """Metrics of ``model`` over every evaluated event so far (plus ``n``)."""
        return self._trackers[model].totals(self.n_known_items)

    def rolling(self, model: str) -> dict[str, float]:
        """Metrics of ``model`` over the last ``rolling_window`` evaluated events."""
        return self._trackers[model].rolling(self.n_known_items)


# --------------------------------------------------------------------------- click AUC


@runtime_checkable
class ClickModel(Protocol):
    """A model with a click-probability head (e.g. the embedding model's MLP re-ranker)."""

    def click_proba(
        self, user: str, items: Sequence[str], history: Sequence[str] = ()
    ) -> np.ndarray: ...


def sampled_auc(
    model: object,
    users: Sequence[str],
    items: Sequence[str],
    n_negatives: int = 20,
    history: UserHistory | None = None,
    seed: int = 0,
) -> float:
    """AUC of a click model: each positive ``(user, item)`` against sampled negatives.

    Negatives are drawn uniformly from the model's known items, excluding the
    positive and the user's history. The AUC is the fraction of (positive,
    negative) pairs ordered correctly, ties counting one half. Returns ``nan``
    when the model has no ``click_proba`` or no pair could be formed.

    >>> class Toy:
    ...     from online_models.base import IdIndex
    ...     items = IdIndex(["a", "b", "c"])
    ...     def click_proba(self, user, items, history=()):
    ...         return np.array([1.0 if i == "a" else 0.0 for i in items])
    >>> sampled_auc(Toy(), ["u"], ["a"], n_negatives=5)
    1.0
    """
    if not isinstance(model, ClickModel):
        return float("nan")
    index = getattr(model, "items", None)
    if index is None:
        return float("nan")
    ids = [i for i in index.ids if i is not None]
    if not ids:
        return float("nan")
    catalog = np.asarray(ids, dtype=object)
    rng = np.random.default_rng(seed)
    correct = 0.0
    pairs = 0
    for user, pos in zip(users, items, strict=True):
        hist = history.get(user) if history is not None else []
        banned = {pos, *hist}
        draw = catalog[rng.integers(0, len(catalog), size=n_negatives * 2)]
        negs = [str(x) for x in draw if x not in banned][:n_negatives]
        if not negs:
            continue
        p = np.asarray(model.click_proba(user, [pos, *negs], hist), np.float64)
        correct += float((p[1:] < p[0]).sum() + 0.5 * (p[1:] == p[0]).sum())
        pairs += len(negs)
    return correct / pairs if pairs else float("nan")
