"""A learned re-ranker: an MLP click model over the top candidates of component models.

Recall: every component (registry models, as in :mod:`online_models.hybrid`) scores
all items; scores are min-max normalised per component and blended (``base``):
``"hybrid"`` (default) weights them with the blend an internal
:class:`~online_models.hybrid.Hybrid` tunes on the stream (bound to this model's
components: it tunes, it does not learn copies), ``"sum"`` adds them unweighted
(round 1). The best ``candidates`` items are re-ranked by an MLP (ReLU hidden layer,
Adam) over these features of each candidate:

* per component: its normalised score and ``1 / log2(2 + rank)`` of the item among
  the candidates by that component;
* the recall score (the blend of the normalised scores);
* the item: ``log1p`` of its interaction count, of its age (days since first seen)
  and of the days since it was last seen;
* the user: ``log1p`` of their event count and of the hours since their last event;
* content: cosine of the item's content vector with the recency-weighted profile of
  the user's recent items (0 without item features).

With ``residual`` (default) the logit is ``alpha * recall + MLP(x)``, ``alpha``
learned and the MLP's output layer starting at zero: the untrained re-ranker orders
the candidates exactly as the recall does, and learning moves it from there (a
re-ranker that must first re-learn the blend from scratch ranks below it for long).

Training is online, inside :meth:`ReRanker.learn`, before the components learn the
batch (so on what they knew when the event came): for ``train_sample`` evenly spaced
events of the batch whose user has history, the clicked item is a positive and
``negatives`` candidates the user was shown but did not click are negatives (drawn
from the candidates; with ``shown`` half from the current top ``shown``). ``loss``:
``"listwise"`` (default) is the softmax cross-entropy of the positive against its
negatives, learned only when the clicked item is a candidate (what a re-ranker can
move); ``"pointwise"`` is the binary cross-entropy of each example (round 1). The
example groups of recent batches are kept (``replay_size`` feature rows) and each
batch runs ``steps_per_batch`` Adam steps on draws of ``step_examples`` rows of them.
Until ``warmup_examples`` examples were seen, candidates keep the recall order.

Like the hybrid, the re-ranker creates private components, or re-ranks models it is
given (:meth:`ReRanker.bind`, :func:`online_models.registry.bind`: what the trainer and
``liverec evaluate`` do), which it then reads and never learns.

Candidates score above every other item (``2 +`` their re-ranked score scaled into
``[0, 1)``), every other item its recall score scaled into ``[0, 1)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np
import torch
from torch import nn

from online_models import registry
from online_models.base import Batch, IdIndex, ModelState, OnlineModel, UserHistory, grow_rows
from online_models.content import ItemFeatures
from online_models.hybrid import Hybrid
from online_models.rowmap import BindsComponents, RowMaps

__all__ = ["ReRanker"]

DEFAULT_COMPONENTS: tuple[str, ...] = ("popularity", "itemknn", "sequence", "sknn")
_N_OTHER = 7  # recall + 3 item + 2 user + 1 content features
_BASES = ("hybrid", "sum")
_LOSSES = ("listwise", "pointwise")


class _Scorer(nn.Module):
    """The click model: an MLP, plus ``alpha`` times the recall feature (``residual``)."""

    def __init__(self, n_in: int, hidden: int, recall_col: int, residual: bool) -> None:
        super().__init__()
        first, last = nn.Linear(n_in, hidden), nn.Linear(hidden, 1)
        self.mlp = nn.Sequential(first, nn.ReLU(), last)
        self.recall_col = recall_col
        self.residual = residual
        if residual:
            # Starts as the recall's order; the MLP learns the corrections.
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.alpha = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(x).squeeze(-1)
        if self.residual:
            out = out + self.alpha * x[..., self.recall_col]
        return out


class ReRanker(BindsComponents, OnlineModel):
    """MLP click model re-ranking the top candidates of its component models.

    Parameters
    ----------
    components
        Registry names of the component models (``"name@label"`` for a second
        instance, configured through ``component_params``).
    component_params
        Optional constructor arguments per component.
    candidates
        How many recall candidates are re-ranked.
    hidden
        Hidden units of the MLP.
    learning_rate
        Adam step size.
    train_sample
        Events per batch turned into training examples.
    negatives
        Shown-but-not-clicked negatives per positive.
    shown
        With ``shown > 0`` half the negatives come from the current top ``shown`` of
        the re-ranked list (hard negatives); 0 draws them all from the candidates
        (on the planted test stream hard negatives cost 3% HR@10).
    base
        The recall blend: ``"hybrid"`` (weights tuned by an internal hybrid) or
        ``"sum"`` (unweighted).
    blend_params
        Tuning arguments of the internal hybrid (``tune_sample``, ``tune_decay``,
        ``grid_steps``, ...; ``base="hybrid"`` only).
    loss
        ``"listwise"`` (softmax of the clicked candidate against its negatives) or
        ``"pointwise"`` (binary cross-entropy per example).
    residual
        The logit is ``alpha * recall + MLP(x)``, starting at the recall's order.
    warmup_examples
        Training examples before the MLP's order is used.
    steps_per_batch
        Adam steps per learned batch.
    step_examples
        Examples per step, drawn from the replay of recent examples.
    replay_size
        Recent training examples kept (feature rows).
    history_items
        Recent items kept per user (query context and training).
    content_items
        Recent items in the user's content profile.
    seed
        Seed of the MLP's initialisation and of negative sampling.

    Examples
    --------
    >>> m = ReRanker(warmup_examples=0, train_sample=4)
    >>> m.learn(Batch.from_columns(["a", "a", "b", "b"], ["x", "y", "x", "y"], None, range(4)))
    >>> [i for i, _ in m.recommend("c", 1, history=["x"], exclude=["x"])]
    ['y']
    """

    name: ClassVar[str] = "ranked"

    def __init__(
        self,
        components: Sequence[str] = DEFAULT_COMPONENTS,
        component_params: Mapping[str, Mapping[str, Any]] | None = None,
        candidates: int = 100,
        hidden: int = 32,
        learning_rate: float = 3e-3,
        train_sample: int = 32,
        negatives: int = 16,
        shown: int = 0,
        warmup_examples: int = 2_000,
        steps_per_batch: int = 32,
        step_examples: int = 256,
        replay_size: int = 10_000,
        history_items: int = 50,
        content_items: int = 10,
        base: str = "hybrid",
        blend_params: Mapping[str, Any] | None = None,
        loss: str = "listwise",
        residual: bool = True,
        seed: int = 0,
    ) -> None:
        self.components = list(components)
        self.component_params = {k: dict(v) for k, v in (component_params or {}).items()}
        self.candidates = candidates
        self.hidden = hidden
        self.learning_rate = learning_rate
        self.train_sample = train_sample
        self.negatives = negatives
        self.shown = shown
        self.warmup_examples = warmup_examples
        self.steps_per_batch = steps_per_batch
        self.step_examples = step_examples
        self.replay_size = replay_size
        self.history_items = history_items
        self.content_items = content_items
        if base not in _BASES:
            raise ValueError(f"base must be one of {_BASES}")
        if loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}")
        self.base = base
        self.blend_params = dict(blend_params or {})
        self.loss = loss
        self.residual = residual
        self.seed = seed
        if not self.components or len(set(self.components)) != len(self.components):
            raise ValueError("ReRanker needs distinct components")
        self.models: dict[str, OnlineModel] = {}
        for c in self.components:
            kind = c.split("@", 1)[0]
            if kind in ("ranked", "hybrid"):
                raise ValueError(f"a ReRanker cannot contain a {kind!r} component")
            self.models[c] = registry.create(kind, **self.component_params.get(c, {}))
        self._blend: Hybrid | None = None
        if base == "hybrid":
            self._blend = Hybrid(self.components, self.component_params, **self.blend_params)
            self._blend.bind(self.models)

        self.users = IdIndex()
        self.items = IdIndex()
        self.history = UserHistory(max_items=history_items)
        self.features: ItemFeatures | None = None
        self._maps = RowMaps()  # component row -> our row
        self._shared: set[str] = set()  # components bound from outside (not learned here)
        self._i_count = np.zeros(0, np.float64)
        self._i_first = np.zeros(0, np.float64)
        self._i_last = np.zeros(0, np.float64)
        self._u_count = np.zeros(0, np.float64)
        self._u_last = np.zeros(0, np.float64)
        self._watermark = 0.0
        self.n_trained = 0
        # An MLP over 100 candidates is far too small for intra-op threads: with the
        # default pool a request took ~4x as long on a busy 2-core box (as for the
        # embedding model, which sets the same; process-wide, on purpose).
        torch.set_num_threads(1)
        n_in = 2 * len(self.components) + _N_OTHER
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._mlp = _Scorer(n_in, hidden, 2 * len(self.components), residual)
        self._opt = torch.optim.Adam(self._mlp.parameters(), lr=learning_rate)
        self._gen = torch.Generator().manual_seed(seed)
        # Replay of example groups (a positive, then its negatives), group by group.
        self._group = 1 + negatives
        n_groups = max(1, replay_size // self._group)
        self._rx = np.zeros((n_groups, self._group, n_in), np.float32)
        self._ry = np.zeros((n_groups, self._group), np.float32)
        self._r_pos = 0
        self._r_len = 0

    # ------------------------------------------------------------------ sharing
    def bind(self, models: Mapping[str, OnlineModel]) -> list[str]:
        """As :meth:`online_models.hybrid.Hybrid.bind`; the recall's internal hybrid
        then reads the same models."""
        bound = super().bind(models)
        if self._blend is not None:
            self._blend.bind(self.models)
        return bound

    # ------------------------------------------------------------------ features
    def set_item_features(self, features: ItemFeatures) -> None:
        """Use ``features`` for the content feature, and pass them to the private
        components that take them (shared ones get them from their owner)."""
        self.features = features
        for c, m in self.models.items():
            setter = getattr(m, "set_item_features", None)
            if c not in self._shared and setter is not None:
                setter(features)
        self._sync()

    def _sync(self) -> None:
        self._maps.sync(self.models, self.items)
        cap = self.items.capacity
        self._i_count = grow_rows(self._i_count, cap)
        self._i_first = grow_rows(self._i_first, cap, np.nan)
        self._i_last = grow_rows(self._i_last, cap, np.nan)

    @property
    def blend(self) -> dict[str, float]:
        """The recall's weight per component (the internal hybrid's tuned blend, or 1s)."""
        if self._blend is None:
            return dict.fromkeys(self.components, 1.0)
        return self._blend.weights

    def blend_weights(self) -> dict[str, float]:
        """The recall blend's weights (the re-ranker's own scoring is an MLP)."""
        return self.blend

    def _weights(self) -> np.ndarray:
        w = self.blend
        return np.asarray([w[c] for c in self.components], np.float64)

    def _matrix(self, user: str, history: Sequence[str]) -> np.ndarray:
        """Normalised component scores, one row per component, columns = our item rows."""
        cap = self.items.capacity
        out = np.zeros((len(self.components), cap), np.float64)
        for k, c in enumerate(self.components):
            s = np.asarray(self.models[c].score_all(user, history), np.float64)
            rows = self._maps.rows(c)[: len(s)]
            ok = (rows >= 0) & np.isfinite(s[: len(rows)])
            vals = s[: len(rows)][ok]
            if len(vals):
                lo, hi = vals.min(), vals.max()
                out[k, rows[ok]] = (vals - lo) / (hi - lo) if hi > lo else 0.0
        return out

    def _features(
        self, mat: np.ndarray, recall: np.ndarray, rows: np.ndarray, cand: np.ndarray,
        user: str, history: Sequence[str], now: float,
    ) -> np.ndarray:
        """Feature rows for item ``rows`` (``recall``: the blend of ``mat``, from
        :meth:`_candidates`); ranks are taken among ``cand``."""
        n_c = len(self.components)
        x = np.zeros((len(rows), 2 * n_c + _N_OTHER), np.float32)
        sub = mat[:, rows]
        cand_scores = mat[:, cand]
        for k in range(n_c):
            ranks = np.searchsorted(np.sort(-cand_scores[k]), -sub[k], side="left")
            x[:, k] = sub[k]
            x[:, n_c + k] = 1.0 / np.log2(2.0 + ranks)
        x[:, 2 * n_c] = recall[rows]
        day = 86_400.0
        x[:, 2 * n_c + 1] = np.log1p(self._i_count[rows])
        x[:, 2 * n_c + 2] = np.log1p(np.nan_to_num(np.maximum(now - self._i_first[rows], 0) / day))
        x[:, 2 * n_c + 3] = np.log1p(np.nan_to_num(np.maximum(now - self._i_last[rows], 0) / day))
        ur = self.users.get(user)
        if 0 <= ur < len(self._u_count):
            x[:, 2 * n_c + 4] = np.log1p(self._u_count[ur])
            x[:, 2 * n_c + 5] = np.log1p(max(now - self._u_last[ur], 0.0) / 3600.0)
        x[:, 2 * n_c + 6] = self._content_sim(rows, history)
        return x

    def _content_sim(self, rows: np.ndarray, history: Sequence[str]) -> np.ndarray:
        f = self.features
        if f is None or not history:
            return np.zeros(len(rows), np.float32)
        prof = f.profile(list(history)[-self.content_items:], 0.8)
        norm = float(np.sqrt(prof @ prof)) or 1.0
        ids = self.items.ids
        content = f.matrix([ids[r] for r in rows.tolist()])  # a freed row: no tokens
        return (content @ prof / norm).astype(np.float32)

    def _candidates(self, mat: np.ndarray, history: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The top ``candidates`` live items outside ``history`` by the recall blend, best
        first, and the blend of every item (computed once here for every caller)."""
        recall = self._weights() @ mat
        open_ = recall.copy()
        live = self.items.live_mask()
        open_[~live[: len(open_)]] = -np.inf
        hist = self.items.rows(history)
        open_[hist[hist >= 0]] = -np.inf
        k = min(self.candidates, int(np.isfinite(open_).sum()))
        if k == 0:
            return np.zeros(0, np.int64), recall
        top = np.argpartition(-open_, k - 1)[:k]
        return top[np.argsort(-open_[top], kind="stable")], recall

    def _logits(self, x: np.ndarray) -> torch.Tensor:
        out: torch.Tensor = self._mlp(torch.from_numpy(x))
        return out

    # ------------------------------------------------------------------ learning
    def forget_users(self, users: Sequence[str]) -> None:
        """Drop ``users``: their rows, activity counts and histories, in the recall
        blend and in the private components too (shared ones forget when their owner
        asks them)."""
        self.history.forget(users)
        if self._blend is not None:
            self._blend.forget_users(users)
        for c, m in self.models.items():
            if c not in self._shared:
                m.forget_users(users)
        rows = np.asarray(self.users.remove_many(users), np.int64)
        held = rows[rows < len(self._u_count)]
        self._u_count[held] = 0.0
        self._u_last[held] = 0.0

    def learn(self, batch: Batch) -> None:
        n = len(batch)
        if n == 0:
            return
        self._sync()
        sample = set(np.linspace(0, n - 1, min(self.train_sample, n)).round().astype(int).tolist())
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        for pos, (user, item, t) in enumerate(
            zip(batch.users, batch.items, batch.timestamps.tolist(), strict=True)
        ):
            hist = self.history.get(user)
            row = self.items.get(item)
            if pos in sample and hist and row >= 0 and item not in hist:
                ex = self._examples(user, hist, row, float(t))
                if ex is not None:
                    xs.append(ex[0])
                    ys.append(ex[1])
            self.history.append(user, item)
        if xs:
            x, y = np.stack(xs), np.stack(ys)
            self._push(x, y)
            self.n_trained += y.size
            per_step = max(1, self.step_examples // self._group)
            for _ in range(self.steps_per_batch):
                pick = torch.randint(0, self._r_len, (per_step,), generator=self._gen).numpy()
                self._step(torch.from_numpy(self._rx[pick]), torch.from_numpy(self._ry[pick]))
        if self._blend is not None:
            self._blend.learn(batch)  # tunes the recall blend; learns no component
        # The batch's items get rows now, in batch order, whoever learns the components
        # (bound ones learn after this call): the same rows either way.
        self.items.add_many(batch.items)
        for c, m in self.models.items():
            if c not in self._shared:
                m.learn(batch)
        self._sync()
        ts = np.asarray(batch.timestamps, np.float64)
        urows = self.users.add_many(batch.users)
        self._u_count = grow_rows(self._u_count, self.users.capacity)
        self._u_last = grow_rows(self._u_last, self.users.capacity)
        np.add.at(self._u_count, urows, 1.0)
        np.maximum.at(self._u_last, urows, ts)
        irows = self.items.rows(batch.items)
        ok = irows >= 0
        np.add.at(self._i_count, irows[ok], 1.0)
        first = self._i_first[irows[ok]]
        self._i_first[irows[ok]] = np.where(np.isnan(first), ts[ok], np.fmin(first, ts[ok]))
        last = self._i_last[irows[ok]]
        self._i_last[irows[ok]] = np.where(np.isnan(last), ts[ok], np.fmax(last, ts[ok]))
        self._watermark = max(self._watermark, float(ts.max()))

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """One Adam step on example groups ``xb`` (groups, 1 + negatives, features)."""
        self._opt.zero_grad()
        logits = self._mlp(xb)
        if self.loss == "listwise":  # the positive (column 0) against its group
            loss = nn.functional.cross_entropy(
                logits, torch.zeros(len(logits), dtype=torch.long))
        else:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, yb)
        loss.backward()
        self._opt.step()

    def _push(self, x: np.ndarray, y: np.ndarray) -> None:
        size = len(self._rx)
        x, y = x[-size:], y[-size:]
        idx = (self._r_pos + np.arange(len(y))) % size
        self._rx[idx], self._ry[idx] = x, y
        self._r_pos = int((self._r_pos + len(y)) % size)
        self._r_len = min(size, self._r_len + len(y))

    def _examples(
        self, user: str, hist: list[str], row: int, now: float
    ) -> tuple[np.ndarray, np.ndarray] | None:
        mat = self._matrix(user, hist)
        cand, recall = self._candidates(mat, hist)
        others = cand[cand != row]
        if len(others) == 0 or (self.loss == "listwise" and len(others) == len(cand)):
            return None  # listwise: only a clicked candidate teaches the order
        # "Shown" = the current top of the re-ranked list; the rest of the candidates.
        order = self._rank(mat, recall, cand, user, hist, now)
        shown = order[order != row][: self.shown]
        rest = np.setdiff1d(others, shown, assume_unique=True)
        half = self.negatives // 2 if len(shown) and len(rest) else (
            self.negatives if len(shown) else 0)  # a group always has 1 + negatives rows
        negs = []
        if half:
            negs.append(shown[torch.randint(0, len(shown), (half,), generator=self._gen).numpy()])
        if self.negatives - half:
            negs.append(rest[torch.randint(0, len(rest), (self.negatives - half,),
                                           generator=self._gen).numpy()])
        rows = np.concatenate([[row], *negs]).astype(np.int64)
        x = self._features(mat, recall, rows, cand, user, hist, now)
        y = np.zeros(len(rows), np.float32)
        y[0] = 1.0
        return x, y

    def _rank(
        self, mat: np.ndarray, recall: np.ndarray, cand: np.ndarray, user: str,
        hist: Sequence[str], now: float,
    ) -> np.ndarray:
        if self.n_trained < self.warmup_examples or len(cand) == 0:
            return cand
        with torch.no_grad():
            p = self._logits(self._features(mat, recall, cand, cand, user, hist, now)).numpy()
        return cand[np.argsort(-p, kind="stable")]

    # ------------------------------------------------------------------ scoring
    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        self._sync()  # bound components may have learned since
        cap = self.items.capacity
        hist = list(history) if history else self.history.get(user)
        if cap == 0:
            return np.zeros(0, np.float32)
        mat = self._matrix(user, hist)
        cand, recall = self._candidates(mat, hist)
        top = recall.max() if cap else 0.0
        out = recall / (top * 1.0001) if top > 0 else recall.copy()
        if len(cand):
            if self.n_trained >= self.warmup_examples:
                with torch.no_grad():
                    x = self._features(mat, recall, cand, cand, user, hist, self._watermark)
                    z = self._logits(x).numpy().astype(np.float64)
                # Order-preserving into [2, 3): logits can exceed a sigmoid's resolution.
                span = z.max() - z.min()
                out[cand] = 2.0 + ((z - z.min()) / span * 0.999 if span > 0 else 0.0)
            else:
                out[cand] = 2.0 + recall[cand] / (recall[cand].max() + 1e-12) * 0.999
        return self._finish_scores(out)

    def click_proba(
        self, user: str, items: Sequence[str], history: Sequence[str] = ()
    ) -> np.ndarray:
        """``P(click | user, item)`` from the MLP for each of ``items`` (0.0 if unknown).

        Calibrated with ``loss="pointwise"``; with ``"listwise"`` the sigmoid of a
        logit that is only defined up to a shift: it orders items, it is no probability.
        """
        self._sync()
        out = np.zeros(len(items), np.float64)
        rows = self.items.rows(items)
        ok = rows >= 0
        if not ok.any():
            return out
        hist = list(history) if history else self.history.get(user)
        mat = self._matrix(user, hist)
        cand, recall = self._candidates(mat, hist)
        with torch.no_grad():
            x = self._features(mat, recall, rows[ok], cand, user, hist, self._watermark)
            out[ok] = torch.sigmoid(self._logits(x)).numpy()
        return out

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        """Merge of the components' similar items (rank-averaged)."""
        merged: dict[str, float] = {}
        for c, m in self.models.items():
            if c.startswith("popularity"):
                continue
            for r, (i, _) in enumerate(m.similar(item, 2 * k)):
                merged[i] = merged.get(i, 0.0) + 1.0 / (1.0 + r)
        if not merged and "popularity" in self.models:
            return self.models["popularity"].similar(item, k)
        return sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:k]

    # ------------------------------------------------------------------ state
    def get_state(self) -> ModelState:
        arrays: dict[str, np.ndarray] = {
            **self.users.to_arrays("users"),
            **self.items.to_arrays("items"),
            **self.history.to_arrays("history"),
            "i_count": self._i_count.copy(),
            "i_first": self._i_first.copy(),
            "i_last": self._i_last.copy(),
            "u_count": self._u_count.copy(),
            "u_last": self._u_last.copy(),
            "generator": self._gen.get_state().numpy().copy(),
            "replay.x": self._rx.copy(),
            "replay.y": self._ry.copy(),
        }
        for name, p in self._mlp.state_dict().items():
            arrays[f"mlp.{name}"] = p.numpy().copy()
        for pid, st in self._opt.state_dict()["state"].items():
            for key, val in st.items():
                arrays[f"opt.{pid}.{key}"] = torch.as_tensor(val).numpy().copy()
        comp_meta = self._components_state(arrays)
        if self.features is not None:
            arrays.update(self.features.to_arrays("features"))
        blend_meta = None
        if self._blend is not None:
            bst = self._blend.get_state()  # its components are ours: only its tuning
            blend_meta = bst.meta
            arrays.update({f"blend/{k}": v for k, v in bst.arrays.items()})
        meta = {
            "class": self.name,
            "params": self.get_params(),
            **comp_meta,
            "n_trained": self.n_trained,
            "replay_pos": self._r_pos,
            "replay_len": self._r_len,
            "watermark": self._watermark,
            "has_features": self.features is not None,
            "blend": blend_meta,
        }
        return ModelState(arrays=arrays, meta=meta)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        a, meta = state.arrays, state.meta
        # A snapshot from before these parameters existed is round 1's re-ranker.
        m = cls(**{"base": "sum", "loss": "pointwise", "residual": False, **meta["params"]})
        m.users = IdIndex.from_arrays(a, "users")
        m.items = IdIndex.from_arrays(a, "items")
        m.history = UserHistory.from_arrays(a, "history", max_items=m.history_items)
        for name in ("i_count", "i_first", "i_last", "u_count", "u_last"):
            setattr(m, f"_{name}", np.array(a[name], np.float64))
        m._gen.set_state(torch.from_numpy(np.array(a["generator"], np.uint8)))
        # (round 1 stored the bare MLP: "mlp.0.weight" where this has "mlp.mlp.0.weight")
        m._mlp.load_state_dict({
            k: torch.from_numpy(np.array(a[f"mlp.{k}"] if f"mlp.{k}" in a else a[k]))
            for k in m._mlp.state_dict()
        })
        opt_sd = m._opt.state_dict()
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key in a:
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = torch.from_numpy(np.array(a[key]))
        opt_sd["state"] = opt_state
        m._opt.load_state_dict(opt_sd)
        m.n_trained = int(meta["n_trained"])
        if a["replay.x"].ndim == 3:  # (earlier snapshots kept rows, not groups: no replay)
            m._rx = np.array(a["replay.x"], np.float32)
            m._ry = np.array(a["replay.y"], np.float32)
            m._r_pos, m._r_len = int(meta["replay_pos"]), int(meta["replay_len"])
        m._watermark = float(meta["watermark"])
        shared = m._restore_components(a, meta)
        if m._blend is not None and meta.get("blend") is not None:
            sub = {k[len("blend/"):]: v for k, v in a.items() if k.startswith("blend/")}
            m._blend = Hybrid.from_state(ModelState(arrays=sub, meta=meta["blend"]))
        if m._blend is not None:
            m._blend.bind(m.models)
        if meta.get("has_features"):
            m.features = ItemFeatures.from_arrays(a, "features")
            for c, comp in m.models.items():
                setter = getattr(comp, "set_item_features", None)
                if c not in shared and setter is not None and getattr(
                        comp, "features", None) is not None:
                    # Share one features object (components restored their own copy).
                    setter(m.features)
        return m
