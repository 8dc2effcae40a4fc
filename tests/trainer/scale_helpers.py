"""Helpers of the scale-out tests: reference models and comparing item state by id."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from online_models import registry
from online_models.base import Batch, OnlineModel
from stream.events import ClickEvent

#: exact counts (no decay): sums of small integers, equal whatever the order
EXACT_PARAMS: dict[str, dict[str, Any]] = {
    "popularity": {"half_life_seconds": None},
    "itemknn": {"half_life_seconds": None, "position_decay": 1.0},
    "sequence": {"half_life_seconds": None, "position_decay": 1.0},
}


def reference(events: Sequence[ClickEvent], params: Mapping[str, Mapping[str, Any]]
              ) -> dict[str, OnlineModel]:
    """One trainer's state: fresh models fed every event once, in time order."""
    models = {n: registry.create(n, **p) for n, p in params.items()}
    batch = Batch.from_columns([e.user_id for e in events], [e.item_id for e in events],
                               [e.weight for e in events], [e.ts for e in events])
    for chunk in batch.chunks(977):
        for m in models.values():
            m.learn(chunk)
    return models


def item_state(model: OnlineModel) -> dict[str, dict[Any, float]]:
    """Item-side state keyed by item ids (row order differs between trainers)."""
    st = model.get_state().arrays
    ids = list(model.items.ids)
    if "mass" in st:
        return {"mass": {ids[r]: float(v) for r, v in enumerate(st["mass"]) if v}}
    pairs = {(ids[int(k) >> 32], ids[int(k) & 0xFFFFFFFF]): float(v)
             for k, v in zip(st["pairs.keys"], st["pairs.values"], strict=True)}
    counts = {ids[r]: float(v) for r, v in enumerate(st["counts"]) if v}
    return {"pairs": pairs, "counts": counts}


def user_windows(model: OnlineModel) -> dict[str, list[Any]]:
    """Each user's co-occurrence window as item ids (oldest first)."""
    st = model.get_state().arrays
    ids = list(model.items.ids)
    users = list(model.users.ids)
    win = st["window.items"]
    return {u: [ids[r] if r >= 0 else None for r in win[row].tolist()]
            for row, u in enumerate(users) if u is not None and row < len(win)
            and (win[row] >= 0).any()}


def assert_same_items(got: OnlineModel, want: OnlineModel, rtol: float = 0.0) -> None:
    g, w = item_state(got), item_state(want)
    assert g.keys() == w.keys()
    for part in w:
        assert set(g[part]) == set(w[part]), part
        keys = sorted(w[part], key=str)
        np.testing.assert_allclose([g[part][k] for k in keys], [w[part][k] for k in keys],
                                   rtol=rtol, atol=0, err_msg=part)
