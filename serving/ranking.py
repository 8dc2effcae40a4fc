"""Ranking over one loaded snapshot: model scores, exclusion of seen items, top-k.

The hot path is one ``score_all`` call of the chosen model (for factor models a
single matrix-vector product over the contiguous float32 item matrix), then one
``argpartition`` over ``k + len(excluded)`` candidates. Nothing loops in Python
over all items per request.
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
from serving.live import LiveContext

__all__ = [
    "FactorIndex",
    "LoadedSnapshot",
    "Recommendation",
    "UnknownModelError",
    "top_k_excluding",
]


class UnknownModelError(LookupError):
    """The requested model is not in the loaded snapshot."""


@dataclass(frozen=True, slots=True)
class Recommendation:
    items: list[tuple[str, float]]
    model: str
    fallback: bool
    rank_seconds: float


def top_k_excluding(scores: np.ndarray, k: int, exclude: np.ndarray) -> np.ndarray:
    """Rows of the ``k`` best finite scores not in ``exclude``, best first.

    Only ``k + len(exclude)`` candidates are partitioned out, so ``scores`` is never
    copied or written (it may be a model's own buffer).

    >>> top_k_excluding(np.array([0.5, 3.0, -np.inf, 2.0, 1.0]), 2, np.array([1])).tolist()
    [3, 4]
    """
    n = len(scores)
    if n == 0 or k <= 0:
        return np.zeros(0, np.int64)
    kk = min(n, k + len(exclude))
    cand = np.argpartition(scores, n - kk)[n - kk :] if kk < n else np.arange(n)
    s = scores[cand]
    keep = np.isfinite(s)
    if len(exclude):
        keep &= ~np.isin(cand, exclude)
    cand, s = cand[keep], s[keep]
    order = np.lexsort((cand, -s))[:k]
    return cand[order].astype(np.int64)


class FactorIndex:
    """Approximate top-k (HNSW, inner product) for a factor model scored ``V·q + b``.

    The bias is folded in as one more dimension: items are indexed as ``[V_i, b_i]``
    and queried with ``[q, 1]``, so the inner product *is* the model's score. Only
    models that expose a query vector (BPR's fold-in) can use it; the others and
    queries without a vector stay on brute force.

    Parameters
    ----------
    model
        A loaded model with ``item_vectors()`` and a ``_query_vector(user, history)``.
    ef, m, ef_construction
        HNSW search breadth, graph degree and build breadth (recall vs speed).
    """

    def __init__(
        self, model: OnlineModel, ef: int = 200, m: int = 16, ef_construction: int = 100
    ) -> None:
        import hnswlib

        vectors = model.item_vectors()
        if vectors is None:
            raise ValueError(f"model {model.name!r} has no item vectors")
        bias = model.score_all("\0no-such-user\0", ())  # a cold query scores the bias alone
        n, d = vectors.shape
        rows = np.flatnonzero(np.isfinite(bias[:n]))
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

    def query(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` (rows, scores), best first."""
        k = min(k, self.size)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if k > self.ef:
            self.index.set_ef(k)
        vec = np.append(q.astype(np.float32), np.float32(1.0))[None, :]
        labels, dist = self.index.knn_query(vec, k=k)
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
    """

    def __init__(
        self,
        snapshot: Snapshot,
        default_model: str = "hybrid",
        fallbacks: Sequence[str] = ("hybrid", "bpr", "popularity"),
        ann: bool = False,
    ) -> None:
        self.snapshot = snapshot
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
        # Approximate indexes, built at load (beside the serving snapshot) when asked.
        self.ann: dict[str, FactorIndex] = {}
        if ann:
            for name, model in models.items():
                if hasattr(model, "_query_vector") and model.item_vectors() is not None:
                    self.ann[name] = FactorIndex(model)

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
            return Recommendation(items, name, True, time.perf_counter() - t0)
        exclude = np.zeros(0, np.int64)
        if exclude_seen and history:
            rows = model.items.rows(history)
            exclude = rows[rows >= 0]
        ids = model.items.ids
        index = self.ann.get(name)
        if index is not None:
            q = model._query_vector(user, history)  # type: ignore[attr-defined]
            if q is not None:
                rows, sc = index.query(q, k + len(exclude))
                keep = ~np.isin(rows, exclude) if len(exclude) else np.ones(len(rows), bool)
                rows, sc = rows[keep][:k], sc[keep][:k]
                found = [(str(ids[r]), float(v)) for r, v in zip(rows, sc, strict=True)]
                return Recommendation(found, name, False, time.perf_counter() - t0)
        scores = model.score_all(user, history)
        top = top_k_excluding(scores, k, exclude)
        items = [(str(ids[r]), float(scores[r])) for r in top.tolist()]
        return Recommendation(items, name, False, time.perf_counter() - t0)

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
        }
