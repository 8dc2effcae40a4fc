"""Micro-batching of exact factor scoring (:class:`ScoreBatcher`).

One worker stacks whatever queries are pending into a matrix and scores them with
one matrix-matrix product over the item matrix, through the same kernel as a lone
query (:func:`serving.scoring.score_columns`), so the answers are bit-identical.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

import numpy as np

from serving.scoring import FactorScorer, padded_columns, score_columns, score_one, select_top_k

__all__ = ["ScoreBatcher"]

log = logging.getLogger(__name__)


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
        need = scorer.size * padded_columns(b)
        block = next((x for x in self._free if x.flat.size >= need), None)
        if block is not None:
            self._free.remove(block)
            return block
        # Blocks of an older, smaller catalogue would never fit again.
        self._free = [x for x in self._free if x.flat.size >= scorer.size * 2]
        return _Block(max(need, scorer.size * padded_columns(self._cap(scorer))))

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
        cols = padded_columns(b)
        d = scorer.dim
        if self._queries.shape[0] < cols or self._queries.shape[1] != d:
            self._queries = np.empty((max(cols, padded_columns(self.max_batch)), d), np.float32)
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
