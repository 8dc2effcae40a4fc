"""How sure a hit rate is: a bootstrap over users, the unit the events cluster in.

The evaluated events of a stream are not independent draws: a few heavy users hold a
large share of them (on MovieLens's first 20,000 ratings, 10 of 204 users hold 29%),
and a model that suits one of them hits on many of its events. An interval that
treats every event as independent is then far too narrow. :class:`UserHits` keeps
each user's hits per model and evaluated events, and resamples *users* (a Poisson
bootstrap: each user weighs a Poisson(1) draw per replicate, which needs no
per-replicate index arrays and gives the usual bootstrap for many users).
:meth:`UserHits.difference` resamples the same users for two models, so the interval
of their difference is a paired one (the models scored the same events).

>>> hits = UserHits(["a", "b"])
>>> users = np.array([f"u{i % 40}" for i in range(80)], object)
>>> hits.add(users, {"a": np.arange(80) % 4 > 0, "b": np.arange(80) % 2 > 0})
>>> hits.rate("a"), hits.rate("b"), hits.n_users
(0.75, 0.5, 40)
>>> lo, hi = hits.interval("a")
>>> 0.0 <= lo <= 0.75 <= hi <= 1.0
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["MIN_USERS", "UserHits"]

#: fewer users than this give no interval (NaN): a bootstrap over one user has no
#: spread at all, over a handful a meaningless one
MIN_USERS = 20


class UserHits:
    """Each user's evaluated events and each model's hits on them (see module doc)."""

    def __init__(self, models: Sequence[str], replicates: int = 1000, seed: int = 0,
                 level: float = 0.95) -> None:
        self.models = list(models)
        self.replicates, self.seed, self.level = replicates, seed, level
        self._row: dict[str, int] = {}
        self._n = np.zeros(0, np.float64)
        self._hits = {name: np.zeros(0, np.float64) for name in self.models}

    @property
    def n_users(self) -> int:
        return len(self._row)

    def add(self, users: np.ndarray | Sequence[str], hits: Mapping[str, np.ndarray]) -> None:
        """Count evaluated events of ``users`` and each model's hits on them (arrays
        aligned with ``users``; every model scored the same events)."""
        if not len(users):
            return
        row = self._row
        rows = np.fromiter((row.setdefault(u, len(row)) for u in users), np.int64,
                           count=len(users))
        if len(row) > len(self._n):
            size = max(len(row), 2 * len(self._n))
            self._n = np.concatenate([self._n, np.zeros(size - len(self._n))])
            for name in self.models:
                h = self._hits[name]
                self._hits[name] = np.concatenate([h, np.zeros(size - len(h))])
        np.add.at(self._n, rows, 1.0)
        for name in self.models:
            np.add.at(self._hits[name], rows, np.asarray(hits[name], np.float64))

    def rate(self, name: str) -> float:
        n = self._n.sum()
        return float(self._hits[name].sum() / n) if n else float("nan")

    def interval(self, name: str) -> tuple[float, float]:
        """The ``level`` percentile interval of ``name``'s hit rate (NaNs when fewer
        than :data:`MIN_USERS` users' events were evaluated)."""
        return self._percentiles(self._replicates(name, None))

    def difference(self, a: str, b: str) -> tuple[float, float, float]:
        """``a``'s hit rate minus ``b``'s, and its paired ``level`` interval."""
        return (self.rate(a) - self.rate(b),
                *self._percentiles(self._replicates(a, b)))

    def _replicates(self, a: str, b: str | None) -> np.ndarray:
        users = self.n_users
        if users < MIN_USERS:
            return np.zeros(0)
        n = self._n[:users]
        ha = self._hits[a][:users]
        hb = self._hits[b][:users] if b is not None else None
        rng = np.random.default_rng(self.seed)
        out: list[np.ndarray] = []
        chunk = max(1, min(self.replicates, 2_000_000 // users))  # bounded memory
        for start in range(0, self.replicates, chunk):
            w = rng.poisson(1.0, size=(min(chunk, self.replicates - start), users))
            total = w @ n
            total[total == 0] = np.nan  # a replicate that drew no user
            rate = (w @ ha) / total
            if hb is not None:
                rate = rate - (w @ hb) / total
            out.append(rate)
        return np.concatenate(out)

    def _percentiles(self, values: np.ndarray) -> tuple[float, float]:
        values = values[~np.isnan(values)]
        if not len(values):
            return float("nan"), float("nan")
        tail = 100 * (1 - self.level) / 2
        lo, hi = np.percentile(values, [tail, 100 - tail])
        return float(lo), float(hi)
