"""Ranking over one loaded snapshot: model scores, exclusion of seen items, top-k.

The hot path is one ``score_all`` call of the chosen model (for factor models one
product over the contiguous float32 item matrix), then one ``argpartition``.
Nothing loops in Python over all items per request.

Exact factor scoring is memory-bound: one query streams the whole item matrix
(25.6 MB at 100k x 64) for ~1.3 M multiply-adds. :class:`ScoreBatcher` lets
concurrent requests share that pass: one worker stacks whatever queries are
pending into a matrix and scores them with one matrix-matrix product.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
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
    "FactorScorer",
    "LoadedSnapshot",
    "Recommendation",
    "ScoreBatcher",
    "UnknownModelError",
    "top_k_excluding",
]

log = logging.getLogger(__name__)


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


def _padded(b: int) -> int:
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


class _Ticket:
    """One query waiting for the batch worker, then the column it was given."""

    __slots__ = ("block", "column", "done", "failed", "q", "scorer")

    def __init__(self, scorer: FactorScorer, q: np.ndarray) -> None:
        self.scorer = scorer
        self.q = q
        self.done = threading.Event()
        self.failed = False
        self.column: np.ndarray | None = None
        self.block: _Block | None = None

    def scores(self) -> np.ndarray:
        """``b + V·q``: adds the bias to this query's column (once, in the caller's thread)."""
        col = self.column
        assert col is not None
        return np.add(col, self.scorer.bias, out=col)


class _Block:
    """A reusable batch score matrix, lent to the queries of one batch until all release it."""

    __slots__ = ("flat", "readers")

    def __init__(self, size: int) -> None:
        self.flat = np.empty(size, np.float32)
        self.readers = 0


class ScoreBatcher:
    """Micro-batching of exact factor scoring: one pass over the items for many queries.

    Request threads hand their query vector to :meth:`top_k` and block; one worker
    thread takes every query pending when it becomes free (no waiting for more, at
    most ``max_batch``, all of the same :class:`FactorScorer`), stacks them into a
    ``B x dim`` matrix and scores them with one ``V @ Q^T`` into a reusable
    ``rows x B`` block. Each request thread then adds the bias to *its own column*,
    excludes its seen items and takes its top-k (in parallel on the request
    threads) and releases the block. Results are bit-identical to
    :meth:`FactorScorer.top_k` (both go through :func:`score_columns`).

    A query is always scored by the scorer it was submitted with, i.e. the
    snapshot its request started with: queries of different snapshots (around a
    swap) go into different batches. If scoring a batch raises, or the worker is
    gone, those requests fall back to :meth:`FactorScorer.top_k` in their own
    thread; the worker keeps running.

    Parameters
    ----------
    max_batch
        Most queries scored together.
    max_bytes
        Largest score block (``rows x B`` float32); bounds ``B`` for big catalogues
        (16 MiB: 32 queries at 100k items, 4 at 1M).
    worker
        Start the worker thread on the first query. ``False`` (tests) leaves queued
        queries until :meth:`run_once` is called.
    inline
        A query arriving while fewer than ``slots`` products run and none is queued
        is scored in its own thread right away (the same kernel, so the same
        result): at low load that saves the hop to the worker and back.
    slots
        Most products running at once (the worker's batch and inline queries). With
        2, on 2 cores, two overlapping requests are scored side by side as without
        batching and only a third waits; measured worse than 1 on the shared box
        (BENCHMARKS.md, run F), so 1: strictly one product at a time.

    Examples
    --------
    >>> from serving.synthetic_state import random_bpr
    >>> scorer = FactorScorer.probe(random_bpr(5, 40, 4))
    >>> batcher = ScoreBatcher()
    >>> q = scorer.query("u1", [])
    >>> rows, scores = batcher.top_k(scorer, q, 3, np.array([0]))
    >>> rows.tolist() == scorer.top_k(q, 3, np.array([0]))[0].tolist()
    True
    >>> batcher.stop()
    """

    def __init__(
        self,
        max_batch: int = 32,
        max_bytes: int = 16 << 20,
        worker: bool = True,
        inline: bool = True,
        slots: int = 1,
    ) -> None:
        self.max_batch = max(1, max_batch)
        self.max_bytes = max_bytes
        self.worker = worker
        self.inline = inline
        self.slots = max(1, slots)
        self._running = 0  # products running: the worker's batch and inline ones
        self._cond = threading.Condition()
        self._queue: deque[_Ticket] = deque()
        self._free: list[_Block] = []
        self._queries = np.empty((0, 0), np.float32)  # worker-owned
        self._thread: threading.Thread | None = None
        self._stopped = False
        # Counters: queries/batches/largest/failed_batches written by the worker only,
        # inline_queries under the lock.
        self.batches = 0
        self.queries = 0
        self.largest = 0
        self.failed_batches = 0
        self.inline_queries = 0

    # ------------------------------------------------------------------ lifecycle
    def _ensure_worker(self) -> bool:
        """Start the worker if it is not running (also after an unexpected death)."""
        if self._stopped:
            return False
        th = self._thread
        if self.worker and (th is None or not th.is_alive()):
            th = threading.Thread(target=self._run, name="liverec-score", daemon=True)
            self._thread = th
            th.start()
        return True

    def stop(self) -> None:
        """Stop the worker; queued and later queries are scored by their own threads."""
        with self._cond:
            self._stopped = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for t in pending:
            t.failed = True
            t.done.set()

    # ------------------------------------------------------------------ requests
    def submit(self, scorer: FactorScorer, q: np.ndarray) -> _Ticket | None:
        """Queue ``q`` for scoring; ``None`` when stopped (score it yourself)."""
        t = _Ticket(scorer, q)
        with self._cond:
            if not self._ensure_worker():
                return None
            self._queue.append(t)
            self._cond.notify()
        return t

    def top_k(
        self, scorer: FactorScorer, q: np.ndarray, k: int, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Same as ``scorer.top_k(q, k, exclude)``, scored in a batch with concurrent queries."""
        if scorer.size == 0 or k <= 0:
            return scorer.top_k(q, k, exclude)
        if self.inline:
            done = self._inline(scorer, q, k, exclude)
            if done is not None:
                return done
        t = self.submit(scorer, q)
        if t is None:
            return scorer.top_k(q, k, exclude)
        self._wait(t)
        if t.failed or t.column is None:
            return scorer.top_k(q, k, exclude)
        try:
            return select_top_k(t.scores(), k, exclude)
        finally:
            self.release(t)

    def _inline(
        self, scorer: FactorScorer, q: np.ndarray, k: int, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Score ``q`` in this thread if nothing runs or waits; ``None`` otherwise.

        Uses a block from the shared pool rather than a per-thread buffer: any of the
        rank pool's threads may score inline, and per-thread buffers would cost a
        ``rows x 2`` matrix per thread per snapshot.
        """
        with self._cond:
            if self._running >= self.slots or self._queue or self._stopped:
                return None
            block = self._block(scorer, 1)
            self._running += 1
            block.readers = 1
            self.inline_queries += 1
        try:
            try:
                queries = np.empty((2, scorer.dim), np.float32)
                col = score_one(scorer.vectors, q, queries, block.flat)
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()
            np.add(col, scorer.bias, out=col)
            return select_top_k(col, k, exclude)
        except Exception:
            log.exception("inline scoring failed; scoring the query on its own")
            return scorer.top_k(q, k, exclude)
        finally:
            with self._cond:
                block.readers = 0
                self._free.append(block)

    def _wait(self, t: _Ticket) -> None:
        # The worker sets every ticket it takes, even when scoring fails; the
        # liveness check only guards against a worker that died some other way.
        while not t.done.wait(1.0):
            th = self._thread
            if th is None or not th.is_alive():
                with self._cond:
                    if t.done.is_set():
                        return
                    if t in self._queue:
                        self._queue.remove(t)
                    t.failed = True
                    t.done.set()

    def release(self, t: _Ticket) -> None:
        """Give back the ticket's share of its block (after reading its column)."""
        block, t.block, t.column = t.block, None, None
        if block is None:
            return
        with self._cond:
            block.readers -= 1
            if block.readers == 0:
                self._free.append(block)

    # ------------------------------------------------------------------ worker
    def _cap(self, scorer: FactorScorer) -> int:
        return max(1, min(self.max_batch, self.max_bytes // (4 * max(1, scorer.size))))

    def _take(self, wait: bool) -> tuple[list[_Ticket], _Block | None]:
        """The next batch (oldest query's scorer, in arrival order) and a block for it."""
        with self._cond:
            while wait and (not self._queue or self._running >= self.slots) and not self._stopped:
                self._cond.wait()
            if not self._queue or self._running >= self.slots or self._stopped:
                return [], None
            scorer = self._queue[0].scorer
            cap = self._cap(scorer)
            batch: list[_Ticket] = []
            rest: deque[_Ticket] = deque()
            for t in self._queue:
                if len(batch) < cap and t.scorer is scorer:
                    batch.append(t)
                else:
                    rest.append(t)
            self._queue = rest
            try:
                block = self._block(scorer, len(batch))
            except Exception:
                for t in batch:  # out of the queue already: fail them, never drop them
                    t.failed = True
                    t.done.set()
                raise
            self._running += 1
            return batch, block

    def _block(self, scorer: FactorScorer, b: int) -> _Block:
        """A free block with room for ``b`` queries of ``scorer`` (call under the lock)."""
        need = scorer.size * _padded(b)
        block = next((x for x in self._free if x.flat.size >= need), None)
        if block is not None:
            self._free.remove(block)
            return block
        # Blocks of an older, smaller catalogue would never fit again.
        self._free = [x for x in self._free if x.flat.size >= scorer.size * 2]
        return _Block(max(need, scorer.size * _padded(self._cap(scorer))))

    def run_once(self, wait: bool = False) -> int:
        """Score one batch of pending queries (the worker's loop body); returns its size."""
        batch: list[_Ticket] = []
        block: _Block | None = None
        taken = False
        try:
            batch, block = self._take(wait)
            taken = bool(batch)
            if batch and block is not None:
                self._score(batch, block)
        except Exception:
            log.exception("batched scoring failed; %d queries fall back to single", len(batch))
            self.failed_batches += 1
            failed = [t for t in batch if not t.done.is_set()]
            with self._cond:
                if block is not None:
                    # Readers counted for queries never handed their column do not release.
                    block.readers = max(0, block.readers - len(failed))
                    if block.readers == 0:
                        self._free.append(block)
            for t in failed:
                t.failed = True
                t.done.set()
        finally:
            if taken:
                with self._cond:
                    self._running -= 1
        return len(batch)

    def _score(self, batch: list[_Ticket], block: _Block) -> None:
        scorer = batch[0].scorer
        b = len(batch)
        cols = _padded(b)
        d = scorer.dim
        if self._queries.shape[0] < cols or self._queries.shape[1] != d:
            self._queries = np.empty((max(cols, _padded(self.max_batch)), d), np.float32)
        queries = self._queries[:cols]
        for j, t in enumerate(batch):
            queries[j] = t.q
        queries[b:] = queries[0]  # padding columns: computed, never read
        columns = score_columns(scorer.vectors, queries, block.flat)
        block.readers = b
        self.batches += 1
        self.queries += b
        self.largest = max(self.largest, b)
        for t, column in zip(batch, columns, strict=False):
            t.column = column
            t.block = block
            t.done.set()

    def _run(self) -> None:
        while not self._stopped:
            self.run_once(wait=True)


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
            return Recommendation(items, name, True, time.perf_counter() - t0)
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
            return Recommendation(found, name, False, time.perf_counter() - t0)
        asked = time.perf_counter()
        with PYTHON_SCORING:
            waited = time.perf_counter() - asked
            scores = model.score_all(user, history)
            top = top_k_excluding(scores, k, exclude)
            items = [(str(ids[r]), float(scores[r])) for r in top.tolist()]
        return Recommendation(items, name, False, time.perf_counter() - t0 - waited)

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
