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
