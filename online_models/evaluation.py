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
and Precision@K (= HR@K / K). Items a model does not know or cannot score (``-inf``, NaN) are a
miss whatever the cut-off and ties are broken pessimistically: the true item is ranked below
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

import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from online_models.base import Batch, IdIndex, OnlineModel, UserHistory

__all__ = [
    "METRICS",
    "MISS_RANK",
    "UNBOUNDED_HISTORY",
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


#: rank given to a true item the model cannot score (non-finite or unknown): a miss
#: at any cut-off, reciprocal rank ~0
MISS_RANK: int = 2**62

#: per-user history bound of the evaluator's default :class:`UserHistory`: the
#: protocol's history is the user's whole history (models slice their query context)
UNBOUNDED_HISTORY: int = 2**31 - 1


def rank_of(scores: np.ndarray, row: int, exclude: np.ndarray | None = None) -> int:
    """1-based rank of ``row`` among finite candidates, ties broken pessimistically.

    Rows in ``exclude`` are not candidates. A row whose score is not finite (or a
    negative ``row``: an item the model does not know) is never a hit: it gets
    :data:`MISS_RANK`, past any cut-off, even when no candidate is finite (an
    empty or diverged model must not earn hits).

    >>> s = np.array([0.5, 0.9, 0.5, -np.inf], dtype=np.float32)
    >>> rank_of(s, 1), rank_of(s, 0), rank_of(s, 0, exclude=np.array([1]))
    (1, 3, 2)
    >>> rank_of(s, 3) == MISS_RANK, rank_of(np.full(2, np.nan), 0) == MISS_RANK
    (True, True)
    """
    if row < 0 or row >= len(scores):
        return MISS_RANK
    if exclude is not None and len(exclude):
        scores = scores.copy()
        scores[exclude] = -np.inf
    true = scores[row]
    if not np.isfinite(true):
        return MISS_RANK
    # NaN compares False and -inf/+inf are handled by >=: +inf candidates outrank.
    return int(np.count_nonzero(scores >= true))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` best finite scores, best first (a lean :func:`top_k`)."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(scores, n - k)[n - k :] if k < n else np.arange(n)
    part = part[np.isfinite(scores[part])]
    return part[np.argsort(-scores[part], kind="stable")]


def _ild(v: np.ndarray) -> float:
    """Intra-list diversity: 1 - mean pairwise cosine of the rows of ``v``."""
    n = len(v)
    if n < 2:
        return float("nan")
    norms = np.sqrt((v * v).sum(axis=1))
    v = v[norms > 0] / norms[norms > 0][:, None]
    total = v.sum(axis=0)
    # sum over ordered pairs a != b of cos(a, b) = |sum of unit rows|^2 - n
    mean_cos = (float(total @ total) - len(v)) / (n * (n - 1))
    return 1.0 - mean_cos


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
        self.sums = dict.fromkeys(("hr", "ndcg", "mrr"), 0.0)
        # List metrics are nan for an empty list (a model that knows nothing yet).
        self.list_sums = dict.fromkeys(("novelty", "diversity"), 0.0)
        self.list_n = dict.fromkeys(("novelty", "diversity"), 0)
        self.rings = {m: _Ring(window) for m in ("hr", "ndcg", "mrr", "novelty", "diversity")}
        self.recommended: set[int] = set()  # item rows ever recommended (totals)
        self.recent_lists: list[np.ndarray] = []  # top-K lists in the window
        self.recent_counts: Counter[int] = Counter()

    def add(self, out: ModelOutcome, lists: list[np.ndarray]) -> None:
        self.n += len(out.hits)
        self.sums["hr"] += float(out.hits.sum())
        self.sums["ndcg"] += float(out.ndcg.sum())
        self.sums["mrr"] += float(out.rr.sum())
        for name, arr in (("novelty", out.novelty), ("diversity", out.diversity)):
            ok = ~np.isnan(arr)
            self.list_sums[name] += float(arr[ok].sum())
            self.list_n[name] += int(ok.sum())
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
            **{
                m: self.list_sums[m] / self.list_n[m] if self.list_n[m] else nan
                for m in ("novelty", "diversity")
            },
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
        The shared per-user history (query context and exclusions); when ``None``
        a fresh, effectively unbounded one (``UserHistory(UNBOUNDED_HISTORY)``):
        every earlier item of the user is excluded and counts as history.
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
        self.history = (
            history if history is not None else UserHistory(max_items=UNBOUNDED_HISTORY)
        )
        self.rolling_window = rolling_window
        self.sketch_dim = sketch_dim
        self.use_model_vectors = use_model_vectors
        self.seed = seed

        self.n_events = 0
        self.catalog = IdIndex()  # items seen in the stream (evaluator rows)
        self._count = np.zeros(0, np.float64)  # events per catalog row
        self._sketch = np.zeros((0, sketch_dim), np.float32)  # random-indexing sketch
        self._trackers = {name: _Tracker(k, rolling_window) for name in self.models}
        # Per model: model row -> catalog row, and the model's IdIndex generation.
        self._m2e: dict[str, np.ndarray] = {n: np.zeros(0, np.int64) for n in self.models}
        self._gen: dict[str, int] = dict.fromkeys(self.models, -1)

    # ------------------------------------------------------------------ stream state
    @property
    def n_known_items(self) -> int:
        return len(self.catalog)

    def seen(self, item: str) -> bool:
        """Whether ``item`` was seen earlier in the stream (or is known to a model)."""
        return item in self.catalog

    def _grow_catalog(self) -> None:
        cap = self.catalog.capacity
        if len(self._count) < cap:
            new = max(16, 2 * cap)
            count = np.zeros(new, np.float64)
            count[: len(self._count)] = self._count
            sketch = np.zeros((new, self.sketch_dim), np.float32)
            sketch[: len(self._sketch)] = self._sketch
            self._count, self._sketch = count, sketch

    def _sync(self) -> None:
        """Extend each model's row map to rows it added since the last call.

        Items a model knows but the evaluator has not seen (a model restored from a
        snapshot next to a fresh evaluator) join the catalog: they are known items.
        """
        for name, model in self.models.items():
            index = model.items
            m2e = self._m2e[name]
            start = 0 if index.generation != self._gen[name] else len(m2e)
            ids = index.ids
            if start >= len(ids) and start == len(m2e):
                continue
            new = np.asarray(
                [-1 if k is None else self.catalog.add(k) for k in ids[start:]], np.int64
            )
            self._m2e[name] = np.concatenate((m2e[:start], new))
            self._gen[name] = index.generation
        self._grow_catalog()

    def _user_signs(self, users: np.ndarray) -> np.ndarray:
        """A fixed random ±1 vector per user, derived from the id (survives restarts)."""
        h = np.fromiter(
            (zlib.crc32(u.encode("utf-8")) for u in users), dtype=np.uint64, count=len(users)
        )
        # splitmix64 of (seed, user hash, coordinate): independent bits per coordinate.
        with np.errstate(over="ignore"):
            x = (h[:, None] + np.uint64(self.seed) * np.uint64(0x632BE59BD9B4E019)
                 + np.arange(1, self.sketch_dim + 1, dtype=np.uint64)[None, :]
                 * np.uint64(0x9E3779B97F4A7C15))
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            x = x ^ (x >> np.uint64(31))
        return np.where(x >> np.uint64(63), 1.0, -1.0).astype(np.float32)

    # ------------------------------------------------------------------ processing
    def process(self, batch: Batch, learn: bool = True) -> BatchOutcome:
        """Score every evaluable event of ``batch``, then (``learn``) train the models on it."""
        self._sync()
        names = list(self.models)
        positions: list[int] = []
        ranks: dict[str, list[int]] = {n: [] for n in names}
        novelty: dict[str, list[float]] = {n: [] for n in names}
        diversity: dict[str, list[float]] = {n: [] for n in names}
        lists: dict[str, list[np.ndarray]] = {n: [] for n in names}
        # Model parameters do not move inside a batch: read vectors and row maps once.
        vectors = {
            n: (m.item_vectors() if self.use_model_vectors else None)
            for n, m in self.models.items()
        }
        e2m: dict[str, np.ndarray] = {}
        for name in names:
            m2e = self._m2e[name]
            # Sized past every row the catalog can reach in this batch, so unknown
            # rows (-1) index the last slot, which stays -1.
            inv = np.full(self.catalog.capacity + len(batch) + 1, -1, np.int64)
            ok = m2e >= 0
            inv[m2e[ok]] = np.flatnonzero(ok)
            e2m[name] = inv
        history = self.history
        catalog = self.catalog
        batch_rows = np.empty(len(batch), np.int64)
        for pos, (user, item) in enumerate(zip(batch.users, batch.items, strict=True)):
            hist = history.get(user)
            if hist and item in catalog and not history.has(user, item):
                positions.append(pos)
                h_rows = catalog.rows(hist)
                e_row = catalog.get(item)
                for name in names:
                    rank, top, nov, div = self._score_event(
                        name, vectors[name], user, hist, e2m[name][h_rows], e2m[name][e_row]
                    )
                    ranks[name].append(rank)
                    novelty[name].append(nov)
                    diversity[name].append(div)
                    lists[name].append(top)
            batch_rows[pos] = catalog.add(item)
            self._grow_catalog()
            self._count[batch_rows[pos]] += 1.0
            history.append(user, item)
            self.n_events += 1
        np.add.at(self._sketch, batch_rows, self._user_signs(batch.users))

        outcome = BatchOutcome(n_events=len(batch), positions=np.asarray(positions, np.int64))
        for name in names:
            r = np.asarray(ranks[name], np.int64)
            hits = (r <= self.k).astype(np.int8)
            out = ModelOutcome(
                hits=hits,
                ranks=r,
                ndcg=np.where(hits == 1, 1.0 / np.log2(r + 1.0), 0.0),
                rr=1.0 / r if len(r) else np.zeros(0),
                novelty=np.asarray(novelty[name], np.float64),
                diversity=np.asarray(diversity[name], np.float64),
            )
            outcome.models[name] = out
            self._trackers[name].add(out, lists[name])
        if learn:
            for model in self.models.values():
                model.learn(batch)
            self._sync()
        return outcome

    def run(self, batches: Iterable[Batch]) -> dict[str, dict[str, float]]:
        """Process every batch; return :meth:`totals` of every model."""
        for b in batches:
            self.process(b)
        return {name: self.totals(name) for name in self.models}

    def _score_event(
        self,
        name: str,
        vectors: np.ndarray | None,
        user: str,
        hist: Sequence[str],
        h_rows: np.ndarray,
        row: int,
    ) -> tuple[int, np.ndarray, float, float]:
        """Rank of the true item (model row ``row``), top-K catalog rows, novelty, diversity."""
        scores = np.array(self.models[name].score_all(user, hist), dtype=np.float32, copy=True)
        scores[h_rows[h_rows >= 0]] = -np.inf
        rank = rank_of(scores, int(row))
        top = _top(scores, self.k)
        m2e = self._m2e[name]
        e_top = m2e[top[top < len(m2e)]]
        e_top = e_top[e_top >= 0]
        if vectors is not None and len(top) and len(vectors) > int(top.max()):
            div = _ild(np.asarray(vectors[top], np.float64))
        else:
            div = _ild(self._sketch[e_top].astype(np.float64))
        return rank, e_top, self._novelty(e_top), div

    def _novelty(self, e_top: np.ndarray) -> float:
        if len(e_top) == 0:
            return float("nan")
        # +1 smoothing: an item recommended before any event counts as seen once.
        p = (self._count[e_top] + 1.0) / (self.n_events + 1.0)
        return float(-np.log2(p).mean())

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
