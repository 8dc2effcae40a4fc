"""An example plugin model for liverec: first-order item transitions.

It scores every item by how often users went from the query's last item to it,
with a small share of overall popularity to rank the rest (and every item for a
user without history). It is a template for a model of your own, not one of
liverec's: ``sequence`` is the built-in, stronger version of the same idea.

Installed (``pip install -e examples/plugin-model``), it is the model
``transitions`` everywhere a model name goes: ``liverec evaluate --models
itemknn,transitions``, ``liverec train --models popularity,transitions``, a
hybrid's components, and the snapshots the server loads. ``liverec models check
transitions`` runs it through the protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np

from online_models.base import Batch, IdIndex, ModelState, OnlineModel, grow_rows, top_k

__all__ = ["Transitions"]


class Transitions(OnlineModel):
    """Counts of item ``a`` followed by item ``b`` in a user's clicks.

    Parameters
    ----------
    popularity_weight
        Share of an item's overall click weight added to its transition score.
    """

    #: the registry name: the entry point's name, and what snapshots record
    name: ClassVar[str] = "transitions"

    def __init__(self, popularity_weight: float = 0.01) -> None:
        self.popularity_weight = popularity_weight  # same name as the argument
        self.users = IdIndex()
        self.items = IdIndex()
        self._next: dict[int, dict[int, float]] = {}  # item row -> next item row -> weight
        self._pop = np.zeros(0, np.float64)  # click weight per item row
        self._last = np.zeros(0, np.int64)  # last item row per user row (-1: none)

    def learn(self, batch: Batch) -> None:
        users = self.users.add_many(batch.users)
        items = self.items.add_many(batch.items)
        self._pop = grow_rows(self._pop, self.items.capacity)
        self._last = grow_rows(self._last, self.users.capacity, fill=-1)
        np.add.at(self._pop, items, batch.weights)
        for u, i, w in zip(users.tolist(), items.tolist(), batch.weights.tolist(),
                           strict=True):
            prev = int(self._last[u])
            if prev >= 0 and prev != i:
                row = self._next.setdefault(prev, {})
                row[i] = row.get(i, 0.0) + w
            self._last[u] = i

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        scores = np.zeros(self.items.capacity, np.float32)
        cap = min(len(self._pop), self.items.capacity)
        scores[:cap] = self.popularity_weight * self._pop[:cap]
        last = self.items.get(history[-1]) if history else -1
        if last < 0 and not history and user in self.users:
            last = int(self._last[self.users.get(user)])
        for j, w in self._next.get(last, {}).items():
            scores[j] += w
        scores[~self.items.live_mask()] = -np.inf  # rows of removed items
        return scores

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        row = self.items.get(item)
        nxt = self._next.get(row, {}) if row >= 0 else {}
        scores = np.full(self.items.capacity, -np.inf, np.float32)
        for j, w in nxt.items():
            scores[j] = w
        ids = self.items.ids
        return [(str(ids[r]), float(scores[r])) for r in top_k(scores, k)
                if np.isfinite(scores[r])]

    def forget_users(self, users: Sequence[str]) -> None:
        rows = self.users.rows(users)
        self._last[rows[rows >= 0]] = -1
        super().forget_users(users)  # drops them from the user index

    # -- state: numeric arrays and JSON meta, nothing that runs code on load
    def get_state(self) -> ModelState:
        src = np.fromiter((a for a, row in self._next.items() for _ in row), np.int64)
        dst = np.fromiter((b for row in self._next.values() for b in row), np.int64)
        wts = np.fromiter((w for row in self._next.values() for w in row.values()),
                          np.float64)
        arrays = {**self.users.to_arrays("users"), **self.items.to_arrays("items"),
                  "next.src": src, "next.dst": dst, "next.weight": wts,
                  "pop": self._pop.copy(), "last": self._last.copy()}
        meta: dict[str, Any] = {"class": self.name, "params": self.get_params()}
        return ModelState(arrays=arrays, meta=meta)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        a = state.arrays
        m = cls(**state.meta["params"])
        m.users = IdIndex.from_arrays(a, "users")
        m.items = IdIndex.from_arrays(a, "items")
        m._pop = np.array(a["pop"], np.float64)
        m._last = np.array(a["last"], np.int64)
        for s, d, w in zip(a["next.src"].tolist(), a["next.dst"].tolist(),
                           a["next.weight"].tolist(), strict=True):
            m._next.setdefault(s, {})[d] = w
        return m
