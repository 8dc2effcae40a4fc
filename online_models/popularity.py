"""Decayed popularity: the cold-start fallback.

Each event adds ``w · 2**((t - t0) / half_life)`` to its item (forward decay in
event time relative to a landmark ``t0``), which ranks items exactly as
exponentially decayed counts would, without touching every item as time passes.
When the exponent grows large, every count is rescaled by an exact power of two
and the landmark moves. The exported state holds the counts decayed to the
watermark (latest event time), so it does not depend on batch boundaries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np

from online_models.base import (
    Batch,
    IdIndex,
    ModelState,
    OnlineModel,
    pack_strings,
    top_k,
    unpack_strings,
)
from online_models.deltas import ItemDelta, delta_rows

__all__ = ["Popularity"]

#: rescale once forward-decayed counts have grown by 2**_MAX_EXP
_MAX_EXP = 400.0


class Popularity(OnlineModel):
    """Items ranked by exponentially time-decayed interaction weight.

    Parameters
    ----------
    half_life_seconds
        Event-time half-life of an interaction's weight (``None``: plain counts).

    Examples
    --------
    >>> m = Popularity(half_life_seconds=10.0)
    >>> m.learn(Batch.from_columns(["u", "v", "w"], ["old", "old", "new"], None, [0, 0, 10]))
    >>> m.popularity("old"), m.popularity("new")
    (1.0, 1.0)
    >>> [i for i, _ in m.recommend("anyone", 2)]
    ['old', 'new']
    """

    name: ClassVar[str] = "popularity"
    adaptable: ClassVar[Mapping[str, str]] = {"half_life_seconds": "half_life"}

    def __init__(self, half_life_seconds: float | None = 365 * 86_400.0) -> None:
        self.half_life_seconds = half_life_seconds
        self.users = IdIndex()
        self.items = IdIndex()
        self._mass = np.zeros(0, np.float64)
        self._t0: float | None = None
        self._watermark = -np.inf

    def learn(self, batch: Batch) -> None:
        if len(batch) == 0:
            return
        self.users.add_many(batch.users)
        rows = self.items.add_many(batch.items)
        t = np.asarray(batch.timestamps, np.float64)
        t_max = float(t.max())
        hl = self.half_life_seconds
        if hl is not None:
            if self._t0 is None:
                self._t0 = t_max
            steps = np.floor((t_max - self._t0) / hl)
            if steps > _MAX_EXP:
                self._mass *= float(np.exp2(-steps))  # exact: a power of two
                self._t0 += float(steps) * hl
        self._watermark = max(self._watermark, t_max)
        if len(self._mass) < self.items.capacity:
            grown = np.zeros(max(16, 2 * self.items.capacity), np.float64)
            grown[: len(self._mass)] = self._mass
            self._mass = grown
        w = np.asarray(batch.weights, np.float64)
        if hl is not None and self._t0 is not None:
            w = w * np.exp2((t - self._t0) / hl)
        np.add.at(self._mass, rows, w)

    # ------------------------------------------------------------------ scale-out
    # (online_models.deltas.SharesItemState: several trainers, one item state)

    def learn_local(self, batch: Batch) -> ItemDelta:
        """Record the batch's users; return its item mass, decayed to its latest time."""
        if len(batch) == 0:
            return ItemDelta([])
        self.users.add_many(batch.users)
        t = np.asarray(batch.timestamps, np.float64)
        t_ref = float(t.max())
        w = np.asarray(batch.weights, np.float64)
        if self.half_life_seconds is not None:
            w = w * np.exp2((t - t_ref) / self.half_life_seconds)
        keys, inv = np.unique(np.asarray(batch.items, dtype=str), return_inverse=True)
        mass = np.bincount(inv.ravel(), weights=w, minlength=len(keys))
        return ItemDelta(keys.tolist(), {"mass": mass}, t_ref)

    def apply_delta(self, delta: ItemDelta) -> None:
        """Add a :meth:`learn_local` delta (this trainer's or another's)."""
        self.apply_deltas([delta])

    def apply_deltas(self, deltas: Sequence[ItemDelta]) -> None:
        """Add deltas in order (each one's mass add is one C loop; their ids are looked
        up together, :func:`~online_models.deltas.delta_rows`)."""
        live = [d for d in deltas if len(d) and d.t_ref is not None]
        for d, rows in zip(live, delta_rows(live, self.items.add_many), strict=True):
            self._add_mass(rows, np.asarray(d.arrays["mass"], np.float64), float(d.t_ref))  # type: ignore[arg-type]

    def _add_mass(self, rows: np.ndarray, mass: np.ndarray, t_ref: float) -> None:
        """Add ``mass`` (decayed to ``t_ref``) to ``rows``."""
        hl = self.half_life_seconds
        factor = 1.0
        if hl is not None:
            if self._t0 is None:
                self._t0 = t_ref
            steps = np.floor((t_ref - self._t0) / hl)
            if steps > _MAX_EXP:
                self._mass *= float(np.exp2(-steps))
                self._t0 += float(steps) * hl
            factor = float(np.exp2((t_ref - self._t0) / hl))
        self._watermark = max(self._watermark, t_ref)
        if len(self._mass) < self.items.capacity:
            grown = np.zeros(max(16, 2 * self.items.capacity), np.float64)
            grown[: len(self._mass)] = self._mass
            self._mass = grown
        np.add.at(self._mass, rows, mass * factor)

    def user_state(self, users: Sequence[str]) -> dict[str, np.ndarray]:
        data, offsets = pack_strings([u for u in users if u in self.users])
        return {"users.data": data, "users.offsets": offsets}

    def load_user_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.users.add_many(unpack_strings(arrays["users.data"], arrays["users.offsets"]))

    def set_param(self, name: str, value: float) -> None:
        """Set an adaptable hyperparameter; a new half-life applies from the watermark on.

        The stored mass is forward-decayed under the current half-life relative to a
        landmark that may lie many half-lives back, so it is first brought to the
        watermark under the old half-life (which becomes the landmark): the counts at
        the watermark are unchanged, and the new half-life decays them from there,
        exactly as in a model restored from a snapshot taken before the change.

        >>> m = Popularity(half_life_seconds=10.0)
        >>> m.learn(Batch.from_columns(["u", "u"], ["old", "new"], None, [0, 20]))
        >>> m.set_param("half_life_seconds", 5.0)
        >>> m.popularity("old")
        0.25
        >>> m.learn(Batch.from_columns(["u"], ["new"], None, [30]))
        >>> m.popularity("old"), m.popularity("new")
        (0.0625, 1.25)
        """
        v = self._checked_param(name, value)
        if name == "half_life_seconds":
            self._rebase()
        super().set_param(name, v)

    def _rebase(self) -> None:
        """Move the landmark to the watermark (``None`` before any event): the mass
        becomes the counts decayed to the watermark under the current half-life
        (plain counts without one)."""
        cap = self.items.capacity
        self._mass[:cap] = self._decayed()
        self._t0 = float(self._watermark) if np.isfinite(self._watermark) else None

    def _decayed(self) -> np.ndarray:
        """Counts decayed to the watermark (the latest event time seen)."""
        mass = self._mass[: self.items.capacity]
        if self.half_life_seconds is None or self._t0 is None:
            return mass.copy()
        return mass * np.exp2(-(self._watermark - self._t0) / self.half_life_seconds)

    def popularity(self, item: str) -> float:
        """Decayed weight of ``item`` at the watermark (0.0 if unknown)."""
        row = self.items.get(item)
        return float(self._decayed()[row]) if row >= 0 else 0.0

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        return self._finish_scores(self._decayed())

    def score_many(
        self, users: Sequence[str], histories: Sequence[Sequence[str]]
    ) -> np.ndarray:
        """The one non-personal score vector, once per query."""
        if len(users) != len(histories):
            raise ValueError("score_many needs one history per user")
        return np.tile(self.score_all(""), (len(users), 1))

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        """The currently most popular items other than ``item``."""
        scores = self.score_all("")
        row = self.items.get(item)
        if row >= 0:
            scores[row] = -np.inf
        ids = self.items.ids
        return [(ids[r], float(scores[r])) for r in top_k(scores, k)]

    def get_state(self) -> ModelState:
        arrays = {
            **self.users.to_arrays("users"),
            **self.items.to_arrays("items"),
            # Decayed to the watermark: canonical, whatever the landmark was.
            "mass": self._decayed(),
        }
        meta: dict[str, Any] = {
            "class": self.name,
            "params": self.get_params(),
            "watermark": float(self._watermark) if np.isfinite(self._watermark) else None,
        }
        return ModelState(arrays=arrays, meta=meta)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        m = cls(**state.meta["params"])
        m.users = IdIndex.from_arrays(state.arrays, "users")
        m.items = IdIndex.from_arrays(state.arrays, "items")
        m._mass = np.asarray(state.arrays["mass"], np.float64).copy()
        wm = state.meta["watermark"]
        m._watermark = -np.inf if wm is None else float(wm)
        m._t0 = None if wm is None or m.half_life_seconds is None else float(wm)
        return m
