"""Large random-factor snapshots for benchmarks (built through the models' ``from_state``)."""

from __future__ import annotations

import numpy as np

from online_models.base import Batch, IdIndex, ModelState, UserHistory
from online_models.bpr import BPR, generator_to_meta
from online_models.popularity import Popularity

__all__ = ["random_bpr", "random_history", "random_popularity"]


def random_bpr(n_users: int, n_items: int, dim: int, seed: int = 0, clusters: int = 0) -> BPR:
    """A BPR model with ``n_items`` x ``dim`` random factors (no training).

    ``clusters=0`` draws every factor i.i.d. Gaussian: no structure at all, the worst
    case for an approximate index. ``clusters > 0`` draws users and items around that
    many random centres (centre spread 0.3, within-cluster spread 0.1), closer to
    trained factors, where items of a taste form groups. Row ``r`` (user or item)
    belongs to cluster ``r % clusters``, which :func:`random_history` can follow.

    >>> m = random_bpr(10, 50, 8)
    >>> m.n_items, m.item_vectors().shape, m.score_all("u3").dtype
    (50, (50, 8), dtype('float32'))
    >>> random_bpr(10, 50, 8, clusters=4).item_vectors().shape
    (50, 8)
    """
    rng = np.random.default_rng(seed)
    params = {**BPR(n_factors=dim, initial_capacity=1).get_params(), "initial_capacity": n_items}
    centres = (
        rng.standard_normal((clusters, dim), dtype=np.float32) * np.float32(0.3)
        if clusters > 0
        else None
    )
    arrays = {
        **IdIndex(f"u{i}" for i in range(n_users)).to_arrays("users"),
        **IdIndex(f"i{i}" for i in range(n_items)).to_arrays("items"),
        "U": _factors(rng, n_users, dim, centres),
        "V": _factors(rng, n_items, dim, centres),
        "b": rng.standard_normal(n_items, dtype=np.float32) * np.float32(0.1),
        "buffer": np.zeros(params["buffer_size"], np.int64),
    }
    meta = {
        "class": "bpr",
        "params": params,
        "rng": generator_to_meta(rng),
        "buf_pos": 0,
        "buf_len": 0,
    }
    return BPR.from_state(ModelState(arrays=arrays, meta=meta))


def _factors(
    rng: np.random.Generator, n: int, dim: int, centres: np.ndarray | None
) -> np.ndarray:
    if centres is None:
        return rng.standard_normal((n, dim), dtype=np.float32) * np.float32(0.3)
    out = rng.standard_normal((n, dim), dtype=np.float32) * np.float32(0.1)
    out += centres[np.arange(n) % len(centres)]
    return out


def random_popularity(n_items: int, n_events: int = 200_000, seed: int = 0) -> Popularity:
    """Popularity learned from ``n_events`` Zipf-distributed clicks over ``n_items``."""
    rng = np.random.default_rng(seed)
    rows = np.minimum(rng.zipf(1.3, n_events) - 1, n_items - 1)
    items = np.array([f"i{r}" for r in rows], dtype=object)
    users = np.array([f"u{r % 1000}" for r in range(n_events)], dtype=object)
    m = Popularity(half_life_seconds=None)
    m.learn(Batch.from_columns(users, items, None, np.arange(n_events, dtype=np.float64)))
    return m


def random_history(
    n_users: int, n_items: int, per_user: int = 20, seed: int = 0, clusters: int = 0
) -> UserHistory:
    """Each user ``per_user`` random seen items.

    With ``clusters`` (as given to :func:`random_bpr`) they are drawn from the user's
    own cluster, as clicks follow taste; otherwise uniformly from the catalogue.

    >>> h = random_history(4, 40, per_user=3, clusters=4)
    >>> all(int(i[1:]) % 4 == 1 for i in h.get("u1"))
    True
    """
    rng = np.random.default_rng(seed)
    h = UserHistory(max_items=max(per_user, 1))
    if clusters > 0:
        per_cluster = max(1, n_items // clusters)
        own = (np.arange(n_users) % clusters)[:, None]
        seen = own + clusters * rng.integers(0, per_cluster, size=(n_users, per_user))
        seen = np.minimum(seen, n_items - 1)
    else:
        seen = rng.integers(0, n_items, size=(n_users, per_user))
    for u in range(n_users):
        for i in seen[u].tolist():
            h.append(f"u{u}", f"i{i}")
    return h
