"""Prequential (test-then-train) evaluation of online models, in event-time order.

The evaluator replays a stream the way the live system sees it:

* a user's :class:`~online_models.history.UserHistory` (what is excluded from their
  recommendations and the recent items a model may use as query context) moves
  **event by event**, as the serving side's does;
* model parameters learn **once per mini-batch**, after every event of the batch
  has been scored.

An event is *evaluated* when its user already has history, its item was seen
earlier in the stream, and the item is not already in the user's history. Each
model then ranks every known item minus the user's history; the position of the
true item gives HR@K (= Recall@K with one relevant item), NDCG@K, MRR@K (the
reciprocal rank within the top K, 0 beyond it, as NDCG@K) and Precision@K
(= HR@K / K). Items a model does not know or cannot score (``-inf``, NaN) are a miss
whatever the cut-off and ties are broken pessimistically: the true item is ranked below
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
and in total. :func:`online_models.click_auc.sampled_auc` scores a click model
(``click_proba``) on positives against sampled negatives, over the events HR@K
evaluates only, and reports the number of positives and pairs it rests on.

Scoring is batched: the evaluated events of a batch are collected while the
history moves, then each model scores them all in one
:meth:`~online_models.base.OnlineModel.score_many` call (the models do not move
inside a batch, so this equals scoring each event when it comes), and ranks, top-K
lists, novelty and diversity are computed on the score matrix at once.

:class:`EvalSample` scores a seeded uniform sample of the evaluable events instead of
all of them (a fraction, or a budget of events per second of wall time); every
figure comes with the count it rests on (``n`` in :meth:`PrequentialEvaluator.totals`
and ``rolling``; ``n_eligible`` for the evaluable events seen). HR@K is also
reported on cold-start segments: events whose item, or whose user, had fewer than
``cold_threshold`` earlier events (:data:`COLD_SEGMENTS`).

The sample and its draws live in :mod:`online_models.eval_sample`, the per-batch
outcomes and each model's running totals in :mod:`online_models.eval_totals`; the
names callers use are re-exported here.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from online_models.base import Batch, IdIndex, OnlineModel, UserHistory, learning_order
from online_models.eval_sample import EvalSample, EventSampler
from online_models.eval_totals import (
    COLD_SEGMENTS,
    BatchOutcome,
    ModelOutcome,
    RunningTotals,
    empty_outcome,
)
from online_models.rowmap import RowMaps

__all__ = [
    "COLD_SEGMENTS",
    "EXCLUSIONS",
    "METRICS",
    "MISS_RANK",
    "UNBOUNDED_HISTORY",
    "BatchOutcome",
    "EvalSample",
    "ModelOutcome",
    "PrequentialEvaluator",
    "rank_of",
]

#: why an event is not evaluable (``PrequentialEvaluator.excluded``): its item was never
#: seen before (nothing can rank it), it is its user's first event (no history to
#: query), or its item is already in the user's history (a repeat: such items are
#: excluded from the user's recommendations, so the event cannot be a hit)
EXCLUSIONS: tuple[str, ...] = ("unknown_item", "first_user_event", "repeat_item")

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
#: at any cut-off
MISS_RANK: int = 2**62

#: per-user history bound of the evaluator's default :class:`UserHistory`: the
#: protocol's history is the user's whole history (models slice their query context)
UNBOUNDED_HISTORY: int = 2**31 - 1


def _tie_groups(users: np.ndarray, timestamps: np.ndarray) -> tuple[list[bool], np.ndarray]:
    """Whether each event has its user's previous event of the batch at the same
    timestamp (the two arrive together), and its place in that group (0: first).

    >>> same, rank = _tie_groups(np.array(["u", "v", "u", "u"], object),
    ...                          np.array([1.0, 1.0, 1.0, 2.0]))
    >>> same, rank.tolist()
    ([False, False, True, False], [0, 0, 1, 0])
    """
    last: dict[str, tuple[float, int]] = {}
    same: list[bool] = []
    rank: list[int] = []
    for user, t in zip(users.tolist(), timestamps.tolist(), strict=True):
        prev = last.get(user)
        r = prev[1] + 1 if prev is not None and prev[0] == t else 0
        same.append(r > 0)
        rank.append(r)
        last[user] = (t, r)
    return same, np.asarray(rank, np.int64)


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


def _ild_rows(v: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Row-wise :func:`_ild` of ``(m, k, d)`` vectors, entries where ``valid`` only."""
    v = np.where(valid[:, :, None], v, 0.0)
    norms = np.sqrt((v * v).sum(axis=2))
    nz = norms > 0
    unit = np.where(nz[:, :, None], v / np.where(nz, norms, 1.0)[:, :, None], 0.0)
    total = unit.sum(axis=1)
    n = valid.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_cos = ((total * total).sum(axis=1) - nz.sum(axis=1)) / (n * (n - 1.0))
    return np.where(n >= 2, 1.0 - mean_cos, np.nan)


