"""River's ``FunkMF`` and ``BiasedMF`` wrapped as liverec models -- baselines only.

They learn the river way, one ``learn_one`` call per event (plus one per sampled
negative), and that per-event rate is exactly what the throughput benchmark compares
the vectorised models against. River's models regress a rating with squared loss, so
on implicit feedback every event is a binary target ``y = 1`` and ``n_negatives`` items
drawn from a ring buffer of recent traffic are targets ``y = 0``; without negatives
everything drifts towards "liked". Targets stay in {0, 1} (not the event weight, up to
5), the step is small and river's ``clip_gradient`` bounds each update: with targets
up to 5 and step 0.05 the latents' feedback loop diverged, and on Online Retail every
score was NaN after ~46k events.

Scoring reads river's learned latents (``u_latents`` / ``i_latents``, plus biases for
``BiasedMF``) into a numpy matrix aligned with ``self.items``, rebuilt lazily after
learning. A user river never saw is folded in from ``history`` as the mean latent of
the recent history items.

State: latents, biases, the global mean, the latent initialiser's random state, the
SGD optimisers' iteration counters and the negative sampler are exported, so a rebuilt
model scores identically and keeps learning identically (river's SGD keeps no other
state). River models are rebuilt from arrays, never pickled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np
from river import optim, reco

from online_models.base import Batch, IdIndex, ModelState, OnlineModel, top_k
from online_models.bpr import generator_from_meta, generator_to_meta

__all__ = ["RiverBiasedMF", "RiverFunkMF"]


class _RiverMF(OnlineModel):
    """Shared wrapper: id indexes, negative sampling, latent matrices, state."""

    _optimizer_attrs: ClassVar[tuple[str, ...]] = ()
    adaptable: ClassVar[Mapping[str, str]] = {"learning_rate": "learning_rate"}

    def __init__(
        self,
        n_factors: int = 10,
        learning_rate: float = 0.02,
        l2: float = 0.001,
        clip_gradient: float = 1.0,
        n_negatives: int = 1,
        buffer_size: int = 1000,
        init_std: float = 0.1,
        fold_in_items: int = 20,
        seed: int = 0,
    ) -> None:
        self.n_factors = n_factors
        self.learning_rate = learning_rate
        self.l2 = l2
        self.clip_gradient = clip_gradient
        self.n_negatives = n_negatives
        self.buffer_size = buffer_size
        self.init_std = init_std
        self.fold_in_items = fold_in_items
        self.seed = seed

        self.users = IdIndex()
        self.items = IdIndex()
        self.river = self._make_river()
        self._rng = np.random.default_rng(seed)
        self._buf: list[str] = []
        self._buf_pos = 0
        self._V: np.ndarray | None = None  # item latents cache, rebuilt after learning

    # -- river specifics
    def _make_river(self) -> Any:
        raise NotImplementedError

    def _initializer(self) -> optim.initializers.Normal:
        raise NotImplementedError

    def _item_bias(self, ids: Sequence[str]) -> np.ndarray:
        return np.zeros(len(ids), np.float64)

    def _user_offset(self, user: str) -> float:
        return 0.0

    # -- learning
    def learn(self, batch: Batch) -> None:
        if len(batch) == 0:
            return
        self.users.add_many(batch.users)
        self.items.add_many(batch.items)
        k = self.n_negatives
        draws = self._rng.random((len(batch), max(k, 0)))
        learn_one, buf, cap = self.river.learn_one, self._buf, self.buffer_size
        for n, (u, i) in enumerate(zip(batch.users.tolist(), batch.items.tolist(), strict=True)):
            learn_one(u, i, 1.0)
            for d in draws[n].tolist() if buf else ():
                j = buf[int(d * len(buf))]
                if j != i:
                    learn_one(u, j, 0.0)
            if len(buf) < cap:
                buf.append(i)
            else:
                buf[self._buf_pos] = i
                self._buf_pos = (self._buf_pos + 1) % cap
        self._V = None

    # -- scoring
    def _item_matrix(self) -> np.ndarray:
        if self._V is None or len(self._V) != self.items.capacity:
            lat = self.river.i_latents
            zero = np.zeros(self.n_factors)
            rows = [lat.get(k, zero) for k in self.items.ids]
            # np.stack refuses an empty list: an unfitted model has an empty matrix.
            self._V = (np.stack(rows) if rows else np.zeros((0, self.n_factors))).reshape(
                -1, self.n_factors
            )
        return self._V

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        ids = self.items.ids
        V = self._item_matrix()
        scores = self._item_bias(ids) + self._user_offset(user)  # type: ignore[arg-type]
        q = self.river.u_latents.get(user)
        if q is None and history:
            rows = self.items.rows(list(history)[-self.fold_in_items :])
            rows = rows[rows >= 0]
            if len(rows):
                q = V[rows].mean(axis=0)
        if q is not None:
            scores = scores + V @ q
        return np.asarray(scores, dtype=np.float32)

    def score_many(
        self, users: Sequence[str], histories: Sequence[Sequence[str]]
    ) -> np.ndarray:
        """Item biases once, then one matrix product for the queries with a vector."""
        if len(users) != len(histories):
            raise ValueError("score_many needs one history per user")
        ids = self.items.ids
        V = self._item_matrix()
        bias = self._item_bias(ids)  # type: ignore[arg-type]
        out = np.empty((len(users), len(ids)), np.float64)
        qs: list[np.ndarray | None] = []
        for r, (user, history) in enumerate(zip(users, histories, strict=True)):
            out[r] = bias + self._user_offset(user)
            q = self.river.u_latents.get(user)
            if q is None and history:
                rows = self.items.rows(list(history)[-self.fold_in_items :])
                rows = rows[rows >= 0]
                if len(rows):
                    q = V[rows].mean(axis=0)
            qs.append(q)
        have = [r for r, q in enumerate(qs) if q is not None]
        if have and len(ids):
            Q = np.stack([np.asarray(qs[r], np.float64) for r in have])
            out[have] += Q @ V.T
        return out.astype(np.float32)

    def set_param(self, name: str, value: float) -> None:
        """Also moves the step size of river's optimisers (built with the old rate).

        River reads an optimiser's ``lr`` as a schedule (``lr.get(step)``), so the new
        rate goes in as a constant one, as river's constructor wraps a number.
        """
        super().set_param(name, value)
        if name == "learning_rate":
            for attr in self._optimizer_attrs:
                opt = getattr(self.river, attr, None)
                if opt is not None and hasattr(opt, "lr"):
                    opt.lr = optim.schedulers.Constant(float(value))

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        row = self.items.get(item)
        if row < 0:
            return []
        V = self._item_matrix()
        norms = np.linalg.norm(V, axis=1) + 1e-12
        sims = (V @ V[row]) / (norms * norms[row])
        sims[row] = -np.inf
        order = top_k(sims, k)  # argpartition: not a sort of the catalogue
        ids = self.items.ids
        return [(ids[r], float(sims[r])) for r in order if np.isfinite(sims[r])]

    def item_vectors(self) -> np.ndarray:
        return self._item_matrix().astype(np.float32)

    # -- state
    def _extra_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _load_extra(self, a: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        return None

    def forget_users(self, users: Sequence[str]) -> None:
        """Drop ``users``: their rows, latents and biases (one coming back starts from a
        fresh draw of the initializer, as a new user does)."""
        super().forget_users(users)
        biases = getattr(self.river, "u_biases", None)
        for u in users:
            self.river.u_latents.pop(u, None)
            if biases is not None:
                biases.pop(u, None)

    def get_state(self) -> ModelState:
        zero = np.zeros(self.n_factors)
        ul, il = self.river.u_latents, self.river.i_latents
        init_state: dict[str, Any] = self._initializer()._rng.get_state(legacy=False)
        arrays = {
            **self.users.to_arrays("users"),
            **self.items.to_arrays("items"),
            "user_latents": np.stack([ul.get(k, zero) for k in self.users.ids]).reshape(
                -1, self.n_factors
            ),
            "item_latents": np.stack([il.get(k, zero) for k in self.items.ids]).reshape(
                -1, self.n_factors
            ),
            "buffer": self.items.rows(self._buf),
            "init_rng.keys": np.asarray(init_state["state"]["key"], np.uint32),
            **self._extra_arrays(),
        }
        meta = {
            "class": self.name,
            "params": self.get_params(),
            "rng": generator_to_meta(self._rng),
            "buf_pos": self._buf_pos,
            "init_rng": {
                "pos": int(init_state["state"]["pos"]),
                "has_gauss": int(init_state["has_gauss"]),
                "gauss": float(init_state["gauss"]),
            },
            "optimizer_iterations": {
                a: int(getattr(self.river, a).n_iterations) for a in self._optimizer_attrs
            },
        }
        return ModelState(arrays=arrays, meta=meta)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        m = cls(**state.meta["params"])
        a, meta = state.arrays, state.meta
        m.users = IdIndex.from_arrays(a, "users")
        m.items = IdIndex.from_arrays(a, "items")
        for index, latents, key in (
            (m.users, m.river.u_latents, "user_latents"),
            (m.items, m.river.i_latents, "item_latents"),
        ):
            for k, vec in zip(index.ids, np.asarray(a[key], np.float64), strict=True):
                if k is not None:
                    latents[k] = vec.copy()
        item_ids = m.items.ids
        m._buf = [item_ids[r] for r in a["buffer"].tolist()]
        m._buf_pos = int(meta["buf_pos"])
        m._rng = generator_from_meta(meta["rng"])
        ir = meta["init_rng"]
        m._initializer()._rng.set_state(
            {
                "bit_generator": "MT19937",
                "state": {"key": np.asarray(a["init_rng.keys"], np.uint32), "pos": ir["pos"]},
                "has_gauss": ir["has_gauss"],
                "gauss": ir["gauss"],
            }
        )
        for attr, n in meta["optimizer_iterations"].items():
            getattr(m.river, attr).n_iterations = n
        m._load_extra(a, meta)
        return m


class RiverFunkMF(_RiverMF):
    """``river.reco.FunkMF`` learnt per event with sampled zero-target negatives.

    Parameters
    ----------
    n_factors
        Latent dimension.
    learning_rate
        River SGD step size.
    l2
        L2 penalty on the latents.
    clip_gradient
        Bound on the loss gradient ``|prediction - target|`` of one ``learn_one``.
    n_negatives
        Zero-target items sampled from recent traffic per event.
    buffer_size
        Ring buffer of recent items the negatives come from.
    init_std
        Standard deviation of river's normal latent initialiser.
    fold_in_items
        Recent history items averaged for a user river never saw.
    seed
        Seed of the initialiser and of the negative sampler.

    Examples
    --------
    >>> m = RiverFunkMF(n_factors=4, seed=1)
    >>> m.learn(Batch.from_columns(["a", "b"], ["x", "y"]))
    >>> m.score_all("a").shape
    (2,)
    """

    name: ClassVar[str] = "river-funkmf"
    _optimizer_attrs = ("u_optimizer", "i_optimizer")

    def _make_river(self) -> Any:
        return reco.FunkMF(
            n_factors=self.n_factors,
            optimizer=optim.SGD(self.learning_rate),
            l2=self.l2,
            clip_gradient=self.clip_gradient,
            initializer=optim.initializers.Normal(mu=0.0, sigma=self.init_std, seed=self.seed),
            seed=self.seed,
        )

    def _initializer(self) -> optim.initializers.Normal:
        return self.river.initializer


class RiverBiasedMF(_RiverMF):
    """``river.reco.BiasedMF`` (global mean + user/item biases + latents), per event.

    Same parameters as :class:`RiverFunkMF`; ``l2`` applies to biases and latents.

    Examples
    --------
    >>> m = RiverBiasedMF(n_factors=4, seed=1)
    >>> m.learn(Batch.from_columns(["a", "b"], ["x", "y"]))
    >>> m.score_all("b").shape
    (2,)
    """

    name: ClassVar[str] = "river-biasedmf"
    _optimizer_attrs = (
        "u_bias_optimizer",
        "i_bias_optimizer",
        "u_latent_optimizer",
        "i_latent_optimizer",
    )

    def _make_river(self) -> Any:
        return reco.BiasedMF(
            n_factors=self.n_factors,
            bias_optimizer=optim.SGD(self.learning_rate),
            latent_optimizer=optim.SGD(self.learning_rate),
            l2_bias=self.l2,
            l2_latent=self.l2,
            clip_gradient=self.clip_gradient,
            latent_initializer=optim.initializers.Normal(
                mu=0.0, sigma=self.init_std, seed=self.seed
            ),
            seed=self.seed,
        )

    def _initializer(self) -> optim.initializers.Normal:
        return self.river.latent_initializer

    def _item_bias(self, ids: Sequence[str]) -> np.ndarray:
        b = self.river.i_biases
        return np.fromiter((b.get(k, 0.0) for k in ids), np.float64, count=len(ids))

    def _user_offset(self, user: str) -> float:
        return float(self.river.global_mean.get()) + float(self.river.u_biases.get(user, 0.0))

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        ub = self.river.u_biases
        return {
            "user_bias": np.fromiter((ub.get(k, 0.0) for k in self.users.ids), np.float64),
            "item_bias": self._item_bias(self.items.ids),  # type: ignore[arg-type]
            "global_mean": np.asarray(
                [self.river.global_mean.n, self.river.global_mean._mean], np.float64
            ),
        }

    def _load_extra(self, a: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        for index, biases, key in (
            (self.users, self.river.u_biases, "user_bias"),
            (self.items, self.river.i_biases, "item_bias"),
        ):
            for k, b in zip(index.ids, a[key].tolist(), strict=True):
                if k is not None:
                    biases[k] = b
        n, mean = a["global_mean"].tolist()
        self.river.global_mean.n = n
        self.river.global_mean._mean = mean
