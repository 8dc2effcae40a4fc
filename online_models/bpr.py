"""Online BPR matrix factorisation for implicit feedback, vectorised per mini-batch.

Each event ``(user, item)`` is a positive; negatives are drawn uniformly over the known
items and/or from a ring buffer of recent traffic (``uniform_negatives`` sets the mix).
Popularity-following negatives alone cancel the positives' push on the item biases, so
the model never learns popularity and lost to the popularity baseline; uniform ones let
the bias carry it. One pass over a mini-batch is one vectorised SGD step: gather rows,
compute the BPR gradient for all triples at once, scatter the updates back with
:func:`scatter_add` (duplicate rows accumulate, averaged past a cap so one heavy user
cannot blow its row up), then clip touched factor rows to ``max_norm``.

Several trainers (``liverec train --scale-out``) share the item side as an
asynchronous parameter server does: :meth:`BPR.learn_local` takes the batch's SGD
steps on this trainer's copy, returns the change of every touched item row (factors
and bias) as a delta and puts those rows back; :meth:`BPR.apply_delta` adds anyone's
delta and clips the rows to ``max_norm``. So the item side is a fold of the update
topic, as for the count models, but not one trainer's: a trainer's steps see other
trainers' item updates only once folded (BENCHMARKS.md measures what that costs).
An item's first factor row is a function of its id and the seed (:func:`item_init`),
so every trainer starts a new item from the same row whoever folds it first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np
import torch

from online_models.base import (
    Batch,
    IdIndex,
    ModelState,
    OnlineModel,
    grow_rows,
    pack_strings,
    top_k,
    unpack_strings,
)
from online_models.deltas import ItemDelta, delta_rows

__all__ = ["BPR", "generator_from_meta", "generator_to_meta", "grow_rows", "item_init",
           "scatter_add"]


def generator_to_meta(rng: np.random.Generator) -> dict[str, Any]:
    """JSON-safe state of a numpy ``Generator`` (128-bit ints as strings, for orjson)."""
    st = rng.bit_generator.state
    return {
        "bit_generator": st["bit_generator"],
        "state": {k: str(v) for k, v in st["state"].items()},
        "has_uint32": int(st["has_uint32"]),
        "uinteger": int(st["uinteger"]),
    }


def generator_from_meta(meta: dict[str, Any]) -> np.random.Generator:
    """Inverse of :func:`generator_to_meta`."""
    rng = np.random.default_rng()
    rng.bit_generator.state = {
        "bit_generator": meta["bit_generator"],
        "state": {k: int(v) for k, v in meta["state"].items()},
        "has_uint32": meta["has_uint32"],
        "uinteger": meta["uinteger"],
    }
    return rng


def scatter_add(dst: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``dst[rows] += values`` with duplicate rows accumulating, in place.

    Same result as ``np.add.at`` but through torch's ``index_add_`` on a zero-copy view,
    which is ~15x faster for a mini-batch of 64-float rows.

    >>> a = np.zeros(3, np.float32)
    >>> scatter_add(a, np.array([0, 0, 2]), np.ones(3, np.float32))
    >>> a.tolist()
    [2.0, 0.0, 1.0]
    """
    torch.from_numpy(dst).index_add_(
        0,
        torch.from_numpy(np.ascontiguousarray(rows, np.int64)),
        torch.from_numpy(np.ascontiguousarray(values, dst.dtype)),
    )


#: Occurrences in one step beyond which a factor row's summed gradient is averaged.
_SHARED_ROW_STEPS = 16.0


def _clip_rows(arr: np.ndarray, rows: np.ndarray, max_norm: float) -> None:
    """Scale rows ``arr[rows]`` down to at most ``max_norm`` (L2), in place."""
    sub = arr[rows]
    norms = np.sqrt(np.einsum("nd,nd->n", sub, sub))
    over = norms > max_norm
    if over.any():
        arr[rows[over]] = sub[over] * (max_norm / norms[over])[:, None]