class PrequentialEvaluator:
    """Test-then-train evaluation of several models on one stream.

    Every evaluated event of a batch is scored by every model through one
    :meth:`~online_models.base.OnlineModel.score_many` call per model (chunked so a
    score matrix stays under ``max_matrix_bytes``); the user's history moves event
    by event as before, and the models learn once per batch after scoring. A bound
    hybrid (one whose :meth:`~online_models.base.OnlineModel.shared_components` are
    among ``models``) blends the score matrices its components just produced
    instead of scoring them again.

    Parameters
    ----------
    models
        Registry-style name -> model. The evaluator scores them and, unless
        ``process(..., learn=False)``, makes them learn each batch after scoring it
        (in :func:`~online_models.base.learning_order`).
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
    sample
        Which evaluable events are scored (:class:`EvalSample`); all by default.
        Metrics, their counts (``n``) and the per-event hit arrays of
        :class:`BatchOutcome` cover the sampled events only.
    cold_threshold
        Events with an item (user) seen fewer than this many times before count
        as cold-item (cold-user) events in ``totals()["hr_cold_item"]`` etc. The
        cold-user count keeps one counter per distinct user (~30 bytes each);
        ``0`` turns both segments off.
    max_matrix_bytes
        Bound on one model's score matrix (rows x catalogue x 4 bytes).
    clock
        Wall clock of the sampling budget (seconds; for tests).
    ties_together
        Events of one user with the same timestamp arrive *together* (a basket, a page
        of ratings): each is scored against the user's history before the group, and
        is evaluable when its item is neither in it nor earlier in the group. Off (the
        trainer's way), each is scored with the group's earlier events in its
        history, in the stream's order -- which a live system never sees when such a
        group reaches it at once. Feed it batches that do not split a timestamp
        (``to_batches(..., whole_ties=True)``), else the models have learned a group's
        first part when its rest is scored.

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
        sample: EvalSample | None = None,
        cold_threshold: int = 5,
        max_matrix_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.monotonic,
        ties_together: bool = False,
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
        self.sample = sample if sample is not None else EvalSample()
        self.cold_threshold = cold_threshold
        self.max_matrix_bytes = max_matrix_bytes
        self.ties_together = ties_together

        self.n_events = 0
        self.n_eligible = 0  # evaluable events seen, sampled or not
        self.n_evaluated = 0  # events scored (the sample)
        #: events that were not evaluable, by why (:data:`EXCLUSIONS`; with
        #: ``cold_threshold`` 0 there are no user counts, and a user's first event
        #: counts as ``repeat_item``)
        self.excluded: dict[str, int] = dict.fromkeys(EXCLUSIONS, 0)
        #: wall seconds spent scoring and ranking sampled events (all models, all metrics)
        self.scoring_seconds = 0.0
        #: wall seconds each model spent in ``score_many`` (blending, for a bound hybrid)
        self.score_seconds: dict[str, float] = dict.fromkeys(self.models, 0.0)
        self.catalog = IdIndex()  # items seen in the stream (evaluator rows)
        self._count = np.zeros(0, np.float64)  # events per catalog row
        self._sketch = np.zeros((0, sketch_dim), np.float32)  # random-indexing sketch
        # Events not yet in the sketch: (catalog rows, users) per batch. The sketch is
        # read only to score a sample, so it is brought up to date then (or once this
        # many events wait), in one pass over many batches (per-batch array calls cost
        # more than the arithmetic on 256 events).
        self._unsketched: list[tuple[np.ndarray, np.ndarray | Sequence[str]]] = []
        self._n_unsketched = 0
        self._user_count: dict[str, int] = {}  # events per user seen (cold-user counts)
        self._sampler = EventSampler(self.sample, clock)
        self._trackers = {name: RunningTotals(k, rolling_window) for name in self.models}
        self._maps = RowMaps()  # per model: model row -> catalog row

    def replace_model(self, name: str, model: OnlineModel) -> None:
        """Score ``model`` as ``name`` from now on (a new object: a followed model's new
        version); its accuracy figures go on, its item rows are mapped afresh."""
        if name not in self.models:
            raise KeyError(f"no model {name!r} is evaluated")
        self.models[name] = model
        self._maps.invalidate(name)

    def set_budget(self, max_per_s: float | None) -> None:
        """Change the sample's budget of scored events per second of wall time.

        The trainer's CPU governor calls this as the cost of scoring changes; the
        per-event draws (and so the seeded sample's independence of batch
        boundaries) are unaffected.
        """
        self.sample = replace(self.sample, max_per_s=max_per_s)
        self._sampler.spec = self.sample

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
        """Map each model's rows onto catalog rows: the rows it added since the last call,
        and again those it freed or gave to new ids (:class:`RowMaps`).

        Items a model knows but the evaluator has not seen (a model restored from a
        snapshot next to a fresh evaluator) join the catalog: they are known items.
        """
        self._maps.sync(self.models, self.catalog)
        self._grow_catalog()

    SKETCH_LAG = 1 << 16  #: most events waiting to enter the sketch

    def _defer_signs(self, rows: np.ndarray, users: Sequence[str] | np.ndarray) -> None:
        self._unsketched.append((rows, users))
        self._n_unsketched += len(rows)
        if self._n_unsketched >= self.SKETCH_LAG:
            self._flush_signs()

    def _flush_signs(self) -> None:
        """Add the waiting events to the sketch (exact: sums of +-1 in any order)."""
        if not self._unsketched:
            return
        parts = self._unsketched
        self._unsketched, self._n_unsketched = [], 0
        rows = np.concatenate([r for r, _ in parts])
        users = [u for _, us in parts for u in us]
        self._add_signs(rows, users)

    def _add_signs(self, rows: np.ndarray, users: Sequence[str] | np.ndarray) -> None:
        """Add each event's user signs to its item's sketch row: one sparse product
        (touched items x events) @ (events x signs), exact for sums of +-1."""
        touched, inv = np.unique(rows, return_inverse=True)
        per_item = sp.csc_matrix(
            (np.ones(len(rows), np.float32), inv, np.arange(len(rows) + 1)),
            shape=(len(touched), len(rows)),
        )
        self._sketch[touched] += per_item @ self._user_signs(users)

    def _user_signs(self, users: Sequence[str] | np.ndarray) -> np.ndarray:
        """A fixed random ±1 vector per user, derived from the id (survives restarts).

        splitmix64 of (seed, crc32 of the id, word) gives 64 independent sign bits per
        word; one word serves up to 64 coordinates. (Hashing each event's user costs
        less than finding a batch's distinct users first.)
        """
        h = np.fromiter(map(zlib.crc32, map(str.encode, users)), np.uint64, count=len(users))
        words = -(-self.sketch_dim // 64)
        with np.errstate(over="ignore"):
            x = (h[:, None] + np.uint64(self.seed) * np.uint64(0x632BE59BD9B4E019)
                 + np.arange(1, words + 1, dtype=np.uint64)[None, :]
                 * np.uint64(0x9E3779B97F4A7C15))
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            x = x ^ (x >> np.uint64(31))
        bits = np.unpackbits(x.astype("<u8").view(np.uint8), axis=1, count=self.sketch_dim,
                             bitorder="little")
        return np.subtract(1, 2 * bits, dtype=np.float32)

    def forget_users(self, users: Sequence[str]) -> None:
        """Drop the per-user event counts of ``users`` (their history is dropped by its
        owner); a user seen again starts from the length of its history."""
        counts = self._user_count
        for u in users:
            counts.pop(u, None)

    def _user_counts(self, users: np.ndarray) -> np.ndarray:
        """Each event's count of earlier events of its user (then counts the batch in).

        A user first met here (e.g. after a restart from a snapshot) starts from the
        length of its history: a lower bound of its earlier events.
        """
        counts, history = self._user_count, self.history
        get = counts.get
        prior: list[int] = []
        for user in users:
            c = get(user)
            if c is None:
                c = len(history.get(user))
            prior.append(c)
            counts[user] = c + 1
        return np.asarray(prior, np.int64)

    def _catalog_rows(
        self, items: Sequence[str] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Catalog rows of a batch's items (new ones join in order of first appearance),
        whether each item was known at its event (seen before the batch, or earlier in
        it), and its count of earlier events; the counts then include the batch.
        """
        catalog = self.catalog
        # The catalog never frees a row: the rows from here on are the items new here
        # (one probe per new item, where looking up and then adding took two).
        start = catalog.capacity
        rows = catalog.add_many(items)
        if len(rows) == 0:
            return rows, np.zeros(0, bool), np.zeros(0, np.float64)
        unknown = np.flatnonzero(rows >= start)
        if len(unknown):
            self._grow_catalog()
        # Within the batch: the how-manieth occurrence of its row each event is.
        order = np.argsort(rows, kind="stable")
        srows = rows[order]
        first = np.concatenate(([True], srows[1:] != srows[:-1]))
        group_start = np.maximum.accumulate(np.where(first, np.arange(len(srows)), 0))
        within = np.empty(len(rows), np.int64)
        within[order] = np.arange(len(srows)) - group_start
        known = np.ones(len(rows), bool)
        known[unknown] = within[unknown] > 0
        prior = self._count[rows] + within
        np.add.at(self._count, rows, 1.0)
        return rows, known, prior

    # ------------------------------------------------------------------ processing
    def process(self, batch: Batch, learn: bool = True) -> BatchOutcome:
        """Score the (sampled) evaluable events of ``batch``, then (``learn``) train on it."""
        self._sync()
        n = len(batch)
        n_events0 = self.n_events
        draws, accept = self._sampler.draws(n)
        if n and self.cold_threshold > 0:
            user_prior = self._user_counts(batch.users)
        else:  # cold segments off: no per-user counters (nothing is cold)
            user_prior = np.full(n, max(0, self.cold_threshold), np.int64)
        rows, known, item_prior_all = self._catalog_rows(batch.items)
        drawn = np.ones(n, bool) if draws is None else draws < accept
        same_group = None
        if self.ties_together and n:
            same_group, rank = _tie_groups(batch.users, batch.timestamps)
            if self.cold_threshold > 0:
                user_prior = user_prior - rank  # the user's events before its group
        is_new, hist_of = self.history.advance(
            batch.users, batch.items, (known & drawn).tolist(), same_group
        )
        eligible = known & is_new
        n_eligible = int(eligible.sum())
        if n:
            first_event = ((user_prior == 0) & known if self.cold_threshold > 0
                           else np.zeros(n, bool))
            self.excluded["unknown_item"] += int(n - known.sum())
            self.excluded["first_user_event"] += int(first_event.sum())
            self.excluded["repeat_item"] += int((known & ~is_new & ~first_event).sum())
        pos_arr = np.flatnonzero(eligible & drawn)
        positions = pos_arr.tolist()
        batch_rows = rows
        users = [batch.users[p] for p in positions]
        hists = [hist_of[p] for p in positions]
        e_rows = rows[pos_arr]
        item_prior = item_prior_all[pos_arr]
        self.n_events += n
        self.n_eligible += n_eligible
        self.n_evaluated += len(positions)
        self._sampler.spent(n, n_eligible, len(positions))

        outcome = BatchOutcome(
            n_events=n,
            positions=pos_arr,
            n_eligible=n_eligible,
            cold_item=item_prior < self.cold_threshold,
            cold_user=user_prior[pos_arr] < self.cold_threshold,
        )
        lists: dict[str, np.ndarray] = {}
        if positions:
            t0 = time.perf_counter()
            lists = self._score_batch(outcome, users, hists, e_rows, batch_rows, n_events0)
            self.scoring_seconds += time.perf_counter() - t0
        else:
            for name in self.models:
                outcome.models[name] = empty_outcome()
        cold = {"cold_item": outcome.cold_item, "cold_user": outcome.cold_user}
        no_lists = np.zeros((0, self.k), np.int64)
        for name, out in outcome.models.items():
            self._trackers[name].add(out, lists.get(name, no_lists), cold)
        if n:
            self._defer_signs(batch_rows, batch.users)
        if learn:
            for name in learning_order(self.models):
                self.models[name].learn(batch)
            self._sync()
        return outcome

    def run(self, batches: Iterable[Batch]) -> dict[str, dict[str, float]]:
        """Process every batch; return :meth:`totals` of every model."""
        for b in batches:
            self.process(b)
        return {name: self.totals(name) for name in self.models}

    def _score_batch(
        self,
        outcome: BatchOutcome,
        users: list[str],
        hists: list[list[str]],
        e_rows: np.ndarray,
        batch_rows: np.ndarray,
        n_events0: int,
    ) -> dict[str, np.ndarray]:
        """Rank the true item of every evaluated event with every model, in chunks."""
        m = len(users)
        lengths = np.fromiter((len(h) for h in hists), np.int64, count=m)
        h_flat = self.catalog.rows([i for h in hists for i in h])
        h_owner = np.repeat(np.arange(m), lengths)
        cap_e = self.catalog.capacity
        # Readers of shared components go last so they can reuse the components' scores.
        order = list(reversed(learning_order(self.models)))
        ranks = {name: np.empty(m, np.int64) for name in order}
        lists = {name: np.full((m, self.k), -1, np.int64) for name in order}
        novelty = {name: np.empty(m, np.float64) for name in order}
        diversity = {name: np.empty(m, np.float64) for name in order}
        vectors = {
            n: (self.models[n].item_vectors() if self.use_model_vectors else None) for n in order
        }
        e2m: dict[str, np.ndarray] = {}
        for name in order:
            m2e = self._maps.rows(name)
            inv = np.full(cap_e + 1, -1, np.int64)  # the last slot stays -1 (unknown)
            ok = m2e >= 0
            inv[m2e[ok]] = np.flatnonzero(ok)
            e2m[name] = inv
        widest = max((self.models[nm].items.capacity for nm in order), default=1)
        step = max(1, int(self.max_matrix_bytes // (4 * max(1, widest))))
        h_start = np.concatenate(([0], np.cumsum(lengths)))
        for lo in range(0, m, step):
            hi = min(m, lo + step)
            raw: dict[int, np.ndarray] = {}
            sel = slice(h_start[lo], h_start[hi])
            for name in order:
                model = self.models[name]
                t0 = time.perf_counter()
                shared = model.shared_components()
                blend = getattr(model, "blend_many", None)
                pre = {c: raw[id(cm)] for c, cm in shared.items() if id(cm) in raw}
                if blend is not None and pre:
                    scores = blend(users[lo:hi], hists[lo:hi], pre)
                else:
                    scores = model.score_many(users[lo:hi], hists[lo:hi])
                self.score_seconds[name] += time.perf_counter() - t0
                raw[id(model)] = scores
                scores = np.array(scores, np.float32, copy=True)
                inv = e2m[name]
                h_rows = inv[h_flat[sel]]
                owner = h_owner[sel] - lo
                keep = (h_rows >= 0) & (h_rows < scores.shape[1])
                scores[owner[keep], h_rows[keep]] = -np.inf
                truth = inv[e_rows[lo:hi]]
                r, top = self._rank_rows(scores, truth)
                ranks[name][lo:hi] = r
                m2e = self._maps.rows(name)
                ext = np.append(m2e, -1)  # top's -1 padding and rows past the map -> -1
                e_top = ext[np.where((top >= 0) & (top < len(m2e)), top, -1)]
                lists[name][lo:hi] = e_top
                novelty[name][lo:hi] = self._novelty_rows(
                    e_top, batch_rows, np.asarray(outcome.positions[lo:hi]), n_events0
                )
                diversity[name][lo:hi] = self._diversity_rows(vectors[name], top, e_top)
        for name in self.models:
            r = ranks[name]
            hits = (r <= self.k).astype(np.int8)
            outcome.models[name] = ModelOutcome(
                hits=hits,
                ranks=r,
                ndcg=np.where(hits == 1, 1.0 / np.log2(r + 1.0), 0.0),
                rr=np.where(hits == 1, 1.0 / r, 0.0),  # MRR@K: nothing beyond K
                novelty=novelty[name],
                diversity=diversity[name],
            )
        return lists

    def _rank_rows(self, scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row: :func:`rank_of` the ``truth`` row and :func:`_top` K rows (-1 padded)."""
        c, cap = scores.shape
        k = self.k
        ok = (truth >= 0) & (truth < cap)
        true = np.full(c, np.nan, np.float32)
        if cap:
            true[ok] = scores[np.flatnonzero(ok), truth[ok]]
        finite = np.isfinite(true)
        with np.errstate(invalid="ignore"):
            counts = np.count_nonzero(scores >= true[:, None], axis=1)
        ranks = np.where(finite, counts, MISS_RANK).astype(np.int64)
        top = np.full((c, k), -1, np.int64)
        if cap == 0:
            return ranks, top
        if k < cap:
            part = np.argpartition(scores, cap - k, axis=1)[:, cap - k :]
        else:
            part = np.broadcast_to(np.arange(cap), (c, cap))
        vals = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        part = np.take_along_axis(part, order, axis=1)
        vals = np.take_along_axis(vals, order, axis=1)
        width = min(k, cap)
        top[:, :width] = np.where(np.isfinite(vals), part, -1)[:, :width]
        return ranks, top

    def _novelty_rows(
        self, e_top: np.ndarray, batch_rows: np.ndarray, positions: np.ndarray, n_events0: int
    ) -> np.ndarray:
        """Mean self-information of each list, with counts as they were at its event."""
        valid = e_top >= 0
        safe = np.where(valid, e_top, 0)
        # Counts now hold the whole batch; take back its events at or after each position.
        later = batch_rows[None, None, :] == safe[:, :, None]
        later &= np.arange(len(batch_rows))[None, None, :] >= positions[:, None, None]
        count = self._count[safe] - later.sum(axis=2)
        # +1 smoothing: an item recommended before any event counts as seen once.
        p = (count + 1.0) / (n_events0 + positions[:, None] + 1.0)
        info = np.where(valid, -np.log2(p), 0.0)
        n = valid.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, info.sum(axis=1) / n, np.nan)

    def _diversity_rows(
        self, vectors: np.ndarray | None, top: np.ndarray, e_top: np.ndarray
    ) -> np.ndarray:
        """Intra-list diversity of each list: the model's vectors if it has them, else sketch."""
        valid_e = e_top >= 0
        self._flush_signs()
        div = _ild_rows(
            self._sketch[np.where(valid_e, e_top, 0)].astype(np.float64), valid_e
        )
        if vectors is not None and len(vectors):
            valid_m = top >= 0
            use = valid_m.any(axis=1) & (top.max(axis=1) < len(vectors))
            if use.any():
                v = np.asarray(vectors[np.where(valid_m[use], np.clip(top[use], 0, None), 0)],
                               np.float64)
                div[use] = _ild_rows(v, valid_m[use])
        return div

    # ------------------------------------------------------------------ metrics
    def totals(self, model: str) -> dict[str, float]:
        """Metrics of ``model`` over every evaluated event so far.

        ``n`` is the number of evaluated (sampled) events the figures rest on and
        ``n_eligible`` the evaluable events seen, sampled or not;
        ``hr_cold_item`` / ``n_cold_item`` and ``hr_cold_user`` / ``n_cold_user``
        are HR@K and the evaluated count on events whose item (user) had fewer than
        ``cold_threshold`` earlier events.
        """
        out = self._trackers[model].totals(self.n_known_items)
        out["n_eligible"] = float(self.n_eligible)
        return out

    def rolling(self, model: str) -> dict[str, float]:
        """Metrics of ``model`` over the last ``rolling_window`` evaluated events (``n``)."""
        return self._trackers[model].rolling(self.n_known_items)
