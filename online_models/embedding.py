"""Two-tower style embedding model in torch with growing, admitted and expiring id tables.

What production embedding tables do, in small:

* **Growth.** User and item tables are plain tensors that double their capacity when an
  admitted id needs a row; every id has its own row (no hashing, no collisions).
* **Admission.** An id gets a row only once it has been seen ``admission_threshold``
  times. Until then its events are *skipped* for training (they still count towards
  admission), so one-off ids cost a counter, not a 64-float row.
* **Expiry.** With ``expiry_seconds`` set, an id not seen for that span of *event time*
  is removed from its :class:`IdIndex`; its row and optimiser state are zeroed and the
  row is reused by the next admitted id (re-initialised on admission).
* **Optimiser.** Row-wise Adagrad (one accumulator per row, as in DLRM/FBGEMM): only the
  rows a batch touches are updated, the optimiser state is one float per row so it grows
  with the tables at ~1/dim of their cost, and it is zeroed with a freed row. It is
  written by hand on purpose: ``torch.optim`` optimisers bind fixed-size parameters,
  which growing and recycling rows would force us to rebuild every time.
* **Loss.** Sampled softmax over in-batch positives plus ``n_negatives`` items drawn
  from a ring buffer of recent traffic (popularity-proportional); another row holding
  the very same item is masked out so it is never its own negative, and logits carry the
  logQ correction (minus the log of each candidate's traffic share) so popular items are
  not pushed down merely for being sampled more often.
* **Retrieval** is one matrix product ``V @ q``. An optional MLP click model
  ``P(click | user, item) = σ(MLP([u, v, u⊙v]))`` trained with binary cross-entropy on
  the positives and one popularity negative each re-ranks the top ``rerank_top``
  candidates (``reranker=True``); :meth:`EmbeddingModel.click_proba` exposes it.

Query vector (``score_all``): an admitted user uses its own row plus
``history_weight`` times the mean item row of its (at most ``fold_in_items``) most
recent admitted ``history`` items. Otherwise, when ``history`` is given, the user is
*folded in* as that mean alone -- how serving
personalises a brand-new user from live clicks. With neither, items are ranked by
their event count since admission (a non-personal popularity).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np
import torch
from torch import nn

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

__all__ = ["EmbeddingModel"]

_EPS = 1e-8
_STEP_ROWS = 512


class _Table:
    """One growing embedding table with row-wise Adagrad state and row bookkeeping."""

    def __init__(self, capacity: int, dim: int) -> None:
        self.weight = torch.zeros((capacity, dim), dtype=torch.float32)
        self.acc = torch.zeros(capacity, dtype=torch.float32)
        self.alive = np.zeros(capacity, dtype=bool)
        self.last_seen = np.zeros(capacity, dtype=np.float64)
        self.count = np.zeros(capacity, dtype=np.float64)

    def __len__(self) -> int:
        return int(self.weight.shape[0])

    def ensure(self, needed: int) -> None:
        cap = len(self)
        if needed <= cap:
            return
        new_cap = max(cap, 1)
        while new_cap < needed:
            new_cap *= 2
        w = torch.zeros((new_cap, self.weight.shape[1]), dtype=torch.float32)
        w[:cap] = self.weight
        self.weight = w
        acc = torch.zeros(new_cap, dtype=torch.float32)
        acc[:cap] = self.acc
        self.acc = acc
        self.alive = grow_rows(self.alive, new_cap, False)
        self.last_seen = grow_rows(self.last_seen, new_cap)
        self.count = grow_rows(self.count, new_cap)

    def free(self, row: int) -> None:
        self.weight[row] = 0.0
        self.acc[row] = 0.0
        self.alive[row] = False
        self.last_seen[row] = 0.0
        self.count[row] = 0.0

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.weight": self.weight.numpy().copy(),
            f"{prefix}.acc": self.acc.numpy().copy(),
            f"{prefix}.alive": self.alive.astype(np.uint8),
            f"{prefix}.last_seen": self.last_seen.copy(),
            f"{prefix}.count": self.count.copy(),
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], prefix: str) -> _Table:
        t = cls(0, int(a[f"{prefix}.weight"].shape[1]))
        t.weight = torch.from_numpy(np.array(a[f"{prefix}.weight"], np.float32))
        t.acc = torch.from_numpy(np.array(a[f"{prefix}.acc"], np.float32))
        t.alive = np.asarray(a[f"{prefix}.alive"]).astype(bool)
        t.last_seen = np.array(a[f"{prefix}.last_seen"], np.float64)
        t.count = np.array(a[f"{prefix}.count"], np.float64)
        return t


class _ClickMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([u, v, u * v], dim=1)).squeeze(1)


class EmbeddingModel(OnlineModel):
    """User/item embeddings with admission, expiry and row-wise Adagrad (see module doc).

    Parameters
    ----------
    dim
        Embedding dimension.
    learning_rate
        Row-wise Adagrad step size.
    admission_threshold
        Sightings an id needs before it gets a row (1 = admit at once).
    expiry_seconds
        Free ids unseen for this span of event time; ``None`` disables expiry.
    n_negatives
        Popularity negatives (from the recent-items ring buffer) per batch, shared by
        all its positives.
    in_batch_negatives
        Also use the batch's other positives as negatives.
    buffer_size
        Length of the ring buffer of recent item rows.
    init_std
        Standard deviation of a freshly admitted row.
    max_weight
        Cap on the event weight that scales an event's loss.
    fold_in_items
        Recent history items averaged into the query vector.
    history_weight
        Weight of that history mean added to an admitted user's own row (0 = off);
        recent context the user row learns too slowly (MovieLens 30k HR@10 0.064 ->
        0.070, planted stream 0.295 -> 0.322).
    logq_correction
        Subtract each candidate's log sampling frequency from its logit.
    reranker
        Train the MLP click model and use it to re-rank the top candidates.
    rerank_top
        How many retrieval candidates the click model re-ranks.
    mlp_hidden
        Hidden units of the click model.
    mlp_learning_rate
        Adam step size of the click model.
    initial_capacity
        Rows allocated up front per table.
    seed
        Seed of the torch generator behind initialisation and negative sampling.

    Examples
    --------
    >>> m = EmbeddingModel(dim=8, admission_threshold=2, seed=0)
    >>> m.learn(Batch.from_columns(["a", "a", "b"], ["x", "x", "y"], timestamps=[0, 1, 2]))
    >>> m.n_users, m.n_items  # "a" and "x" were seen twice, "b" and "y" only once
    (1, 1)
    """

    name: ClassVar[str] = "embedding"
    adaptable: ClassVar[Mapping[str, str]] = {"learning_rate": "learning_rate"}

    def __init__(
        self,
        dim: int = 64,
        learning_rate: float = 0.1,
        admission_threshold: int = 1,
        expiry_seconds: float | None = None,
        n_negatives: int = 64,
        in_batch_negatives: bool = True,
        buffer_size: int = 10_000,
        init_std: float = 0.1,
        max_weight: float = 5.0,
        fold_in_items: int = 5,
        history_weight: float = 3.0,
        logq_correction: bool = True,
        reranker: bool = False,
        rerank_top: int = 100,
        mlp_hidden: int = 64,
        mlp_learning_rate: float = 0.003,
        initial_capacity: int = 1024,
        seed: int = 0,
    ) -> None:
        self.dim = dim
        self.learning_rate = learning_rate
        self.admission_threshold = admission_threshold
        self.expiry_seconds = expiry_seconds
        self.n_negatives = n_negatives
        self.in_batch_negatives = in_batch_negatives
        self.buffer_size = buffer_size
        self.init_std = init_std
        self.max_weight = max_weight
        self.fold_in_items = fold_in_items
        self.history_weight = history_weight
        self.logq_correction = logq_correction
        self.reranker = reranker
        self.rerank_top = rerank_top
        self.mlp_hidden = mlp_hidden
        self.mlp_learning_rate = mlp_learning_rate
        self.initial_capacity = initial_capacity
        self.seed = seed

        # Mini-batch ops here are far too small for intra-op threads to pay off: on a
        # busy 2-core box they made learning ~10x slower. One thread is also what makes
        # float reductions reproducible run to run. This is process-wide, on purpose.
        torch.set_num_threads(1)

        self.users = IdIndex()
        self.items = IdIndex()
        self._ut = _Table(initial_capacity, dim)
        self._it = _Table(initial_capacity, dim)
        # Sightings of ids not admitted yet: id -> [count, last event time].
        self._pending_u: dict[str, list[float]] = {}
        self._pending_i: dict[str, list[float]] = {}
        self._gen = torch.Generator().manual_seed(seed)
        self._buf = np.zeros(buffer_size, np.int64)
        self._buf_pos = 0
        self._buf_len = 0
        self._watermark = -np.inf
        self._mlp: _ClickMLP | None = None
        self._mlp_opt: torch.optim.Adam | None = None
        if reranker:
            # The MLP's initial weights come from the model's seed too.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._mlp = _ClickMLP(dim, mlp_hidden)
            self._mlp_opt = torch.optim.Adam(self._mlp.parameters(), lr=mlp_learning_rate)

    # ------------------------------------------------------------------ admission
    def _admit(
        self, keys: np.ndarray, ts: np.ndarray, index: IdIndex, pending: dict[str, list[float]]
    ) -> np.ndarray:
        """Rows of ``keys`` (-1 while not admitted), admitting ids that reach the threshold."""
        if self.admission_threshold <= 1:
            return index.add_many(keys)
        rows = np.empty(len(keys), np.int64)
        get, need = index.get, self.admission_threshold
        for n, (key, t) in enumerate(zip(keys.tolist(), ts.tolist(), strict=True)):
            row = get(key)
            if row < 0:
                seen = pending.get(key)
                if seen is None:
                    seen = pending[key] = [0.0, t]
                seen[0] += 1
                seen[1] = t
                if seen[0] >= need:
                    del pending[key]
                    row = index.add(key)
            rows[n] = row
        return rows

    def _activate(self, table: _Table, index: IdIndex, rows: np.ndarray) -> None:
        table.ensure(index.capacity)
        ok = rows[rows >= 0]
        fresh = np.unique(ok[~table.alive[ok]])
        if len(fresh):
            init = torch.randn((len(fresh), self.dim), generator=self._gen) * self.init_std
            table.weight[torch.from_numpy(fresh)] = init
            table.alive[fresh] = True

    def forget_users(self, users: Sequence[str]) -> None:
        """Drop ``users``: their rows are freed (and reset) as expiry frees them."""
        for u in users:
            self._pending_u.pop(u, None)
        table = self._ut
        for row in self.users.remove_many(users):
            if row < len(table.alive):
                table.free(row)

    def _expire(self) -> None:
        if self.expiry_seconds is None:
            return
        horizon = self._watermark - self.expiry_seconds
        for table, index, pending in (
            (self._ut, self.users, self._pending_u),
            (self._it, self.items, self._pending_i),
        ):
            stale = np.flatnonzero(table.alive & (table.last_seen < horizon))
            ids = index.ids
            for row in stale.tolist():
                index.remove(ids[row])  # type: ignore[arg-type]
                table.free(row)
            for key in [k for k, (_, t) in pending.items() if t < horizon]:
                del pending[key]

    # ------------------------------------------------------------------ learning
    def _push_buffer(self, rows: np.ndarray) -> None:
        rows = rows[-self.buffer_size :]
        idx = (self._buf_pos + np.arange(len(rows))) % self.buffer_size
        self._buf[idx] = rows
        self._buf_pos = int((self._buf_pos + len(rows)) % self.buffer_size)
        self._buf_len = min(self.buffer_size, self._buf_len + len(rows))

    def _sample_negatives(self, n: int) -> np.ndarray:
        if n <= 0 or self._buf_len == 0:
            return np.zeros(0, np.int64)
        pick = torch.randint(0, self._buf_len, (n,), generator=self._gen).numpy()
        rows = self._buf[pick]
        # Rows freed by expiry since they entered the buffer are no negatives.
        return rows[self._it.alive[rows]]

    @staticmethod
    def _adagrad(table: _Table, rows: np.ndarray, g: torch.Tensor, lr: float) -> None:
        idx = torch.from_numpy(rows)
        acc = table.acc[idx] + g.pow(2).mean(dim=1)
        table.acc[idx] = acc
        table.weight[idx] -= lr * g / (acc.sqrt() + _EPS)[:, None]

    def learn(self, batch: Batch) -> None:
        if len(batch) == 0:
            return
        ts = batch.timestamps
        u = self._admit(batch.users, ts, self.users, self._pending_u)
        i = self._admit(batch.items, ts, self.items, self._pending_i)
        self._activate(self._ut, self.users, u)
        self._activate(self._it, self.items, i)
        for table, rows in ((self._ut, u), (self._it, i)):
            ok = rows >= 0
            np.maximum.at(table.last_seen, rows[ok], ts[ok])
        np.add.at(self._it.count, i[i >= 0], 1.0)
        self._watermark = max(self._watermark, float(ts.max()))

        keep = (u >= 0) & (i >= 0)
        if keep.any():
            u, i = u[keep], i[keep]
            w = np.minimum(batch.weights[keep], self.max_weight).astype(np.float32)
            self._push_buffer(i)
            # In-batch softmax is quadratic in the batch: big batches (a replay's 10,000)
            # train as consecutive steps of at most _STEP_ROWS events.
            for start in range(0, len(u), _STEP_ROWS):
                end = start + _STEP_ROWS
                self._train_step(u[start:end], i[start:end], w[start:end])
        self._expire()

    def _train_step(self, u: np.ndarray, i: np.ndarray, w: np.ndarray) -> None:
        b = len(u)
        neg = self._sample_negatives(self.n_negatives)
        cand = np.concatenate([i, neg])
        uu, inv_u = np.unique(u, return_inverse=True)
        uv, inv_v = np.unique(cand, return_inverse=True)
        t_inv_u, t_inv_v = torch.from_numpy(inv_u), torch.from_numpy(inv_v)
        eu = self._ut.weight[torch.from_numpy(u)]
        ev = self._it.weight[torch.from_numpy(cand)]
        logits = eu @ ev.T
        if self.logq_correction:
            # Negatives come in proportion to traffic; without the logQ correction
            # (Yi et al., RecSys 2019) popular items are pushed down for being sampled.
            logq = np.log(self._it.count[cand] / self._it.count.sum())
            logits -= torch.from_numpy(logq.astype(np.float32))[None, :]
        # Never use the positive item (in another column) as its own negative.
        same = torch.from_numpy(cand[None, :] == i[:, None])
        if not self.in_batch_negatives:
            same[:, :b] = True
        diag = torch.arange(b)
        same[diag, diag] = False
        logits.masked_fill_(same, float("-inf"))
        # Gradient of sum_b w_b * cross_entropy(logits_b, b) in closed form: autograd
        # through the gathers cost more than the whole step.
        grad = torch.softmax(logits, dim=1)
        grad[diag, diag] -= 1.0
        grad *= torch.from_numpy(w)[:, None]
        g_u = torch.zeros((len(uu), self.dim)).index_add_(0, t_inv_u, grad @ ev)
        g_v = torch.zeros((len(uv), self.dim)).index_add_(0, t_inv_v, grad.T @ eu)
        self._adagrad(self._ut, uu, g_u, self.learning_rate)
        self._adagrad(self._it, uv, g_v, self.learning_rate)
        if self._mlp is not None and self._mlp_opt is not None:
            self._train_click_model(u, i)

    def _train_click_model(self, u: np.ndarray, i: np.ndarray) -> None:
        assert self._mlp is not None and self._mlp_opt is not None
        neg = self._sample_negatives(len(i))
        if len(neg) == 0:
            return
        uu = torch.from_numpy(np.concatenate([u, u[: len(neg)]]))
        ii = torch.from_numpy(np.concatenate([i, neg]))
        y = torch.cat([torch.ones(len(i)), torch.zeros(len(neg))])
        # Embeddings are inputs here: the click head does not move the retrieval space.
        eu, ev = self._ut.weight[uu], self._it.weight[ii]
        self._mlp_opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(self._mlp(eu, ev), y)
        loss.backward()
        self._mlp_opt.step()

    # ------------------------------------------------------------------ scoring
    def _query_vector(self, user: str, history: Sequence[str]) -> torch.Tensor | None:
        """One query's vector (None: neither an admitted user nor an admitted history
        item); :meth:`_query_vectors` is the batch form (the same figures; slower for
        one)."""
        row = self.users.get(user)
        folded: torch.Tensor | None = None
        if history:
            rows = self.items.rows(list(history)[-self.fold_in_items :])
            rows = rows[rows >= 0]
            if len(rows):
                folded = self._it.weight[torch.from_numpy(rows)].mean(dim=0)
        if row >= 0:
            if folded is not None and self.history_weight > 0:
                return self._ut.weight[row] + self.history_weight * folded
            return self._ut.weight[row]
        return folded

    def _query_vectors(self, users: Sequence[str], histories: Sequence[Sequence[str]]
                       ) -> tuple[torch.Tensor, np.ndarray]:
        """``(Q, has)``: every query's vector (see the module doc; zeros where ``has``
        is False: neither an admitted user nor an admitted history item), at once."""
        folds, groups = self._fold_in_groups(histories, self.fold_in_items)
        items = self._it.weight
        q = torch.zeros((len(users), items.shape[1]), dtype=items.dtype)
        for sel, rows in groups:
            q[torch.from_numpy(sel)] = items[torch.from_numpy(rows)].mean(dim=1)
        u = self.users.rows(list(users))
        known = u >= 0
        if known.any():
            at = torch.from_numpy(np.flatnonzero(known))
            own = self._ut.weight[torch.from_numpy(u[known])]
            if self.history_weight > 0:
                mixed = own + self.history_weight * q[at]
                own = torch.where(torch.from_numpy(folds[known])[:, None], mixed, own)
            q[at] = own
        return q, known | folds

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        n = self.items.capacity
        alive = self._it.alive[:n]
        q = self._query_vector(user, history)
        if q is None:
            scores = np.log1p(self._it.count[:n]).astype(np.float32)
        else:
            with torch.no_grad():
                scores = (self._it.weight[:n] @ q).numpy().astype(np.float32)
            if self._mlp is not None and self.rerank_top > 0:
                scores = self._rerank(scores, alive, q)
        scores[~alive] = -np.inf
        return scores

    def score_many(
        self, users: Sequence[str], histories: Sequence[Sequence[str]]
    ) -> np.ndarray:
        """One matrix product for every query with a vector; re-ranked row by row."""
        if len(users) != len(histories):
            raise ValueError("score_many needs one history per user")
        n = self.items.capacity
        alive = self._it.alive[:n]
        out = np.empty((len(users), n), np.float32)
        with torch.no_grad():
            qs, has = self._query_vectors(users, histories)
            have = np.flatnonzero(has)
            Q = qs[torch.from_numpy(have)]
            if len(have):
                out[have] = (Q @ self._it.weight[:n].T).numpy()
        if not has.all():
            out[~has] = np.log1p(self._it.count[:n]).astype(np.float32)
        if self._mlp is not None and self.rerank_top > 0:
            for j, r in enumerate(have.tolist()):
                out[r] = self._rerank(out[r], alive, Q[j])
        out[:, ~alive] = -np.inf
        return out

    def _rerank(self, scores: np.ndarray, alive: np.ndarray, q: torch.Tensor) -> np.ndarray:
        """Re-order the top retrieval candidates by click probability, kept above the rest."""
        assert self._mlp is not None
        masked = np.where(alive, scores, -np.inf)
        k = min(self.rerank_top, int(alive.sum()))
        if k == 0:
            return scores
        top = np.argpartition(-masked, k - 1)[:k]
        with torch.no_grad():
            ev = self._it.weight[torch.from_numpy(top)]
            p = torch.sigmoid(self._mlp(q.expand(k, -1), ev)).numpy()
        out = scores.copy()
        out[top] = float(masked[top].max()) + 1.0 + p
        return out

    def click_proba(
        self, user: str, items: Sequence[str], history: Sequence[str] = ()
    ) -> np.ndarray:
        """``P(click | user, item)`` for each of ``items`` (float64).

        Uses the MLP click model when ``reranker=True``, else ``σ(u · v)``. Items
        without a row, or a user with no row and no usable history, get 0.0.
        """
        out = np.zeros(len(items), np.float64)
        q = self._query_vector(user, history)
        rows = self.items.rows(items)
        ok = rows >= 0
        if q is None or not ok.any():
            return out
        with torch.no_grad():
            ev = self._it.weight[torch.from_numpy(rows[ok])]
            logit = self._mlp(q.expand(len(ev), -1), ev) if self._mlp is not None else ev @ q
            out[ok] = torch.sigmoid(logit).numpy()
        return out

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        row = self.items.get(item)
        if row < 0:
            return []
        n = self.items.capacity
        with torch.no_grad():
            V = self._it.weight[:n]
            norms = V.norm(dim=1) + 1e-12
            sims = ((V @ V[row]) / (norms * norms[row])).numpy().astype(np.float64)
        sims[~self._it.alive[:n]] = -np.inf
        sims[row] = -np.inf
        ids = self.items.ids
        order = top_k(sims, k)  # argpartition: not a sort of the catalogue
        return [(ids[r], float(sims[r])) for r in order if np.isfinite(sims[r])]

    def item_vectors(self) -> np.ndarray:
        return self._it.weight[: self.items.capacity].numpy().copy()

    # ------------------------------------------------------------------ state
    @staticmethod
    def _pending_arrays(pending: dict[str, list[float]], prefix: str) -> dict[str, np.ndarray]:
        data, off = pack_strings(list(pending))
        vals = np.asarray(list(pending.values()), np.float64).reshape(-1, 2)
        return {f"{prefix}.data": data, f"{prefix}.offsets": off, f"{prefix}.values": vals}

    @staticmethod
    def _pending_from(a: dict[str, np.ndarray], prefix: str) -> dict[str, list[float]]:
        keys = unpack_strings(a[f"{prefix}.data"], a[f"{prefix}.offsets"])
        return {k: list(v) for k, v in zip(keys, a[f"{prefix}.values"].tolist(), strict=True)}

    def get_state(self) -> ModelState:
        arrays: dict[str, np.ndarray] = {
            **self.users.to_arrays("users"),
            **self.items.to_arrays("items"),
            **self._ut.to_arrays("user_table"),
            **self._it.to_arrays("item_table"),
            **self._pending_arrays(self._pending_u, "pending_users"),
            **self._pending_arrays(self._pending_i, "pending_items"),
            "buffer": self._buf.copy(),
            "generator": self._gen.get_state().numpy().copy(),
        }
        if self._mlp is not None and self._mlp_opt is not None:
            for name, p in self._mlp.state_dict().items():
                arrays[f"mlp.{name}"] = p.numpy().copy()
            for pid, st in self._mlp_opt.state_dict()["state"].items():
                for key, val in st.items():
                    arrays[f"mlp_opt.{pid}.{key}"] = torch.as_tensor(val).numpy().copy()
        meta: dict[str, Any] = {
            "class": self.name,
            "params": self.get_params(),
            "buf_pos": self._buf_pos,
            "buf_len": self._buf_len,
            "watermark": None if not np.isfinite(self._watermark) else self._watermark,
        }
        return ModelState(arrays=arrays, meta=meta)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        params = state.meta["params"]
        m = cls(**{**params, "initial_capacity": 1})
        m.initial_capacity = params["initial_capacity"]
        a = state.arrays
        m.users = IdIndex.from_arrays(a, "users")
        m.items = IdIndex.from_arrays(a, "items")
        m._ut = _Table.from_arrays(a, "user_table")
        m._it = _Table.from_arrays(a, "item_table")
        m._pending_u = cls._pending_from(a, "pending_users")
        m._pending_i = cls._pending_from(a, "pending_items")
        m._buf = np.array(a["buffer"], np.int64)
        m._buf_pos = int(state.meta["buf_pos"])
        m._buf_len = int(state.meta["buf_len"])
        wm = state.meta["watermark"]
        m._watermark = -np.inf if wm is None else float(wm)
        m._gen.set_state(torch.from_numpy(np.array(a["generator"], np.uint8)))
        if m._mlp is not None and m._mlp_opt is not None:
            m._mlp.load_state_dict(
                {
                    name: torch.from_numpy(np.array(a[f"mlp.{name}"]))
                    for name in m._mlp.state_dict()
                }
            )
            opt_sd = m._mlp_opt.state_dict()
            opt_state: dict[int, dict[str, torch.Tensor]] = {}
            for key in a:
                if key.startswith("mlp_opt."):
                    _, pid, name = key.split(".", 2)
                    opt_state.setdefault(int(pid), {})[name] = torch.from_numpy(
                        np.array(a[key])
                    )
            opt_sd["state"] = opt_state
            m._mlp_opt.load_state_dict(opt_sd)
        return m
