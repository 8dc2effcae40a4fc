"""Hybrid: a blend of component models with weights tuned on the stream itself.

Each component (created through the registry) scores all items; scores are
normalised per component (by default min-max over its finite scores, so
every component spans ``[0, 1]`` whatever its scale or sign; see
``normalization``) and blended with weights from
a small grid on the simplex (steps of ``1 / grid_steps``).

The weights are tuned prequentially inside :meth:`Hybrid.learn`: before the
components learn a batch, ``tune_sample`` evenly spaced events of it are scored by
every component from the user's recent items (the hybrid's own per-user history,
moved event by event as in evaluation), every grid blend ranks the true item
among all items minus the user's history, and an exponential moving average of
each blend's NDCG@``tune_k`` is updated. The blend with the best average serves.
Users the hybrid has never seen and who bring no history get the popularity
component alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np

from online_models import registry
from online_models.base import Batch, IdIndex, ModelState, OnlineModel, UserHistory

__all__ = ["Hybrid", "weight_grid"]

_NORMALIZATIONS = ("minmax", "max", "rank")

DEFAULT_COMPONENTS: tuple[str, ...] = ("popularity", "itemknn", "sequence", "sknn")


def weight_grid(n: int, steps: int) -> np.ndarray:
    """Every weight vector of ``n`` non-negative multiples of ``1/steps`` summing to 1.

    The uniform-ish blends come first so that, before any evidence, the hybrid
    does not prefer a single component.

    >>> weight_grid(2, 2).tolist()
    [[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]]
    """
    rows = [c for c in itertools.product(range(steps + 1), repeat=n) if sum(c) == steps]
    grid = np.asarray(rows, np.float64) / steps
    spread = np.abs(grid - 1.0 / n).sum(axis=1)
    return grid[np.argsort(spread, kind="stable")]


class Hybrid(OnlineModel):
    """Blend of registry models, weights tuned prequentially; popularity for cold users.

    Parameters
    ----------
    components
        Registry names of the components; must include ``"popularity"`` (the
        cold-start fallback). ``"name@label"`` adds another instance of model
        ``name`` (configured through ``component_params["name@label"]``).
    component_params
        Optional constructor arguments per component name.
    grid_steps
        Resolution of the weight grid.
    tune_sample
        Events per batch used to tune the weights (evenly spaced in the batch).
    tune_k
        Cut-off of the NDCG used to compare blends.
    tune_decay
        EMA factor per tuning event (closer to 1 = longer memory).
    history_items
        Recent distinct items kept per user for tuning and as default query context.
    normalization
        How each component's scores are put on one scale before blending:
        ``"minmax"`` (to ``[0, 1]``), ``"max"`` (divided by the best score, keeps
        ratios), ``"rank"`` (reciprocal-rank fusion over the top ``rank_depth``:
        ``(c + 1) / (c + 1 + rank)`` with ``c = rank_constant``, 0 below).
    rank_depth
        Items per component that get a non-zero ``"rank"`` score.
    rank_constant
        ``c`` of the ``"rank"`` normalisation (larger: flatter).

    Examples
    --------
    >>> m = Hybrid(tune_sample=4)
    >>> m.learn(Batch.from_columns(["a", "a", "b", "b"], ["x", "y", "x", "y"], None, range(4)))
    >>> [i for i, _ in m.recommend("a", 1, history=["x"], exclude=["x"])]
    ['y']
    >>> m.recommend("nobody", 1)[0][0] in {"x", "y"}
    True
    """

    name: ClassVar[str] = "hybrid"

    def __init__(
        self,
        components: Sequence[str] = DEFAULT_COMPONENTS,
        component_params: Mapping[str, Mapping[str, Any]] | None = None,
        grid_steps: int = 4,
        tune_sample: int = 32,
        tune_k: int = 10,
        tune_decay: float = 0.998,
        history_items: int = 50,
        normalization: str = "minmax",
        rank_depth: int = 200,
        rank_constant: float = 10.0,
    ) -> None:
        self.components = list(components)
        self.component_params = {k: dict(v) for k, v in (component_params or {}).items()}
        self.grid_steps = grid_steps
        self.tune_sample = tune_sample
        self.tune_k = tune_k
        self.tune_decay = tune_decay
        self.history_items = history_items
        if normalization not in _NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {_NORMALIZATIONS}")
        self.normalization = normalization
        self.rank_depth = rank_depth
        self.rank_constant = rank_constant
        if "popularity" not in self.components:
            raise ValueError("Hybrid needs a 'popularity' component (cold-start fallback)")
        if len(set(self.components)) != len(self.components):
            raise ValueError("Hybrid components must be distinct")
        self.models: dict[str, OnlineModel] = {}
        for c in self.components:
            kind = c.split("@", 1)[0]
            if kind == "hybrid":
                raise ValueError("a Hybrid cannot contain a hybrid")
            try:
                self.models[c] = registry.create(kind, **self.component_params.get(c, {}))
            except (ImportError, AttributeError) as exc:
                raise ValueError(
                    f"Hybrid component {c!r} is not available ({exc}); "
                    f"choose components among the implemented models"
                ) from exc

        self.users = IdIndex()
        self.items = IdIndex()
        self.history = UserHistory(max_items=history_items)
        self._grid = weight_grid(len(self.components), grid_steps)
        self._ema = np.zeros(len(self._grid), np.float64)
        self._n_tuned = 0
        self._maps: dict[str, np.ndarray] = {}  # component row -> hybrid row
        self._gens: dict[str, int] = {}

    # ------------------------------------------------------------------ weights
    @property
    def weights(self) -> dict[str, float]:
        """The blend currently served (uniform-ish before any tuning evidence)."""
        best = int(np.argmax(self._ema)) if self._n_tuned else 0
        return dict(zip(self.components, self._grid[best].tolist(), strict=True))

    # ------------------------------------------------------------------ rows
    def _sync(self) -> None:
        for c, m in self.models.items():
            index = m.items
            old = self._maps.get(c, np.zeros(0, np.int64))
            start = 0 if index.generation != self._gens.get(c) else len(old)
            ids = index.ids
            if start == len(ids) and start == len(old):
                continue
            new = np.asarray([-1 if k is None else self.items.add(k) for k in ids[start:]],
                             np.int64)
            self._maps[c] = np.concatenate((old[:start], new))
            self._gens[c] = index.generation

    def _component_matrix(self, user: str, history: Sequence[str]) -> np.ndarray:
        """Normalised scores, one row per component, columns = hybrid item rows."""
        cap = self.items.capacity
        out = np.zeros((len(self.components), cap), np.float64)
        for k, c in enumerate(self.components):
            s = np.asarray(self.models[c].score_all(user, history), np.float64)
            rows = self._maps.get(c, np.zeros(0, np.int64))[: len(s)]
            ok = (rows >= 0) & np.isfinite(s[: len(rows)])
            vals = s[: len(rows)][ok]
            if len(vals):
                out[k, rows[ok]] = self._normalize(vals)
        return out

    def _normalize(self, vals: np.ndarray) -> np.ndarray:
        """One component's finite scores mapped to a common scale (higher is better)."""
        lo, hi = vals.min(), vals.max()
        if hi <= lo:
            return np.zeros_like(vals)
        if self.normalization == "minmax":
            return (vals - lo) / (hi - lo)
        if self.normalization == "max":
            # Keeps score ratios (a clear winner stays a clear winner) for non-negative scorers.
            return (vals - min(lo, 0.0)) / (hi - min(lo, 0.0))
        # "rank": reciprocal rank fusion over each component's top ``rank_depth``.
        depth = min(self.rank_depth, len(vals))
        top = np.argpartition(-vals, depth - 1)[:depth]
        top = top[np.argsort(-vals[top], kind="stable")]
        out = np.zeros_like(vals)
        c = self.rank_constant
        # Tied scores share the best rank of the tie group, so ties stay ties.
        v = vals[top]
        first = np.concatenate(([True], v[1:] != v[:-1]))
        rank = np.maximum.accumulate(np.where(first, np.arange(depth), 0))
        out[top] = (c + 1.0) / (c + 1.0 + rank)
        out[top[v <= lo]] = 0.0
        return out

    # ------------------------------------------------------------------ learning
    def learn(self, batch: Batch) -> None:
        n = len(batch)
        if n == 0:
            return
        self._sync()
        sample = set(np.linspace(0, n - 1, min(self.tune_sample, n)).round().astype(int).tolist())
        for pos, (user, item) in enumerate(zip(batch.users, batch.items, strict=True)):
            hist = self.history.get(user)
            if pos in sample and hist and item not in hist and item in self.items:
                self._tune_one(user, item, hist)
            self.history.append(user, item)
        self.users.add_many(batch.users)
        for m in self.models.values():
            m.learn(batch)
        self._sync()

    def _tune_one(self, user: str, item: str, hist: Sequence[str]) -> None:
        mat = self._component_matrix(user, hist)
        blends = self._grid @ mat  # (n_blends, n_items)
        blends[:, self.items.rows(hist)] = -np.inf
        truth = self.items.get(item)
        t = blends[:, truth][:, None]
        # Pessimistic ties, as in the evaluator.
        rank = (blends >= t).sum(axis=1)
        gain = np.where(rank <= self.tune_k, 1.0 / np.log2(rank + 1.0), 0.0)
        self._ema = self.tune_decay * self._ema + (1.0 - self.tune_decay) * gain
        self._n_tuned += 1

    # ------------------------------------------------------------------ scoring
    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        cap = self.items.capacity
        if not history and user not in self.users:
            pop = self.models["popularity"]
            s = np.asarray(pop.score_all(user), np.float64)
            out = np.zeros(cap, np.float64)
            rows = self._maps.get("popularity", np.zeros(0, np.int64))[: len(s)]
            ok = rows >= 0
            out[rows[ok]] = s[: len(rows)][ok]
        else:
            context = list(history) if history else self.history.get(user)
            w = np.asarray(list(self.weights.values()))
            out = w @ self._component_matrix(user, context)
        return self._finish_scores(out)

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        """Weighted merge of the components' similar items (popularity if none has any)."""
        merged: dict[str, float] = {}
        for c, w in self.weights.items():
            if c == "popularity" or w == 0:
                continue
            sims = self.models[c].similar(item, 2 * k)
            top = max((s for _, s in sims), default=0.0)
            for i, s in sims:
                merged[i] = merged.get(i, 0.0) + w * (s / top if top > 0 else 0.0)
        if not merged:
            return self.models["popularity"].similar(item, k)
        best = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return best

    # ------------------------------------------------------------------ state
    def get_state(self) -> ModelState:
        arrays: dict[str, np.ndarray] = {
            **self.users.to_arrays("users"),
            **self.items.to_arrays("items"),
            **self.history.to_arrays("history"),
            "ema": self._ema.copy(),
        }
        comp_meta: dict[str, Any] = {}
        for c, m in self.models.items():
            st = m.get_state()
            comp_meta[c] = st.meta
            arrays.update({f"{c}/{k}": v for k, v in st.arrays.items()})
            arrays[f"map/{c}"] = self._maps.get(c, np.zeros(0, np.int64)).copy()
        meta = {
            "class": self.name,
            "params": self.get_params(),
            "components": comp_meta,
            "n_tuned": self._n_tuned,
        }
        return ModelState(arrays=arrays, meta=meta)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        a, meta = state.arrays, state.meta
        m = cls(**meta["params"])
        m.users = IdIndex.from_arrays(a, "users")
        m.items = IdIndex.from_arrays(a, "items")
        m.history = UserHistory.from_arrays(a, "history", max_items=m.history_items)
        m._ema = np.asarray(a["ema"], np.float64).copy()
        m._n_tuned = int(meta["n_tuned"])
        for c in m.components:
            prefix = f"{c}/"
            sub = {k[len(prefix):]: v for k, v in a.items() if k.startswith(prefix)}
            m.models[c] = registry.from_state(ModelState(arrays=sub, meta=meta["components"][c]))
            m._maps[c] = np.asarray(a[f"map/{c}"], np.int64).copy()
            m._gens[c] = m.models[c].items.generation
        return m
