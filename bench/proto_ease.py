"""Prototype, not a liverec model: online EASE next to item-kNN (round 2, session 35).

EASE (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019) scores items with a
closed-form item-item matrix ``B = I - P / diag(P)``, ``P = (G + l2 I)^-1``, where
``G`` is an item-item Gram matrix. Here it learns online the way a periodic batch job
would: every batch adds its events, and ``B`` is solved again every
``refresh_events`` events (items first seen since the last solve score 0). ``G`` is
either

* ``window=0``: ``X^T X`` of the binary user x item matrix (every item a user ever
  bought), the textbook EASE;
* ``window=W``: co-occurrence within ``W`` positions of a user's event sequence,
  weighted ``position_decay^(d-1)`` at distance ``d``, with item counts on the diagonal
  (item-kNN's own pair counts, decorrelated by the inverse).

A query is the user's last ``query_items`` items weighted ``recency_decay^age``, as
item-kNN weighs them. This file registers the model as ``ease`` for
``bench/bench_deep.py`` and runs it with the arguments given; it exists to make the
figures in BENCHMARKS.md ("Online Retail: a linear autoencoder, seqnn seeds and
windows", session 35) reproducible. It keeps no snapshot state and is not in the
registry. Run, for example::

    .venv/bin/python bench/proto_ease.py ../shared/data/online-retail/online_retail.csv.gz \\
        --preset online-retail --limit 119377 --no-features --models itemknn,ease
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from online_models import registry
from online_models.base import Batch, IdIndex, ModelState, OnlineModel


class EASE(OnlineModel):
    """Online EASE, solved again every ``refresh_events`` events (see the module)."""

    name: ClassVar[str] = "ease"

    def __init__(self, l2: float = 200.0, refresh_events: int = 2560, query_items: int = 20,
                 recency_decay: float = 0.6, window: int = 0, position_decay: float = 0.8,
                 tiebreak: float = 1e-6) -> None:
        self.l2, self.refresh_events = l2, refresh_events
        self.query_items, self.recency_decay = query_items, recency_decay
        self.window, self.position_decay, self.tiebreak = window, position_decay, tiebreak
        self.items, self.users = IdIndex(), IdIndex()
        self._users: list[np.ndarray] = []
        self._items: list[np.ndarray] = []
        self._pop = np.zeros(0)
        self._b = np.zeros((0, 0), np.float32)
        self._since = 0

    def learn(self, batch: Batch) -> None:
        u = self.users.add_many(list(batch.users)).astype(np.int64)
        i = self.items.add_many(list(batch.items)).astype(np.int64)
        self._users.append(u)
        self._items.append(i)
        if len(self._pop) < self.items.capacity:
            self._pop = np.concatenate((self._pop, np.zeros(2 * self.items.capacity)))
        np.add.at(self._pop, i, 1.0)
        self._since += len(batch)
        if self._since >= self.refresh_events or len(self._b) == 0:
            self._solve()

    def _gram(self) -> np.ndarray:
        n, u, i = self.items.capacity, np.concatenate(self._users), np.concatenate(self._items)
        if not self.window:
            keys = np.unique((u << 32) | i)
            x = sp.csr_matrix((np.ones(len(keys)), (keys >> 32, keys & 0xFFFFFFFF)),
                              shape=(self.users.capacity, n))
            return np.asarray((x.T @ x).toarray())
        order = np.argsort(u, kind="stable")  # each user's events, in event order
        us, its = u[order], i[order]
        g = np.zeros((n, n))
        np.add.at(g, (i, i), 1.0)
        for d in range(1, self.window + 1):
            same = (us[d:] == us[:-d]) & (its[d:] != its[:-d])
            w = self.position_decay ** (d - 1)
            np.add.at(g, (its[:-d][same], its[d:][same]), w)
            np.add.at(g, (its[d:][same], its[:-d][same]), w)
        return g

    def _solve(self) -> None:
        self._since = 0
        g = self._gram()
        g[np.diag_indices_from(g)] += self.l2
        p = sla.inv(g, overwrite_a=True, check_finite=False)
        b = -p / np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        self._b = b.astype(np.float32)

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        return self.score_many([user], [history])[0]

    def score_many(self, users: Sequence[str], histories: Sequence[Sequence[str]]
                   ) -> np.ndarray:
        n, nb = self.items.capacity, len(self._b)
        out = np.zeros((len(users), n), np.float32)
        rows: list[int] = []
        cols: list[int] = []
        weights: list[float] = []
        for q, tail in enumerate(self._tail_rows(histories, self.query_items)):
            tail = tail[(tail >= 0) & (tail < nb)]
            rows += [q] * len(tail)
            cols += tail.tolist()
            weights += (self.recency_decay ** np.arange(len(tail) - 1, -1, -1)).tolist()
        if rows:
            query = sp.csr_matrix((np.asarray(weights, np.float32), (rows, cols)),
                                  shape=(len(users), nb))
            out[:, :nb] = query @ self._b
        return self._finish_many(out, self._pop[:n], self.tiebreak)

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        row = self.items.get(item)
        if row < 0 or row >= len(self._b):
            return []
        scores = np.zeros(self.items.capacity, np.float32)
        scores[: len(self._b)] = self._b[row]
        return self._similar_from(row, scores, k)

    def get_state(self) -> ModelState:
        raise NotImplementedError("a benchmark prototype: no snapshots")

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        raise NotImplementedError("a benchmark prototype: no snapshots")


if __name__ == "__main__":
    registry.MODEL_PATHS["ease"] = "proto_ease:EASE"
    import bench_deep

    bench_deep.main(sys.argv[1:])
