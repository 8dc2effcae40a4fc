"""Hybrid: a blend of component models with weights tuned on the stream itself.

Each component (created through the registry) scores all items; scores are
normalised per component (by default min-max over its finite scores, so
every component spans ``[0, 1]`` whatever its scale or sign; see
``normalization``) and blended with weights from
a small grid on the simplex (steps of ``1 / grid_steps``).

The weights are tuned prequentially inside :meth:`Hybrid.learn`: before the
components learn a batch, ``tune_sample`` evenly spaced events of it are scored by
every component from the user's recent items (the hybrid's own per-user history,
moved event by event as in evaluation; all sampled events through one
``score_many`` per component), every grid blend ranks the true item among all
items minus the user's history, and an exponential moving average of each blend's
NDCG@``tune_k`` is updated. The blend with the best average serves. Users the
hybrid has never seen and who bring no history get the popularity component alone.

**Shared components.** By default the hybrid creates and learns private copies of
its components. :meth:`Hybrid.bind` (or :func:`online_models.registry.bind`) makes
it blend models it is *given* instead -- the trainer's own instances, learned by
the trainer: the hybrid then never learns them, it must learn each batch before
they do (:func:`~online_models.base.learning_order`), and its snapshot names them
instead of embedding copies. The recommendations are the same as with private
copies learned on the same stream.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from online_models import registry
from online_models.base import Batch, IdIndex, ModelState, OnlineModel, UserHistory
from online_models.rowmap import BindsComponents, RowMaps

if TYPE_CHECKING:
    from online_models.content import ItemFeatures

__all__ = ["Hybrid", "weight_grid"]

log = logging.getLogger(__name__)

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


#: :meth:`Hybrid._gains` ranks against each component's top items first when a tuning
#: event has more than this many candidate columns per component and top item
_PRUNE_FACTOR = 4


def _top_columns(sub: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A mask of about the ``n`` best columns of each row of ``sub`` (components x
    columns), and per row the threshold: the mask holds the columns above it in some
    row, so every other column is at most the threshold in every row. The thresholds
    come from every eighth column, which is cheaper than selecting exactly; any subset
    serves :meth:`Hybrid._gains` as a bound. Ties at a threshold are left out, so rows
    of mostly equal scores add few columns."""
    step = 8
    sample = sub[:, ::step]
    keep = max(1, -(-n // step))  # the best ``keep`` of a sample of 1/step
    thr = np.partition(sample, sample.shape[1] - keep, axis=1)[:, -keep]
    return np.asarray((sub > thr[:, None]).any(axis=0), bool), thr


def _blend(grid: np.ndarray, sub: np.ndarray) -> np.ndarray:
    """Every blend (row of ``grid``) of every column of ``sub`` (components x columns),
    summed component by component: the same operations for every column and subset of
    columns, so a column's blended value does not depend on which others are summed
    with it (and a column bounded in every component is bounded when blended)."""
    blends = grid[:, :1] * sub[0]
    for c in range(1, len(sub)):
        blends += grid[:, c : c + 1] * sub[c]
    return blends


def _blend_rank(grid: np.ndarray, sub: np.ndarray, at: int) -> tuple[np.ndarray, np.ndarray]:
    """Per blend, the rank of column ``at`` among the columns of ``sub``, ties against
    it, and its blended value."""
    blends = _blend(grid, sub)
    rank: np.ndarray = (blends >= blends[:, at : at + 1]).sum(axis=1)
    return rank, blends[:, at].copy()


class Hybrid(BindsComponents, OnlineModel):
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
        self._items = IdIndex()
        self.history = UserHistory(max_items=history_items)
        self._grid = weight_grid(len(self.components), grid_steps)
        self._ema = np.zeros(len(self._grid), np.float64)
        self._n_tuned = 0
        self._maps = RowMaps()  # component row -> hybrid row
        self._scratch = np.empty(0, np.float64)  # tuning's score buffer (not state)
        self._shared: set[str] = set()  # components bound from outside (not learned here)

    @property
    def items(self) -> IdIndex:
        """Union of the components' items; synced on access, as bound components
        learn outside the hybrid."""
        self._sync()
        return self._items

    @items.setter
    def items(self, value: IdIndex) -> None:
        self._items = value

    # ------------------------------------------------------------------ sharing
    def set_item_features(self, features: ItemFeatures) -> None:
        """Hand item content to every private component that takes it.

        Shared components belong to whoever owns them (the trainer gives them the
        same features through :func:`online_models.registry.give_item_features`).
        """
        for c, m in self.models.items():
            setter = getattr(m, "set_item_features", None)
            if c not in self._shared and callable(setter):
                setter(features)

    # ------------------------------------------------------------------ weights
    @property
    def weights(self) -> dict[str, float]:
        """The blend currently served (uniform-ish before any tuning evidence)."""
        best = int(np.argmax(self._ema)) if self._n_tuned else 0
        return dict(zip(self.components, self._grid[best].tolist(), strict=True))

    def blend_weights(self) -> dict[str, float]:
        return self.weights

    # ------------------------------------------------------------------ rows
    def _sync(self) -> None:
        self._maps.sync(self.models, self._items)

    def _component_rows(
        self,
        users: Sequence[str],
        contexts: Sequence[Sequence[str]],
        given: Mapping[str, np.ndarray] | None = None,
        scratch: bool = False,
    ) -> np.ndarray:
        """Normalised scores ``(n, components, hybrid items)`` of ``n`` queries.

        ``given[c]`` is component ``c``'s ``score_many(users, contexts)`` when the
        caller already has it (the evaluator scored the component itself).
        ``scratch``: write into a buffer kept for the next call (tuning, on the
        learning thread: a fresh multi-megabyte array per batch is a fresh zeroed
        mapping each time); the result is valid until the next such call.
        """
        cap = self._items.capacity
        n = len(users)
        shape = (n, len(self.components), cap)
        size = n * len(self.components) * cap
        if scratch:
            if self._scratch.size < size:  # grown by a quarter: catalogues grow steadily
                self._scratch = np.empty(size + size // 4, np.float64)
            out = self._scratch[:size].reshape(shape)
        else:
            out = np.zeros(shape, np.float64)
        if n == 0:
            return out
        for k, c in enumerate(self.components):
            pre = given.get(c) if given is not None else None
            raw = pre if pre is not None else self.models[c].score_many(users, contexts)
            rows = self._maps.rows(c)[: raw.shape[1]]
            width = len(rows)
            if (
                self.normalization != "rank"
                and self._maps.is_identity(c)
                and width <= cap
                and np.isfinite(raw[:, :width]).all()
            ):
                # The common case: normalised in place in the output, in few passes.
                view = out[:, k, :width]
                np.copyto(view, raw[:, :width])
                self._normalize_finite(view)
                if scratch:
                    out[:, k, width:] = 0.0
                continue
            if scratch:
                out[:, k] = 0.0
            s = np.asarray(raw, np.float64)[:, :width]
            mapped = rows >= 0
            if self.normalization != "rank" and mapped.all() and np.isfinite(s).all():
                norm = self._normalize_finite(s.copy())
            else:
                ok = mapped[None, :] & np.isfinite(s)
                norm = np.where(ok, self._normalize_rows(s, ok), 0.0)
            if self._maps.is_identity(c) and len(rows) <= cap:
                out[:, k, : len(rows)] = norm  # same row order as the hybrid: no scatter
            else:
                out[:, k, rows[mapped]] = norm[:, mapped]
        return out

    def _normalize_finite(self, s: np.ndarray) -> np.ndarray:
        """:meth:`_normalize_rows` of all-finite, all-mapped rows, in place ("minmax"/"max")."""
        if s.shape[1] == 0:
            return s
        lo = s.min(axis=1, keepdims=True)
        hi = s.max(axis=1, keepdims=True)
        live = hi > lo
        if self.normalization == "max":
            lo = np.minimum(lo, 0.0)
        s -= lo
        s /= np.where(live, hi - lo, 1.0)
        s[~live[:, 0]] = 0.0
        return s

    def _normalize_rows(self, s: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Row-wise :meth:`_normalize` of the entries where ``ok`` (others: anything)."""
        if self.normalization == "rank":
            out = np.zeros_like(s)
            for r in range(len(s)):
                if ok[r].any():
                    out[r, ok[r]] = self._normalize(s[r, ok[r]])
            return out
        lo = np.where(ok, s, np.inf).min(axis=1, initial=np.inf)[:, None]
        hi = np.where(ok, s, -np.inf).max(axis=1, initial=-np.inf)[:, None]
        live = hi > lo  # a constant (or empty) row says nothing: zeros
        if self.normalization == "max":
            lo = np.minimum(lo, 0.0)
        spread = np.where(live, hi - lo, 1.0)
        lo = np.where(live, lo, 0.0)
        return np.where(live, (s - lo) / spread, 0.0)

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
    def forget_users(self, users: Sequence[str]) -> None:
        """Drop ``users`` from the user index, the tuning histories and the private
        components (shared ones forget when their owner asks them)."""
        self.history.forget(users)
        for c, m in self.models.items():
            if c not in self._shared:
                m.forget_users(users)
        super().forget_users(users)

    def learn(self, batch: Batch) -> None:
        """Tune the blend on a sample of ``batch``, then learn the private components.

        Bound (shared) components are not learned here: their owner learns them
        after this call.
        """
        n = len(batch)
        if n == 0:
            return
        self._sync()
        sample = np.zeros(n, bool)
        sample[np.linspace(0, n - 1, min(self.tune_sample, n)).round().astype(int)] = True
        # The history moves event by event; ``before`` holds a sampled event's history
        # just before it, where it is a tuning event (history, and an item not in it).
        _, before = self.history.advance(batch.users, batch.items, sample.tolist())
        t_users: list[str] = []
        t_items: list[int] = []
        t_hists: list[list[str]] = []
        for pos, hist in before.items():  # in event order
            item = batch.items[pos]
            if item in self._items:
                t_users.append(batch.users[pos])
                t_items.append(self._items.get(item))
                t_hists.append(hist)
        if t_users:
            self._tune(t_users, t_hists, np.asarray(t_items, np.int64))
        self.users.add_many(batch.users)
        for c, m in self.models.items():
            if c not in self._shared:
                m.learn(batch)
        self._sync()

    def _tune(self, users: list[str], hists: list[list[str]], truth: np.ndarray) -> None:
        """Update every blend's NDCG average on the sampled events, in event order."""
        mats = self._component_rows(users, hists, scratch=True)
        for r, hist in enumerate(hists):
            gain = self._gains(mats[r], self._items.rows(hist), int(truth[r]))
            self._ema = self.tune_decay * self._ema + (1.0 - self.tune_decay) * gain
            self._n_tuned += 1

    def _gains(self, m: np.ndarray, h_rows: np.ndarray, truth: int) -> np.ndarray:
        """Every blend's NDCG@``tune_k`` gain of one event: ``m`` is ``(components,
        items)`` of normalised scores, ``h_rows`` the history (ranked out), ``truth`` the
        true item's row; ties count against the truth, as in the evaluator.

        Only items scoring at least the truth's in *some* component can reach it in a
        blend (weights are >= 0), so blends are summed over those columns alone (on a
        synthetic stream of 20,000 items about a tenth of them, in the median). The sum
        runs component by component, the same operations for every column, so equal
        scores give equal blends and ties stay ties. With more than ``tune_k`` items at
        least as good in *every* component, every blend misses and nothing is summed.
        """
        k = self.tune_k
        ge = m >= m[:, truth : truth + 1]
        ge[:, h_rows[h_rows >= 0]] = False  # the history is ranked out (-1: unknown here)
        if int(np.count_nonzero(ge.all(axis=0))) > k:
            return np.zeros(len(self._grid))
        cols = np.flatnonzero(ge.any(axis=0))  # the truth itself is among them
        sub = m[:, cols]
        at = int(np.searchsorted(cols, truth))
        grid = self._grid
        if len(cols) > _PRUNE_FACTOR * (k + 1) * len(sub):
            # Many candidates (a component that scores every item, as seqnn does): first
            # rank the truth among about the top k + 1 of each component alone. A blend
            # where more than k of those beat it has rank > k over all columns too (a
            # subset never ranks it lower), so only the other blends are summed over all.
            pick, thr = _top_columns(sub, k + 1)
            pick[at] = True
            low, truth_blend = _blend_rank(grid, sub[:, pick], int(np.count_nonzero(pick[:at])))
            # No column left out scores above ``thr`` in any component, so none blends
            # above ``bound``: where that is below the truth's blend, ``low`` is exact.
            bound = _blend(grid, thr[:, None])[:, 0]
            live = np.flatnonzero((low <= k) & ~(bound < truth_blend))
            rank = low
            if len(live):
                rank = low.copy()
                rank[live] = _blend_rank(grid[live], sub, at)[0]
        else:
            rank = _blend_rank(grid, sub, at)[0]
        return np.where(rank <= k, 1.0 / np.log2(rank + 1.0), 0.0)

    # ------------------------------------------------------------------ scoring
    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        return self.score_many([user], [history])[0]

    def score_many(
        self, users: Sequence[str], histories: Sequence[Sequence[str]]
    ) -> np.ndarray:
        return self.blend_many(users, histories, {})

    def blend_many(
        self,
        users: Sequence[str],
        histories: Sequence[Sequence[str]],
        component_scores: Mapping[str, np.ndarray],
    ) -> np.ndarray:
        """:meth:`score_many`, reusing ``component_scores[c]`` = ``c.score_many(users, histories)``.

        The evaluator passes the score matrices it just computed for the shared
        components; components missing from ``component_scores`` are scored here.
        A given matrix is only used for the rows whose query context is
        ``histories[r]`` itself (rows with a history).
        """
        if len(users) != len(histories):
            raise ValueError("score_many needs one history per user")
        self._sync()
        cap = self._items.capacity
        n = len(users)
        out = np.zeros((n, cap), np.float64)
        cold = np.asarray([not h and u not in self.users for u, h in zip(users, histories,
                                                                         strict=True)], bool)
        if cold.any():
            pop = self.models["popularity"]
            s = np.asarray(pop.score_all(""), np.float64)
            rows = self._maps.rows("popularity")[: len(s)]
            ok = rows >= 0
            out[np.ix_(cold, rows[ok])] = s[: len(rows)][ok]
        warm = np.flatnonzero(~cold).tolist()
        if warm:
            direct = all(len(histories[r]) for r in warm)
            contexts = [list(histories[r]) or self.history.get(users[r]) for r in warm]
            w_users = [users[r] for r in warm]
            given = (
                {c: np.asarray(m)[warm] for c, m in component_scores.items()}
                if direct and component_scores
                else None
            )
            mats = self._component_rows(w_users, contexts, given)
            w = np.asarray(list(self.weights.values()))
            for j, r in enumerate(warm):
                out[r] = w @ mats[j]
        return self._finish_many(out)

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
        """State of the hybrid and its private components; shared ones only by name.

        A hybrid restored from a state with shared components holds fresh
        placeholders for them until :meth:`bind` gives it the real models (the
        snapshot loader binds every hybrid to the models of its snapshot).
        """
        self._sync()
        arrays: dict[str, np.ndarray] = {
            **self.users.to_arrays("users"),
            **self._items.to_arrays("items"),
            **self.history.to_arrays("history"),
            "ema": self._ema.copy(),
        }
        meta = {
            "class": self.name,
            "params": self.get_params(),
            **self._components_state(arrays),
            "n_tuned": self._n_tuned,
        }
        return ModelState(arrays=arrays, meta=meta)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        a, meta = state.arrays, state.meta
        m = cls(**meta["params"])
        m.users = IdIndex.from_arrays(a, "users")
        m._items = IdIndex.from_arrays(a, "items")
        m.history = UserHistory.from_arrays(a, "history", max_items=m.history_items)
        m._ema = np.asarray(a["ema"], np.float64).copy()
        m._n_tuned = int(meta["n_tuned"])
        shared = m._restore_components(a, meta)
        if shared:
            # A developer's note (the trainer and the server bind at once): not for INFO.
            log.debug("hybrid restored with shared components %s: they are read from the "
                      "models beside it once registry.bind() runs", sorted(shared))
        return m
