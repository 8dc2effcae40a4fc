"""Exact scoring for one query: factor products that give the same bits alone or
batched (:func:`score_columns`), top-k without copies, and :class:`FactorScorer`.

Exact factor scoring is memory-bound: one query streams the whole item matrix
(25.6 MB at 100k x 64) for ~1.3 M multiply-adds; :mod:`serving.batcher` lets
concurrent requests share that pass through the same kernel.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from online_models.base import OnlineModel

__all__ = [
    "FactorScorer",
    "padded_columns",
    "score_columns",
    "score_one",
    "select_top_k",
    "top_k_excluding",
]


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



#: Widest single product: OpenBLAS's sgemm gives a column the bits a lone query gets
#: (a product padded to two columns) only up to 4 columns on an AVX2 EPYC (from 8 on,
#: the bits depend on the width and on the column's place; the machine of earlier
#: sessions agreed at every width), so wider batches are scored as products of 4.
_GEMM_COLUMNS = 4


def score_columns(vectors: np.ndarray, queries: np.ndarray, flat: np.ndarray
                  ) -> list[np.ndarray]:
    """``V·queries[j]`` for each row ``j`` of a C-contiguous ``queries`` (2 rows, or a
    multiple of ``_GEMM_COLUMNS``), written into the float32 scratch ``flat``;
    returns the columns (strided views into ``flat``).

    Every exact factor score goes through here, one query or 32: numpy hands a
    one-column product to BLAS ``gemv``, whose summation order differs from
    ``gemm``'s in the last bits, so a single query is padded to two columns, and a
    batch is scored in products of at most ``_GEMM_COLUMNS`` columns. A query's
    scores then do not depend on which others share its batch (the batch tests
    check this bit for bit), and batched and unbatched serving agree exactly.
    The bias is added by whoever reads a column (``np.add(col, b, out=col)``): a
    broadcast add over all columns at once is slow in numpy (1 ms at 32 columns).
    """
    n, cols = len(vectors), len(queries)
    out: list[np.ndarray] = []
    for start in range(0, cols, _GEMM_COLUMNS):
        w = min(_GEMM_COLUMNS, cols - start)
        block = flat[n * start : n * (start + w)].reshape(n, w)
        np.dot(vectors, queries[start : start + w].T, out=block)
        out.extend(block[:, j] for j in range(w))
    return out


def score_one(
    vectors: np.ndarray, q: np.ndarray, queries: np.ndarray, flat: np.ndarray
) -> np.ndarray:
    """``V·q`` through :func:`score_columns` (``q`` padded to two rows in ``queries``,
    a ``2 x dim`` scratch; ``flat`` holds at least ``2 x rows``); returns its column."""
    queries[0] = q
    queries[1] = q
    return score_columns(vectors, queries, flat)[0]


def padded_columns(b: int) -> int:
    """Columns to compute for ``b`` queries: 2 for one or two, else the next multiple
    of ``_GEMM_COLUMNS`` (each product is then full width)."""
    return 2 if b <= 2 else -(-b // _GEMM_COLUMNS) * _GEMM_COLUMNS


_BLOCK = 64  # rows per block maximum in select_top_k's threshold


def _best(cand: np.ndarray, s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of finite scores ``s`` at ascending rows ``cand``, by (-score, row)."""
    if len(cand) > k:
        kth = np.partition(s, len(s) - k)[len(s) - k]
        above = np.flatnonzero(s > kth)
        ties = np.flatnonzero(s == kth)[: k - len(above)]  # the lower rows win a tie
        idx = np.concatenate([above, ties])
        cand, s = cand[idx], s[idx]
    order = np.lexsort((cand, -s))
    return cand[order].astype(np.int64), s[order]


def select_top_k(scores: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) of the ``k`` best finite ``scores`` not in ``exclude``, best first.

    Writes ``-inf`` over ``exclude`` in ``scores`` (a scratch buffer, possibly a
    strided column of a batch). Equal scores order by row, also at the k-th place.

    For small ``k`` a threshold replaces most of the partition (0.13 instead of 0.75
    ms at 100k rows): the ``k``-th best of the maxima of blocks of 64 rows is a lower
    bound of the ``k``-th best score (those ``k`` maxima are ``k`` distinct scores at
    least that high), so only rows scoring at least that are candidates, typically
    a few times ``k``.

    >>> select_top_k(np.array([0.5, 3.0, -np.inf, 2.0, 2.0], np.float32), 2, np.array([1]))
    (array([3, 4]), array([2., 2.], dtype=float32))
    """
    n = len(scores)
    if n == 0 or k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if len(exclude):
        scores[exclude] = -np.inf
    k = min(k, n)
    nb = n // _BLOCK
    if k * 4 <= nb:
        maxima = scores[: nb * _BLOCK].reshape(nb, _BLOCK).max(axis=1)
        bound = maxima[np.argpartition(maxima, nb - k)[nb - k]]
        if np.isfinite(bound):  # else fewer than k blocks hold a finite score
            cand = np.flatnonzero(scores >= bound)
            s = scores[cand]
            keep = np.isfinite(s)
            if not keep.all():
                cand, s = cand[keep], s[keep]
            return _best(cand, s, k)
    cand = np.flatnonzero(np.isfinite(scores))
    return _best(cand, scores[cand], k)


def _as_query(q: Any) -> np.ndarray:
    """A model's query vector as contiguous float32 numpy (torch tensors included)."""
    if hasattr(q, "detach"):
        q = q.detach().cpu().numpy()
    return np.ascontiguousarray(q, dtype=np.float32)


