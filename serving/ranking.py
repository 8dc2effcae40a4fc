"""Ranking over one loaded snapshot: model scores, exclusion of seen items, top-k.

The hot path is one ``score_all`` call of the chosen model (for factor models one
product over the contiguous float32 item matrix), then one ``argpartition``.
Nothing loops in Python over all items per request.

Exact factor scoring (:class:`~serving.scoring.FactorScorer`) and its top-k live in
:mod:`serving.scoring`; :class:`~serving.batcher.ScoreBatcher` (:mod:`serving.batcher`)
lets concurrent requests share one pass over the item matrix. Both are re-exported here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from online_models.base import OnlineModel
from online_models.snapshot import Snapshot
from serving.batcher import ScoreBatcher
from serving.live import LiveContext
from serving.scoring import FactorScorer, select_top_k, top_k_excluding

__all__ = [
    "FactorIndex",
    "FactorScorer",
    "LoadedSnapshot",
    "Recommendation",
    "ScoreBatcher",
    "UnknownModelError",
    "select_top_k",
    "top_k_excluding",
]


class UnknownModelError(LookupError):
    """The requested model is not in the loaded snapshot."""


@dataclass(frozen=True, slots=True)
class Recommendation:
    items: list[tuple[str, float]]
    #: the model the request asked for (or the default it got)
    model: str
    #: the answer is not the model's: the user is unknown to it and has no history
    fallback: bool
    rank_seconds: float
    #: what ranked the items: ``model``, or on a fallback ``live_popularity`` (the
    #: snapshot's popularity plus the live clicks: not what ``model=popularity``
    #: answers, the snapshot's alone) or ``live_clicks`` (no popularity model loaded:
    #: the live clicks alone)
    served_by: str


#: Held while a model that is not a factor model scores a request (``score_all``:
#: the count models, the blends, ``seqnn``). Their scoring is many small numpy and
#: Python steps under the interpreter lock, and rank threads running them at once
#: hand the lock back and forth at every step: on ml-latest-small (9,700 items) four
#: threads answered the hybrid at 391 requests/s against 888 for one, and the
#: server's hybrid saturated at 300 requests/s (BENCHMARKS.md, "Serving every
#: model"). One at a time, the rank threads queue here and the answers flow at one
#: thread's rate. Factor models are not affected: their products go through the
#: batcher or release the interpreter lock for whole matrix products.
PYTHON_SCORING = threading.Lock()


class FactorIndex:
    """Approximate top-k (HNSW, inner product) for a factor model scored ``V·q + b``.

    The bias is folded in as one more dimension: items are indexed as ``[V_i, b_i]``
    and queried with ``[q, 1]``, so the inner product *is* the model's score. Built
    from a :class:`FactorScorer`, i.e. only for models where that identity was
    checked.

    An index is carried across snapshot swaps (rows are stable ids) and only
    proposes candidates: the serving snapshot rescores them with its own factors and
    searches rows added since the build exactly. Building one takes tens of seconds
    per 100k items on 2 cores, so it is rebuilt in the background, not per swap.

    Parameters
    ----------
    scorer
        The exact scorer whose ``V`` and ``b`` are indexed.
    ef, m, ef_construction
        HNSW search breadth, graph degree and build breadth (recall vs speed).
    """

    def __init__(
        self, scorer: FactorScorer, ef: int = 64, m: int = 16, ef_construction: int = 100
    ) -> None:
        import hnswlib

        vectors, bias = scorer.vectors, scorer.bias
        d = vectors.shape[1]
        rows = np.flatnonzero(np.isfinite(bias))
        data = np.empty((len(rows), d + 1), np.float32)
        data[:, :d] = vectors[rows]
        data[:, d] = bias[rows]
        self.index = hnswlib.Index(space="ip", dim=d + 1)
        self.index.init_index(max_elements=max(1, len(rows)), ef_construction=ef_construction, M=m)
        if len(rows):
            self.index.add_items(data, rows)
        self.ef = ef
        self.index.set_ef(ef)
        self.size = len(rows)
        self.rows = scorer.size  # rows at build time; later ones are searched exactly
        self.dim = d
        self.built_at = time.time()
        self._lock = threading.Lock()

    def query(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` (rows, scores), best first."""
        k = min(k, self.size)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        vec = np.empty((1, len(q) + 1), np.float32)
        vec[0, :-1] = q
        vec[0, -1] = 1.0
        # ef is index-wide state: a larger k widens it for that query only, under a
        # lock so a concurrent query never runs with another one's ef.
        if k > self.ef:
            with self._lock:
                self.index.set_ef(k)
                labels, dist = self.index.knn_query(vec, k=k, num_threads=1)
                self.index.set_ef(self.ef)
        else:
            labels, dist = self.index.knn_query(vec, k=k, num_threads=1)
        # hnswlib's "ip" distance is 1 - dot.
        return labels[0].astype(np.int64), (1.0 - dist[0]).astype(np.float32)