def item_init(ids: Sequence[str], n_factors: int, std: float, seed: int) -> np.ndarray:
    """First factor rows of items, each a function of (id, seed) only.

    >>> a = item_init(["x", "y"], 4, 0.1, seed=0)
    >>> bool((a[0] == item_init(["x"], 4, 0.1, seed=0)[0]).all()), a.dtype.name
    (True, 'float32')
    """
    out = np.empty((len(ids), n_factors), np.float32)
    for k, item in enumerate(ids):
        h = int.from_bytes(hashlib.blake2b(item.encode(), digest_size=8).digest(), "little")
        out[k] = np.random.default_rng([seed, h]).standard_normal(n_factors) * std
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free logistic


class BPR(OnlineModel):
    """Bayesian personalised ranking, trained online with sampled negatives.

    The score of item ``i`` for user ``u`` is ``q · V[i] + b[i]``. For every event,
    ``n_negatives`` items ``j`` are sampled -- uniformly over the known items with
    probability ``uniform_negatives``, otherwise from a ring buffer of the last
    ``buffer_size`` items seen (popularity-proportional) -- and ``ln σ(x_ui - x_uj)`` is
    ascended by ``n_passes`` SGD steps per mini-batch (fresh negatives each pass),
    scaled by the event weight (capped at ``max_weight``). Touched factor rows are
    clipped to L2 norm ``max_norm``. Id tables grow by capacity doubling; new rows are
    drawn from ``N(0, init_std²)`` by the model's own generator when allocated.

    Query vector ``q`` (``score_all``): a known user's own factors plus
    ``history_weight`` times the mean factor of its (at most ``fold_in_items``) most
    recent known ``history`` items -- the session context the user row learns too
    slowly. A user the model has never seen is *folded in* from that mean alone (how
    serving personalises a brand-new user from live clicks). A user with neither gets
    the item biases only (a learned popularity).

    Defaults come from prequential runs on the planted synthetic stream and the first
    30k MovieLens ratings (see BENCHMARKS.md), within a budget of four sampled triples
    per event so learning stays above 100k events/s per core.

    Parameters
    ----------
    n_factors
        Latent dimension.
    learning_rate
        SGD step size.
    l2
        L2 penalty on the rows touched by a step.
    n_negatives
        Negatives sampled per positive and pass.
    uniform_negatives
        Share of negatives drawn uniformly over the known items (the rest follow
        recent traffic).
    n_passes
        SGD steps taken over each mini-batch.
    buffer_size
        Length of the ring buffer of recent items negatives are drawn from.
    init_std
        Standard deviation of freshly allocated factors.
    max_weight
        Cap on the event weight used to scale a step.
    fold_in_items
        How many recent history items are averaged into the query vector.
    history_weight
        Weight of the history mean added to a known user's own factors (0 = off).
    max_norm
        L2 cap on a factor row after each step (0 = off).
    initial_capacity
        Rows allocated up front for users and for items.
    seed
        Seed of the generator behind initial factors and negative sampling.

    Examples
    --------
    >>> m = BPR(n_factors=8, seed=1)
    >>> m.learn(Batch.from_columns(["a", "a", "b"], ["x", "y", "x"]))
    >>> m.n_users, m.n_items, m.score_all("a").shape
    (2, 2, (2,))
    """

    name: ClassVar[str] = "bpr"
    adaptable: ClassVar[Mapping[str, str]] = {"learning_rate": "learning_rate"}

    def __init__(
        self,
        n_factors: int = 32,
        learning_rate: float = 0.1,
        l2: float = 0.002,
        n_negatives: int = 2,
        uniform_negatives: float = 1.0,
        n_passes: int = 2,
        buffer_size: int = 10_000,
        init_std: float = 0.1,
        max_weight: float = 5.0,
        fold_in_items: int = 5,
        history_weight: float = 3.0,
        max_norm: float = 2.0,
        initial_capacity: int = 1024,
        seed: int = 0,
    ) -> None:
        self.n_factors = n_factors
        self.learning_rate = learning_rate
        self.l2 = l2
        self.n_negatives = n_negatives
        self.uniform_negatives = uniform_negatives
        self.n_passes = n_passes
        self.buffer_size = buffer_size
        self.init_std = init_std
        self.max_weight = max_weight
        self.fold_in_items = fold_in_items
        self.history_weight = history_weight
        self.max_norm = max_norm
        self.initial_capacity = initial_capacity
        self.seed = seed

        self.users = IdIndex()
        self.items = IdIndex()
        self._rng = np.random.default_rng(seed)
        self._U = self._init_rows(initial_capacity)
        self._V = self._init_rows(initial_capacity)
        self._b = np.zeros(initial_capacity, np.float32)
        self._buf = np.zeros(buffer_size, np.int64)
        self._buf_pos = 0
        self._buf_len = 0

    # ------------------------------------------------------------------ learning
    def _init_rows(self, n: int) -> np.ndarray:
        return (self._rng.standard_normal((n, self.n_factors)) * self.init_std).astype(np.float32)

    def _ensure_capacity(self) -> None:
        need_u, need_i = self.users.capacity, self.items.capacity
        if need_u > len(self._U):
            old = len(self._U)
            self._U = grow_rows(self._U, need_u)
            self._U[old:] = self._init_rows(len(self._U) - old)
        if need_i > len(self._V):
            old = len(self._V)
            self._V = grow_rows(self._V, need_i)
            self._V[old:] = self._init_rows(len(self._V) - old)
            self._b = grow_rows(self._b, need_i)

    def _push_buffer(self, rows: np.ndarray) -> None:
        rows = rows[-self.buffer_size :]
        n = len(rows)
        idx = (self._buf_pos + np.arange(n)) % self.buffer_size
        self._buf[idx] = rows
        self._buf_pos = int((self._buf_pos + n) % self.buffer_size)
        self._buf_len = min(self.buffer_size, self._buf_len + n)

    def learn(self, batch: Batch) -> None:
        if len(batch) == 0:
            return
        u = self.users.add_many(batch.users)
        i = self.items.add_many(batch.items)
        self._ensure_capacity()
        self._push_buffer(i)
        if self.n_negatives <= 0:
            return
        k = self.n_negatives
        u = np.repeat(u, k)
        i = np.repeat(i, k)
        w0 = np.repeat(np.minimum(batch.weights, self.max_weight).astype(np.float32), k)
        for _ in range(self.n_passes):
            self._step(u, i, w0, self._sample_negatives(len(u)))

    # ------------------------------------------------------------------ scale-out
    # (online_models.deltas.SharesItemState: several trainers, one item state)

    #: learning reads item rows, so every scale-out trainer folds every delta
    learns_from_item_state: ClassVar[bool] = True

    def _admit_items(self, items: Sequence[str] | np.ndarray) -> np.ndarray:
        """Rows of ``items``; ids new to this model start from :func:`item_init`."""
        known = self.items.rows(list(items))
        rows = self.items.add_many(items)
        self._ensure_capacity()
        if (known < 0).any():
            new = np.unique(rows[known < 0])
            ids = self.items.ids
            self._V[new] = item_init([str(ids[r]) for r in new.tolist()], self.n_factors,
                                     self.init_std, self.seed)
        return rows

    def learn_local(self, batch: Batch) -> ItemDelta:
        """Take the batch's steps; return the touched item rows' change, put them back.

        The user rows keep their steps (user-side state); the item rows change only
        when a delta is applied (this trainer's own, once folded, or another's).
        """
        if len(batch) == 0:
            return ItemDelta([])
        u = self.users.add_many(batch.users)
        i = self._admit_items(batch.items)
        self._push_buffer(i)
        touched = np.unique(i)
        negatives: list[np.ndarray] = []
        k = self.n_negatives
        if k > 0:
            u, i = np.repeat(u, k), np.repeat(i, k)
            negatives = [self._sample_negatives(len(u)) for _ in range(self.n_passes)]
            touched = np.unique(np.concatenate([touched, *negatives]))
        v0, b0 = self._V[touched].copy(), self._b[touched].copy()
        if k > 0:
            w0 = np.repeat(np.minimum(batch.weights, self.max_weight).astype(np.float32), k)
            for j in negatives:
                self._step(u, i, w0, j)
        dv, db = self._V[touched] - v0, self._b[touched] - b0
        self._V[touched], self._b[touched] = v0, b0
        ids = self.items.ids
        return ItemDelta([str(ids[r]) for r in touched.tolist()], {"V": dv, "b": db},
                         float(np.max(batch.timestamps)))

    def apply_delta(self, delta: ItemDelta) -> None:
        """Add a :meth:`learn_local` delta (this trainer's or another's), then clip."""
        self.apply_deltas([delta])

    def apply_deltas(self, deltas: Sequence[ItemDelta]) -> None:
        """Add deltas in order, each one's rows clipped in turn (their ids are looked
        up together, :func:`~online_models.deltas.delta_rows`)."""
        live = [d for d in deltas if len(d)]
        for d, rows in zip(live, delta_rows(live, self._admit_items), strict=True):
            self._V[rows] += np.asarray(d.arrays["V"], np.float32)
            self._b[rows] += np.asarray(d.arrays["b"], np.float32)
            if self.max_norm > 0:
                _clip_rows(self._V, rows, self.max_norm)

    def user_state(self, users: Sequence[str]) -> dict[str, np.ndarray]:
        """The factor rows of ``users`` (those this model knows)."""
        known = [u for u in users if u in self.users]
        data, offsets = pack_strings(known)
        return {"users.data": data, "users.offsets": offsets,
                "U": self._U[self.users.rows(known)].copy()}

    def load_user_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        users = unpack_strings(arrays["users.data"], arrays["users.offsets"])
        if users:
            rows = self.users.add_many(users)
            self._ensure_capacity()
            self._U[rows] = np.asarray(arrays["U"], np.float32)

    def forget_users(self, users: Sequence[str]) -> None:
        """Drop ``users`` and their rows (a freed row is redrawn before reuse)."""
        rows = [self.users.remove(u) for u in users if u in self.users]
        if rows:
            self._U[rows] = self._init_rows(len(rows))

    def _sample_negatives(self, n: int) -> np.ndarray:
        j = self._buf[self._rng.integers(0, self._buf_len, size=n)]
        if self.uniform_negatives > 0:
            uni = self._rng.random(n) < self.uniform_negatives
            j[uni] = self._rng.integers(0, self.items.capacity, size=int(uni.sum()))
        return j

    def _step(self, u: np.ndarray, i: np.ndarray, w: np.ndarray, j: np.ndarray) -> None:
        # A negative equal to the positive carries no signal; drop its gradient.
        w = w * (j != i)
        U, V, b = self._U, self._V, self._b
        pu, vi, vj = U[u], V[i], V[j]
        diff = vi - vj
        x = np.einsum("nd,nd->n", pu, diff) + b[i] - b[j]
        g = (_sigmoid(-x) * w)[:, None]
        lr, l2 = self.learning_rate, self.l2
        gp = g * pu
        ij = np.concatenate([i, j])
        # A factor row that occurs c > _SHARED_ROW_STEPS times in one step moves by
        # _SHARED_ROW_STEPS x the mean of its c gradients, not their sum: MovieLens
        # batches are often one user rating hundreds of films at once, and summed steps
        # blew that user's row up to inf/NaN. Biases are scalars whose gradient fades
        # as they grow (the sigmoid saturates), so they keep the plain sum.
        cap = _SHARED_ROW_STEPS
        su = (lr / np.maximum(1.0, np.bincount(u)[u] / cap)).astype(np.float32)[:, None]
        sv = (lr / np.maximum(1.0, np.bincount(ij)[ij] / cap)).astype(np.float32)
        scatter_add(U, u, su * (g * diff - l2 * pu))
        scatter_add(V, ij, sv[:, None] * np.concatenate([gp - l2 * vi, -gp - l2 * vj]))
        gb = g[:, 0]
        scatter_add(b, ij, lr * np.concatenate([gb - l2 * b[i], -gb - l2 * b[j]]))
        if self.max_norm > 0:
            _clip_rows(U, u, self.max_norm)
            _clip_rows(V, ij, self.max_norm)

    # ------------------------------------------------------------------ scoring
    def _query_vector(self, user: str, history: Sequence[str]) -> np.ndarray | None:
        """One query's vector (None: neither a known user nor a known history item);
        :meth:`_query_vectors` is the batch form (the same figures; slower for one)."""
        row = self.users.get(user)
        folded: np.ndarray | None = None
        if history:
            rows = self.items.rows(list(history)[-self.fold_in_items :])
            rows = rows[rows >= 0]
            if len(rows):
                folded = self._V[rows].mean(axis=0)
        if row >= 0:
            if folded is not None and self.history_weight > 0:
                return self._U[row] + self.history_weight * folded
            return self._U[row]
        return folded

    def _query_vectors(self, users: Sequence[str], histories: Sequence[Sequence[str]]
                       ) -> tuple[np.ndarray, np.ndarray]:
        """``(Q, has)``: every query's vector (see the class doc; zeros where ``has`` is
        False: neither a known user nor a known history item), for a batch at once."""
        folds, groups = self._fold_in_groups(histories, self.fold_in_items)
        q = np.zeros((len(users), self._V.shape[1]), self._V.dtype)
        for sel, rows in groups:
            q[sel] = self._V[rows].mean(axis=1)
        u = self.users.rows(list(users))
        known = u >= 0
        if known.any():
            own = self._U[u[known]]
            if self.history_weight > 0:
                own = np.where(folds[known, None], own + self.history_weight * q[known], own)
            q[known] = own
        return q, known | folds

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        n = self.items.capacity
        q = self._query_vector(user, history)
        scores = self._b[:n].copy()
        if q is not None:
            scores += self._V[:n] @ q
        return scores.astype(np.float32, copy=False)

    def score_many(
        self, users: Sequence[str], histories: Sequence[Sequence[str]]
    ) -> np.ndarray:
        """Biases plus one matrix product ``Q @ V.T`` for every query that has a vector."""
        if len(users) != len(histories):
            raise ValueError("score_many needs one history per user")
        n = self.items.capacity
        out = np.tile(self._b[:n], (len(users), 1))
        q, has = self._query_vectors(users, histories)
        if has.any() and n:
            out[has] += q[has] @ self._V[:n].T
        return out.astype(np.float32, copy=False)

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        row = self.items.get(item)
        if row < 0:
            return []
        V = self._V[: self.items.capacity]
        norms = np.linalg.norm(V, axis=1) + 1e-12
        sims = (V @ V[row]) / (norms * norms[row])
        sims[row] = -np.inf
        ids = self.items.ids
        order = top_k(sims, k)  # argpartition: not a sort of the catalogue
        return [(ids[r], float(sims[r])) for r in order if np.isfinite(sims[r])]

    def item_vectors(self) -> np.ndarray:
        return self._V[: self.items.capacity].copy()

    # ------------------------------------------------------------------ state
    def get_state(self) -> ModelState:
        arrays = {
            **self.users.to_arrays("users"),
            **self.items.to_arrays("items"),
            # Full capacity, including pre-drawn rows not yet used: a restored model
            # must hand out the same initial factors to the next new ids.
            "U": self._U.copy(),
            "V": self._V.copy(),
            "b": self._b.copy(),
            "buffer": self._buf.copy(),
        }
        meta = {
            "class": self.name,
            "params": self.get_params(),
            "rng": generator_to_meta(self._rng),
            "buf_pos": self._buf_pos,
            "buf_len": self._buf_len,
        }
        return ModelState(arrays=arrays, meta=meta)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        m = cls(**{**state.meta["params"], "initial_capacity": 1})
        a = state.arrays
        m.initial_capacity = state.meta["params"]["initial_capacity"]
        m.users = IdIndex.from_arrays(a, "users")
        m.items = IdIndex.from_arrays(a, "items")
        m._U = np.array(a["U"], np.float32)
        m._V = np.array(a["V"], np.float32)
        m._b = np.array(a["b"], np.float32)
        m._buf = np.array(a["buffer"], np.int64)
        m._buf_pos = int(state.meta["buf_pos"])
        m._buf_len = int(state.meta["buf_len"])
        m._rng = generator_from_meta(state.meta["rng"])
        return m