class FactorScorer:
    """Exact top-k for a factor model whose scores are ``b + V·q``, without per-request copies.

    The item matrix and bias are taken once per snapshot; each request writes its
    scores into a reusable per-thread buffer (:func:`score_columns`), writes
    ``-inf`` over excluded rows and partitions once. That leaves the product as the
    only pass over the catalogue that scales with it. A :class:`ScoreBatcher` runs
    the same product for many queries at once, with identical results.

    Use :meth:`probe` to build one: it returns ``None`` unless ``b + V·q``
    reproduces the model's own ``score_all`` (a model with a re-ranker, a
    different cold-start rule or no ``_query_vector`` stays on ``score_all``).

    Parameters
    ----------
    model
        The model whose ``_query_vector(user, history)`` gives ``q``.
    vectors, bias
        ``V`` (rows x dims) and ``b`` (rows), float32.

    Examples
    --------
    >>> from serving.synthetic_state import random_bpr
    >>> m = random_bpr(5, 40, 4)
    >>> scorer = FactorScorer.probe(m)
    >>> rows, _ = scorer.top_k(scorer.query("u1", []), 3, np.array([0]))
    >>> exact = top_k_excluding(m.score_all("u1"), 3, np.array([0]))
    >>> rows.tolist() == exact.tolist()
    True
    """

    def __init__(self, model: OnlineModel, vectors: np.ndarray, bias: np.ndarray) -> None:
        self.model = model
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.size = len(self.bias)
        self._local = threading.local()

    @classmethod
    def probe(cls, model: OnlineModel) -> FactorScorer | None:
        """A scorer for ``model`` if ``b + V·q`` matches its ``score_all``, else ``None``.

        Checked on a known user and on a cold user with a history (fold-in).
        """
        query = getattr(model, "_query_vector", None)
        if query is None:
            return None
        vectors = model.item_vectors()
        if vectors is None or vectors.ndim != 2:
            return None
        try:
            bias = np.asarray(model.score_all("\0no-such-user\0", ()), np.float32)
        except Exception:
            return None
        if len(bias) != len(vectors):
            return None
        scorer = cls(model, vectors, bias)
        users = [u for u in model.users.ids[:1] if u is not None]
        probes: list[tuple[str, Sequence[str]]] = [(u, ()) for u in users]
        history = [i for i in model.items.ids[:5] if i is not None]
        if history:
            probes.append(("\0no-such-user\0", history))
        for user, hist in probes:
            want = np.asarray(model.score_all(user, hist), np.float32)
            got = scorer.scores(scorer.query(user, hist)).copy()
            if not np.array_equal(np.isfinite(want), np.isfinite(got)):
                return None
            fin = np.isfinite(want)
            if not np.allclose(want[fin], got[fin], rtol=1e-4, atol=1e-4):
                return None
        return scorer

    def query(self, user: str, history: Sequence[str]) -> np.ndarray | None:
        q = self.model._query_vector(user, history)  # type: ignore[attr-defined]
        return None if q is None else _as_query(q)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def _buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """This thread's (2 x rows) score scratch and (2 x dim) query buffer."""
        bufs: tuple[np.ndarray, np.ndarray] | None = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = (
                np.empty(self.size * 2, np.float32),
                np.empty((2, self.dim), np.float32),
            )
        return bufs

    def scores(self, q: np.ndarray | None) -> np.ndarray:
        """``b + V·q`` in this thread's buffer (a strided view, valid until its next call)."""
        flat, queries = self._buffers()
        if q is None:
            col = flat[: self.size]
            np.copyto(col, self.bias)
            return col
        col = score_one(self.vectors, q, queries, flat)
        return np.add(col, self.bias, out=col)

    def rescore(
        self, q: np.ndarray, cand: np.ndarray, k: int, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of the candidate rows ``cand`` by exact score, best first."""
        cand = cand[(cand >= 0) & (cand < self.size)]
        if len(exclude):
            cand = cand[~np.isin(cand, exclude)]
        s = self.vectors[cand] @ q + self.bias[cand]
        keep = np.isfinite(s)
        cand, s = cand[keep], s[keep]
        order = np.lexsort((cand, -s))[:k]
        return cand[order].astype(np.int64), s[order]

    def top_k(
        self, q: np.ndarray | None, k: int, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the ``k`` best finite scores not in ``exclude``, best first."""
        if self.size == 0 or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return select_top_k(self.scores(q), k, exclude)