def _created_ts(manifest: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(manifest["created_at"])).timestamp()
    except (KeyError, ValueError):
        return None


class LoadedSnapshot:
    """A verified snapshot ready to serve, plus the cached "popular now" list.

    Parameters
    ----------
    snapshot
        What :meth:`SnapshotStore.load` returned.
    fallbacks
        Model names tried, in order, when a request names no model.
    default_model
        The preferred model.
    ann
        Build an approximate (HNSW) index for factor models of at least
        ``ann_min_items`` items and rank those with it.
    ann_min_items, ann_ef
        Catalogue size from which the index is used, and its search breadth.
    previous
        The snapshot being replaced: its ANN indexes are reused (see
        :class:`FactorIndex`) instead of rebuilt on the swap path.
    batcher
        Score exact factor queries in batches with concurrent requests (shared by
        every snapshot of the process); ``None`` scores each request on its own.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        default_model: str = "ranked",
        fallbacks: Sequence[str] = ("hybrid", "bpr", "popularity"),
        ann: bool = False,
        ann_min_items: int = 0,
        ann_ef: int = 128,
        previous: LoadedSnapshot | None = None,
        batcher: ScoreBatcher | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.batcher = batcher
        self.version = snapshot.version
        self.manifest = snapshot.manifest
        self.watermark = snapshot.watermark
        self.created_at = _created_ts(snapshot.manifest)
        self.loaded_at = time.time()
        models = snapshot.models
        if not models:
            raise ValueError(f"snapshot {snapshot.version} holds no models")
        order = [default_model, *fallbacks, *sorted(models)]
        self.default_model = next(m for m in order if m in models)
        self._pop_model: OnlineModel | None = models.get("popularity")
        self._pop_scores: np.ndarray | None = (
            self._pop_model.score_all("") if self._pop_model is not None else None
        )
        self._popular: list[tuple[str, float]] = []
        self._popular_at = -np.inf
        self._popular_lock = threading.Lock()
        # Exact fast path for models scored b + V·q, checked against score_all once
        # here; approximate indexes beside it, built at load (not on the request path).
        self.scorers: dict[str, FactorScorer] = {}
        self.ann: dict[str, FactorIndex] = {}
        for name, model in models.items():
            scorer = FactorScorer.probe(model)
            if scorer is None:
                continue
            self.scorers[name] = scorer
            if ann and scorer.size >= ann_min_items:
                old = previous.ann.get(name) if previous is not None else None
                if old is not None and old.dim == scorer.vectors.shape[1]:
                    self.ann[name] = old
                else:
                    self.ann[name] = FactorIndex(scorer, ef=ann_ef)
        self.ann_ef = ann_ef

    def rebuild_indexes(self) -> None:
        """Rebuild every ANN index from this snapshot's factors (slow: call off-loop)."""
        for name in list(self.ann):
            self.ann[name] = FactorIndex(self.scorers[name], ef=self.ann_ef)

    # ------------------------------------------------------------------ lookup
    def model(self, name: str | None) -> tuple[str, OnlineModel]:
        name = name or self.default_model
        model = self.snapshot.models.get(name)
        if model is None:
            raise UnknownModelError(
                f"model {name!r} is not in snapshot {self.version}; "
                f"loaded: {sorted(self.snapshot.models)}"
            )
        return name, model

    def history(self, user: str, live: LiveContext | None) -> list[str]:
        """Snapshot history then live clicks, oldest first, without repeats."""
        items = self.snapshot.history.get(user)
        if live is not None:
            extra = live.items(user)
            if extra:
                items = list(dict.fromkeys([*items, *extra]))
        return items

    # ------------------------------------------------------------------ ranking
    def recommend(
        self,
        user: str,
        k: int,
        model_name: str | None = None,
        exclude_seen: bool = True,
        live: LiveContext | None = None,
    ) -> Recommendation:
        name, model = self.model(model_name)
        t0 = time.perf_counter()
        history = self.history(user, live)
        if not history and model.users.get(user) < 0:
            items = self.popular(live, k)
            return Recommendation(items, name, True, time.perf_counter() - t0,
                                  self.popular_source)
        exclude = np.zeros(0, np.int64)
        if exclude_seen and history:
            rows = model.items.rows(history)
            exclude = rows[rows >= 0]
        ids = model.items.ids
        scorer = self.scorers.get(name)
        if scorer is not None:
            q = scorer.query(user, history)
            index = self.ann.get(name)
            if index is not None and q is not None:
                # Over-fetch by the number excluded so k survive the filter; rows the
                # index has not seen yet join the candidates, all scored exactly.
                cand, _ = index.query(q, k + len(exclude))
                if scorer.size > index.rows:
                    cand = np.concatenate([cand, np.arange(index.rows, scorer.size)])
                rows, sc = scorer.rescore(q, cand, k, exclude)
            elif self.batcher is not None and q is not None:
                rows, sc = self.batcher.top_k(scorer, q, k, exclude)
            else:
                rows, sc = scorer.top_k(q, k, exclude)
            pairs = zip(rows.tolist(), sc.tolist(), strict=True)
            found = [(str(ids[r]), float(v)) for r, v in pairs]
            return Recommendation(found, name, False, time.perf_counter() - t0, name)
        asked = time.perf_counter()
        with PYTHON_SCORING:
            waited = time.perf_counter() - asked
            scores = model.score_all(user, history)
            top = top_k_excluding(scores, k, exclude)
            items = [(str(ids[r]), float(scores[r])) for r in top.tolist()]
        return Recommendation(items, name, False, time.perf_counter() - t0 - waited,
                              name)

    @property
    def popular_source(self) -> str:
        """What :meth:`popular` ranks by (``served_by`` of a fallback answer)."""
        return "live_popularity" if self._pop_model is not None else "live_clicks"

    def popular(
        self, live: LiveContext | None, k: int, max_age_s: float = 0.5
    ) -> list[tuple[str, float]]:
        """Top items by snapshot popularity plus the live bump (cached ``max_age_s``)."""
        now = time.monotonic()
        if now - self._popular_at > max_age_s or len(self._popular) < k:
            with self._popular_lock:
                if now - self._popular_at > max_age_s or len(self._popular) < k:
                    self._popular = self._compute_popular(live, max(k, 100))
                    self._popular_at = now
        return self._popular[:k]

    def _compute_popular(self, live: LiveContext | None, k: int) -> list[tuple[str, float]]:
        bumps = live.bumps() if live is not None else {}
        pop, scores = self._pop_model, self._pop_scores
        if pop is None or scores is None:
            ranked = sorted(bumps.items(), key=lambda kv: (-kv[1], kv[0]))
            return [(i, float(s)) for i, s in ranked[:k]]
        total = scores.astype(np.float32, copy=True)
        new: list[tuple[str, float]] = []
        if bumps:
            names = list(bumps)
            values = np.fromiter(bumps.values(), np.float32, count=len(names))
            rows = pop.items.rows(names)
            known = rows >= 0
            np.add.at(total, rows[known], values[known])
            new = [(names[j], float(values[j])) for j in np.flatnonzero(~known).tolist()]
        ids = pop.items.ids
        top = top_k_excluding(total, k, np.zeros(0, np.int64))
        merged = [(str(ids[r]), float(total[r])) for r in top.tolist()] + new
        merged.sort(key=lambda kv: (-kv[1], kv[0]))
        return merged[:k]

    def item_popularity(self, item: str, live: LiveContext | None) -> tuple[float, bool]:
        """(snapshot popularity + live bump, whether the snapshot knows the item)."""
        base = 0.0
        known = False
        if self._pop_model is not None and self._pop_scores is not None:
            row = self._pop_model.items.get(item)
            if row >= 0:
                known = True
                base = float(self._pop_scores[row])
        if not known:
            known = any(m.items.get(item) >= 0 for m in self.snapshot.models.values())
        bump = live.bump(item) if live is not None else 0.0
        return base + bump, known

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "version": self.version,
            "created_at": m.get("created_at"),
            "loaded_at": self.loaded_at,
            "events_total": m.get("events_total"),
            "watermark": self.watermark,
            "offsets": m.get("offsets", {}),
            "default_model": self.default_model,
            "models": {
                name: {
                    "class": meta.get("class"),
                    "params": meta.get("params", {}),
                    "n_users": meta.get("n_users"),
                    "n_items": meta.get("n_items"),
                }
                for name, meta in m.get("models", {}).items()
            },
            "metrics": m.get("metrics", {}),
            # scale-out merged snapshots: per partition events, offset, owner, age
            "scale_out": m.get("extra_meta", {}).get("scale_out"),
            # other trainers' roots served beside this one (--extra-snapshots)
            "extra_snapshots": m.get("extra_snapshots", {}),
            # models the trainer took from other trainers' roots (--follow), by version
            "followed": m.get("extra_meta", {}).get("followed", {}),
        }
