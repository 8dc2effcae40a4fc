"""The one protocol every online model implements, and the small shared pieces.

Every model -- collaborative filtering, torch embeddings, the hybrid -- is an
:class:`OnlineModel`. The trainer, the prequential evaluator and the server only
ever talk to this protocol:

* ``learn(batch)`` learns a mini-batch of interactions in place (returns ``None``);
* ``score_all(user, history)`` scores every item the model knows, one float per
  item row (``self.items``); ``score``, ``recommend`` build on it;
* ``score_many(users, histories)`` scores several queries at once against one
  state, one row per query (``score_all`` stacked; models override it with a
  matrix product or vectorised gathers: the evaluator's and the hybrid's path);
* ``similar(item, k)`` returns items like an item;
* ``get_state()`` / ``from_state(state)`` export and rebuild the model from
  numeric arrays plus JSON-able metadata (never pickle);
* ``n_users`` / ``n_items`` say how many ids the model knows;
* ``adaptable_params()`` / ``set_param(name, value)`` declare and set the
  hyperparameters drift adaptation may change (half-lives, learning rates).

Hyperparameters are constructor arguments stored under the same names; learned
state lives apart; randomness comes only from ``seed``.

The pieces models share are re-exported here: :class:`Batch` and :class:`ModelState`
(this module), :class:`~online_models.ids.IdIndex` and the packed string columns
(:mod:`online_models.ids`), :class:`~online_models.history.UserHistory`
(:mod:`online_models.history`).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np

# The shared pieces live in their own modules and are re-exported here, so that a
# model imports everything it builds on from this one place.
from online_models.history import UserHistory
from online_models.ids import (
    IdIndex,
    append_packed,
    concat_packed,
    grow_rows,
    pack_strings,
    unpack_strings,
)

__all__ = [
    "ADAPTABLE_KINDS",
    "Batch",
    "IdIndex",
    "ModelState",
    "OnlineModel",
    "UserHistory",
    "append_packed",
    "concat_packed",
    "grow_rows",
    "learning_order",
    "pack_strings",
    "top_k",
    "unpack_strings",
]


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True, slots=True)
class Batch:
    """A mini-batch of interactions, column-wise, in arrival (event) order.

    ``users`` and ``items`` are object arrays of ``str``; ``weights`` float32
    (the event type's weight); ``timestamps`` float64 epoch seconds (event time).

    >>> b = Batch.from_records([("u1", "i1", 1.0, 10.0), ("u2", "i2", 2.0, 11.0)])
    >>> len(b), b.users[1], float(b.weights.sum())
    (2, 'u2', 3.0)
    """

    users: np.ndarray
    items: np.ndarray
    weights: np.ndarray
    timestamps: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.users)
        if not (len(self.items) == len(self.weights) == len(self.timestamps) == n):
            raise ValueError("Batch columns must all have the same length")

    @classmethod
    def from_records(cls, records: Iterable[tuple[str, str, float, float]]) -> Batch:
        rows = list(records)
        users = np.empty(len(rows), dtype=object)
        items = np.empty(len(rows), dtype=object)
        users[:] = [r[0] for r in rows]
        items[:] = [r[1] for r in rows]
        return cls(
            users=users,
            items=items,
            weights=np.asarray([r[2] for r in rows], dtype=np.float32),
            timestamps=np.asarray([r[3] for r in rows], dtype=np.float64),
        )

    @classmethod
    def from_columns(
        cls,
        users: Sequence[str] | np.ndarray,
        items: Sequence[str] | np.ndarray,
        weights: Sequence[float] | np.ndarray | None = None,
        timestamps: Sequence[float] | np.ndarray | None = None,
    ) -> Batch:
        n = len(users)
        u = np.empty(n, dtype=object)
        i = np.empty(n, dtype=object)
        u[:] = list(users)
        i[:] = list(items)
        w = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
        t = np.zeros(n, np.float64) if timestamps is None else np.asarray(timestamps, np.float64)
        return cls(users=u, items=i, weights=w, timestamps=t)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: slice | np.ndarray) -> Batch:
        return Batch(
            self.users[index], self.items[index], self.weights[index], self.timestamps[index]
        )

    def chunks(self, size: int) -> Iterator[Batch]:
        """Consecutive sub-batches of at most ``size`` events."""
        for start in range(0, len(self), size):
            yield self[start : start + size]


# --------------------------------------------------------------------------- state


@dataclass
class ModelState:
    """A model's whole state: numeric arrays (no object dtype) plus JSON-able meta.

    ``meta`` always holds ``"class"`` (the registry name) and ``"params"`` (the
    constructor arguments). Arrays are written to safetensors/npz by the snapshot
    writer; nothing here can execute code on load.
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        for name, arr in self.arrays.items():
            if not isinstance(arr, np.ndarray) or arr.dtype == object:
                raise TypeError(f"state array {name!r} must be a numeric numpy array")


# --------------------------------------------------------------------------- helpers


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest finite scores, best first (``argpartition``).

    >>> top_k(np.array([0.1, 3.0, -np.inf, 2.0]), 5).tolist()
    [1, 3, 0]
    """
    finite = np.isfinite(scores)
    n_ok = int(finite.sum())
    if n_ok == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(k, n_ok)
    s = np.where(finite, scores, -np.inf)
    part = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
    order = np.lexsort((part, -s[part]))  # score desc, then row asc: deterministic
    return part[order].astype(np.int64)


# --------------------------------------------------------------------------- protocol

#: kinds of hyperparameter drift adaptation may change (:meth:`OnlineModel.adaptable_params`):
#: ``"half_life"`` (event-time seconds; shorter forgets faster) and ``"learning_rate"``
ADAPTABLE_KINDS: tuple[str, ...] = ("half_life", "learning_rate")


class OnlineModel(ABC):
    """Base class and protocol of every liverec model.

    Subclasses set ``name`` (the registry key, e.g. ``"itemknn"``), keep their
    constructor arguments as attributes of the same name, own an ``items`` and a
    ``users`` :class:`IdIndex`, and implement the abstract methods. ``score``,
    ``recommend``, ``get_params`` and ``clone`` come for free.
    """

    name: ClassVar[str] = "base"
    #: hyperparameter name -> kind (one of :data:`ADAPTABLE_KINDS`) that drift
    #: adaptation may change at run time; see :meth:`adaptable_params`
    adaptable: ClassVar[Mapping[str, str]] = {}
    items: IdIndex
    users: IdIndex

    # -- learning
    @abstractmethod
    def learn(self, batch: Batch) -> None:
        """Learn a mini-batch in place, in the batch's (event) order."""

    # -- scoring
    @abstractmethod
    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        """A float32 score for every item row (length ``self.items.capacity``).

        ``history`` is the caller's view of the user's recent items, oldest first,
        most recent last (the evaluator's and the server's live context): distinct
        items (a repeat moves to the end), up to the trainer's ``history_items``
        (200) in serving, unbounded in ``liverec evaluate``; item ids only, no times
        or event types. A known user nearly always comes with one; a user the
        snapshot does not know yet may too (clicks that arrived since, through the
        server's live tail). When it is empty a model may fall back on what it
        learned about ``user`` itself. Higher is better; ``-inf`` marks rows that
        must never be recommended (freed rows). Unknown users get a sensible
        non-personal score or all zeros; they must not raise.

        The server and the evaluator call this and :meth:`score_many` (and
        :meth:`similar`), then exclude and rank themselves: :meth:`recommend` and
        :meth:`score` are conveniences, and overriding them changes nothing served.
        """

    def score_many(
        self, users: Sequence[str], histories: Sequence[Sequence[str]]
    ) -> np.ndarray:
        """``score_all`` of several queries against the current state, stacked.

        Returns float32 ``(len(users), items.capacity)``: row ``r`` equals
        ``score_all(users[r], histories[r])``. The model must not change between
        the queries (the evaluator scores a mini-batch before it is learned), which
        is what lets subclasses share work across rows: one matrix product for
        factor models, one sparse gather for count models. This default loops.
        """
        if len(users) != len(histories):
            raise ValueError("score_many needs one history per user")
        out = np.empty((len(users), self.items.capacity), np.float32)
        for r, (user, hist) in enumerate(zip(users, histories, strict=True)):
            out[r] = self.score_all(user, hist)
        return out

    @abstractmethod
    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        """Up to ``k`` items most like ``item`` (never ``item`` itself), best first."""

    # -- state
    @abstractmethod
    def get_state(self) -> ModelState:
        """Export the whole state; ``type(self).from_state(s)`` must rebuild it exactly."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: ModelState) -> Self:
        """Rebuild a model from :meth:`get_state`'s output."""

    # -- per-user state
    def forget_users(self, users: Sequence[str]) -> None:
        """Drop ``users`` and all the model learned about them alone (the trainer's
        bound on users; a partition moving to another trainer); one seen again starts
        afresh. Item-side state keeps what their events taught it. This default drops
        them from the user index: a model with more per-user state extends it, and
        resets whatever it keeps per user row (the index gives a freed row to the
        next new user)."""
        self.users.remove_many(users)

    # -- sizes
    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    # -- shared behaviour
    def score(
        self, user: str, items: Sequence[str], history: Sequence[str] = ()
    ) -> np.ndarray:
        """Scores of candidate ``items`` for ``user``; unknown items get ``-inf``."""
        all_scores = self.score_all(user, history)
        rows = self.items.rows(items)
        out = np.full(len(rows), -np.inf, dtype=np.float32)
        known = rows >= 0
        out[known] = all_scores[rows[known]]
        return out

    def recommend(
        self,
        user: str,
        k: int = 10,
        history: Sequence[str] = (),
        exclude: Collection[str] = (),
    ) -> list[tuple[str, float]]:
        """The top ``k`` (item, score) for ``user``, never an item in ``exclude``."""
        scores = self.score_all(user, history).astype(np.float32, copy=True)
        if len(scores) == 0:
            return []
        ex = self.items.rows(exclude)
        scores[ex[ex >= 0]] = -np.inf
        ids = self.items.ids
        return [(ids[r], float(scores[r])) for r in top_k(scores, k)]

    # -- helpers for subclasses
    def _finish_scores(
        self, scores: np.ndarray, popularity: np.ndarray | None = None, tiebreak: float = 0.0
    ) -> np.ndarray:
        """``score_all``'s result: float32 over ``items.capacity``, freed rows ``-inf``.

        With ``tiebreak > 0`` a sliver of normalised ``popularity`` is added so that
        ties (notably all-zero rows for a user with no signal) go to popular items.
        """
        if tiebreak and popularity is not None and len(popularity) and popularity.max() > 0:
            scores = scores + tiebreak * popularity / popularity.max()
        out = np.array(scores, dtype=np.float32)  # always a copy: callers may write to it
        if len(self.items) < self.items.capacity:
            out[~self.items.live_mask()] = -np.inf
        return out

    def _tail_rows(self, histories: Sequence[Sequence[str]], n_last: int) -> list[np.ndarray]:
        """Item rows (-1: unknown) of the last ``n_last`` items of every history.

        One :meth:`IdIndex.rows` call for all of them, so an item shared by many
        queries (a user's consecutive events) is looked up once.
        """
        tails = [list(h)[-n_last:] if n_last > 0 else [] for h in histories]
        flat = self.items.rows([i for t in tails for i in t])
        cuts = np.cumsum([len(t) for t in tails])[:-1]
        return np.split(flat, cuts) if len(tails) else []

    def _fold_in_groups(self, histories: Sequence[Sequence[str]], last: int
                        ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """The known rows of each history's ``last`` items (0: the whole history, as a
        ``[-0:]`` slice gives), grouped by how many there are: ``(folds, groups)`` with
        ``folds`` the queries that have any and, per count k, ``(queries, rows)`` where
        ``rows`` is (queries, k) in history order -- so a factor model takes one mean
        per group, the same figures as each query's own mean."""
        tails = self._tail_rows(histories, last or max(map(len, histories), default=0))
        counts = np.fromiter((int((t >= 0).sum()) for t in tails), np.int64, count=len(tails))
        groups = []
        for k in np.unique(counts[counts > 0]).tolist():
            sel = np.flatnonzero(counts == k)
            groups.append((sel, np.stack([tails[r][tails[r] >= 0] for r in sel.tolist()])))
        return counts > 0, groups

    def _finish_many(
        self, scores: np.ndarray, popularity: np.ndarray | None = None, tiebreak: float = 0.0
    ) -> np.ndarray:
        """:meth:`_finish_scores` of every row of ``scores`` (``score_many``'s result)."""
        if tiebreak and popularity is not None and len(popularity) and popularity.max() > 0:
            scores = scores + tiebreak * popularity / popularity.max()
        out = np.array(scores, dtype=np.float32)
        if len(self.items) < self.items.capacity:
            out[:, ~self.items.live_mask()] = -np.inf
        return out

    def _similar_from(self, row: int, scores: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Top ``k`` items by ``scores`` (in place: ``row`` and non-positive ones dropped)."""
        scores[row] = 0.0
        scores[scores <= 0] = -np.inf
        ids = self.items.ids
        return [(ids[r], float(scores[r])) for r in top_k(scores, k)]

    # -- drift-adaptable hyperparameters
    def adaptable_params(self) -> dict[str, str]:
        """Hyperparameters drift adaptation may change: name -> kind.

        Kinds are :data:`ADAPTABLE_KINDS`. Only parameters whose current value is a
        positive number are listed (a half-life of ``None`` means "no decay" and
        has nothing to shorten). The trainer scales them while a drift alarm holds
        and restores them afterwards, through :meth:`set_param`.
        """
        out: dict[str, str] = {}
        for pname, kind in self.adaptable.items():
            value = getattr(self, pname, None)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                out[pname] = kind
        return out

    def set_param(self, name: str, value: float) -> None:
        """Set an adaptable hyperparameter (one :meth:`adaptable_params` lists) in place.

        Takes effect from the next ``learn``/``score`` call; the learned state is
        kept. Raises ``KeyError`` for any other parameter and ``ValueError`` for a
        value that is not a positive finite number.
        """
        setattr(self, name, self._checked_param(name, value))

    def _checked_param(self, name: str, value: float) -> float:
        """``value`` as :meth:`set_param` would set it, or its ``KeyError``/``ValueError``."""
        if name not in self.adaptable:
            raise KeyError(f"{type(self).__name__} has no adaptable parameter {name!r}")
        v = float(value)
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        return v

    def shared_components(self) -> Mapping[str, OnlineModel]:
        """Other models this one reads but does not learn (a bound hybrid's components).

        Such a model must learn each batch *before* the models it reads, so that it
        sees their state as of the batch's start, as it would with private copies;
        :func:`learning_order` puts it first. Empty for ordinary models.
        """
        return {}

    def blend_weights(self) -> dict[str, float] | None:
        """A blending model's weight per component as it stands (what each component
        contributes); None for a model that blends nothing."""
        return None

    def item_vectors(self) -> np.ndarray | None:
        """Item embedding matrix (rows aligned to ``self.items``) if the model has one.

        Used for embedding drift between snapshots; ``None`` for models without one.
        """
        return None

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, read back from attributes of the same name."""
        sig = inspect.signature(type(self).__init__)
        return {
            p: getattr(self, p)
            for p in sig.parameters
            if p != "self" and sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD
        }

    def clone(self, **overrides: Any) -> Self:
        """A fresh, unfitted model with the same hyperparameters."""
        params = {**self.get_params(), **overrides}
        return type(self)(**params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def learning_order(models: Mapping[str, OnlineModel]) -> list[str]:
    """Names of ``models`` in the order they must learn a batch.

    A model that reads others it does not learn (:meth:`OnlineModel.shared_components`,
    a bound hybrid) learns before them; everything else keeps its order.

    >>> class M:  # any object with shared_components()
    ...     def __init__(self, shared=None): self.shared = shared or {}
    ...     def shared_components(self): return self.shared
    >>> pop = M()
    >>> learning_order({"popularity": pop, "hybrid": M({"popularity": pop})})
    ['hybrid', 'popularity']
    """
    readers = [n for n, m in models.items() if m.shared_components()]
    return readers + [n for n in models if n not in readers]
