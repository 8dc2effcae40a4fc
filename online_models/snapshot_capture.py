"""Capturing a snapshot: :func:`capture` copies what a snapshot holds out of the live
models (their states, the user history, extra arrays, the manifest's fields) into a
:class:`CapturedState`, the trainer's only pause for a snapshot.
:meth:`online_models.snapshot.SnapshotStore.write_captured` then writes it, in another
thread if need be.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from online_models import registry
from online_models.base import ModelState, OnlineModel, UserHistory

__all__ = ["CapturedState", "Offsets", "capture"]

_HISTORY_PREFIX = "history"
_EXTRA_PREFIX = "extra."

Offsets = Mapping[str, Mapping[int, int]]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


@dataclass(frozen=True, slots=True)
class CapturedState:
    """Everything a snapshot holds, copied out of the live models (see :func:`capture`)."""

    models: dict[str, tuple[ModelState, dict[str, Any]]]
    state_arrays: dict[str, np.ndarray]
    manifest: dict[str, Any]


def _detached(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with every array the live model may still change copied.

    An array that owns its memory and that nothing but ``arrays`` refers to was made
    by ``get_state`` for this call (a slice copied, a product, a flattened table): it
    is taken as it is: copying it again would lengthen the capture, the learner's only
    pause for a snapshot. Views, arrays over foreign memory (a torch tensor's
    ``.numpy()``) and arrays the model keeps are copied.
    """
    out: dict[str, np.ndarray] = {}
    for k in arrays:
        v = arrays[k]
        # references: the dict's, ``v`` and getrefcount's own argument
        out[k] = v if v.flags.owndata and sys.getrefcount(v) <= 3 else np.array(v, copy=True)
    return out


def capture(
    models: Mapping[str, OnlineModel],
    *,
    history: UserHistory,
    offsets: Offsets,
    events_total: int,
    watermark: float | None,
    metrics: Mapping[str, Any] | None = None,
    extra_arrays: Mapping[str, np.ndarray] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    reuse: Mapping[str, tuple[ModelState, dict[str, Any]]] | None = None,
) -> CapturedState:
    """Copy the state a snapshot needs, so the models may go on learning meanwhile.

    This is the only part of a snapshot that must pause learning; the slow part (hash,
    write, fsync, publish) is :meth:`SnapshotStore.write_captured`, which can run in
    another thread. ``reuse[name]`` is an earlier capture's entry of a model that has
    not changed since (a followed model, :mod:`trainer.follow`): it is taken as it is.
    """
    captured: dict[str, tuple[ModelState, dict[str, Any]]] = {}
    for name, model in models.items():
        if reuse is not None and name in reuse:
            captured[name] = reuse[name]
            continue
        state = model.get_state()
        state.check()
        arrays = _detached(state.arrays)
        meta = orjson.loads(orjson.dumps(state.meta, default=_json_default))
        kind = state.meta.get("class", getattr(model, "name", ""))
        entry: dict[str, Any] = {
            "class": kind,
            "params": meta.get("params", {}),
            "state_meta": meta,
            "n_users": int(model.n_users),
            "n_items": int(model.n_items),
            "arrays": {k: [str(v.dtype), list(v.shape)] for k, v in arrays.items()},
        }
        package = registry.package_of(str(kind))
        if package is not None:  # a plugin model: which release wrote this state
            entry["package"] = package
        captured[name] = (ModelState(arrays=arrays, meta=meta), entry)
    state_arrays = _detached(history.to_arrays(_HISTORY_PREFIX))
    for k, v in (extra_arrays or {}).items():
        if v.dtype == object:
            raise TypeError(f"extra array {k!r} must be numeric")
        state_arrays[_EXTRA_PREFIX + k] = np.array(v, copy=True)
    manifest = {
        "events_total": int(events_total),
        "offsets": {
            str(t): {str(int(p)): int(o) for p, o in parts.items()}
            for t, parts in offsets.items()
        },
        "watermark": None if watermark is None else float(watermark),
        "metrics": orjson.loads(orjson.dumps(dict(metrics or {}), default=_json_default)),
        "history": {"max_items": history.max_items, "max_users": history.max_users},
        "extra_meta": orjson.loads(orjson.dumps(dict(extra_meta or {}),
                                                default=_json_default)),
    }
    return CapturedState(captured, state_arrays, manifest)
