"""A planted two-world stream shared by the model tests."""

from __future__ import annotations

import numpy as np

from online_models.base import Batch


def planted(n_events: int, seed: int = 0, n_users: int = 20, n_items: int = 15) -> Batch:
    """Two disjoint worlds: users ``a*`` only touch items ``A*``, users ``b*`` items ``B*``."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n_events)
    u = rng.integers(0, n_users, n_events)
    i = rng.integers(0, n_items, n_events)
    users = [f"{'ab'[g]}{x}" for g, x in zip(group, u, strict=True)]
    items = [f"{'AB'[g]}{x}" for g, x in zip(group, i, strict=True)]
    return Batch.from_columns(users, items, timestamps=np.arange(n_events, dtype=float))


def planted_chains(
    n_events: int, seed: int = 0, n_users: int = 40, n_items: int = 300, p_next: float = 0.5
) -> Batch:
    """Next-item structure: every item ``I<k>`` has one fixed successor (a random cycle).

    Each user starts at a random item and, event by event, moves to the successor of
    their last item with probability ``p_next``, else jumps to a random item. Users
    take turns at random, so batches interleave them. Only the order carries signal:
    items are equally popular and users share no taste beyond the chain.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_items)
    succ = np.empty(n_items, np.int64)
    succ[perm] = np.roll(perm, -1)
    pos = rng.integers(0, n_items, n_users)
    users, items = [], []
    for who in rng.integers(0, n_users, n_events).tolist():
        cur = int(succ[pos[who]]) if rng.random() < p_next else int(rng.integers(0, n_items))
        pos[who] = cur
        users.append(f"u{who}")
        items.append(f"I{cur}")
    return Batch.from_columns(users, items, timestamps=np.arange(n_events, dtype=float))


def planted_sittings(
    n_events: int, seed: int = 0, n_users: int = 40, n_groups: int = 100, size: int = 3,
    p_next: float = 0.7,
) -> Batch:
    """Next-group structure with no order inside a group (ratings entered in one sitting,
    lines of a basket): every group of ``size`` items ``I<g>_<k>`` has one fixed successor
    group (a random cycle). A user clicks all items of their group in a random order, then
    moves on to its successor with probability ``p_next``, else to a random group.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_groups)
    succ = np.empty(n_groups, np.int64)
    succ[perm] = np.roll(perm, -1)
    group = rng.integers(0, n_groups, n_users)
    pending: list[list[str]] = [[] for _ in range(n_users)]
    users, items = [], []
    for who in rng.integers(0, n_users, n_events).tolist():
        if not pending[who]:
            nxt = int(succ[group[who]]) if rng.random() < p_next else int(rng.integers(n_groups))
            group[who] = nxt
            pending[who] = [f"I{nxt}_{k}" for k in rng.permutation(size).tolist()]
        users.append(f"u{who}")
        items.append(pending[who].pop())
    return Batch.from_columns(users, items, timestamps=np.arange(n_events, dtype=float))
