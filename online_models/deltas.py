"""Item-side deltas: how trainers that each own some users share one model.

In scale-out mode (``liverec train --scale-out``) every trainer owns the users of
its partitions. A model that supports sharing splits learning in two halves:

* :meth:`SharesItemState.learn_local` learns the *user-side* state of a batch (user
  windows, user index) and returns the batch's *item-side* change as an
  :class:`ItemDelta` keyed by string item ids, without applying it;
* :meth:`SharesItemState.apply_delta` adds a delta (anyone's) to the item-side state;
  :meth:`SharesItemState.apply_deltas` adds several in order (what a trainer folding
  the update topic calls with a read's messages: count models sum their pairs into
  one sorted run instead of one per delta).

``m.apply_delta(m.learn_local(b))`` equals ``m.learn(b)`` up to float summation
order: count-based state is a sum, so the merged state of N trainers equals one
trainer's on the same events. Time decay travels as mass decayed to the delta's
reference time ``t_ref`` (its latest event time); the receiver moves it to its own
forward-decay landmark, so the result does not depend on who applies it when.

Count models' learning never reads item state, so a trainer may leave the folding
to another; a model whose learning does (BPR's steps read item factors) sets
``learns_from_item_state = True`` (:func:`learns_from_item_state`) and is then folded
by every trainer. Its merge is not exact: see :meth:`online_models.bpr.BPR.learn_local`.

User-side state moves with a partition: :meth:`SharesItemState.user_state` exports
the given users' state (string ids, no rows), :meth:`SharesItemState.load_user_state`
restores it and :meth:`SharesItemState.forget_users` drops it.

Deltas travel as bytes (:func:`encode_deltas` / :func:`decode_deltas`):
safetensors with a JSON header, nothing that can run code on load.

>>> from online_models.base import Batch
>>> from online_models.popularity import Popularity
>>> a, b = Popularity(half_life_seconds=None), Popularity(half_life_seconds=None)
>>> d = a.learn_local(Batch.from_columns(["u", "v"], ["x", "x"]))
>>> b.apply_delta(decode_deltas(encode_deltas({"popularity": d}))[1]["popularity"])
>>> b.popularity("x")
2.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import orjson
import safetensors.numpy as stn

from online_models.base import Batch, pack_strings, unpack_strings

__all__ = [
    "ItemDelta",
    "SharesItemState",
    "decode_deltas",
    "encode_deltas",
    "learns_from_item_state",
    "shares_item_state",
    "unsupported",
]


@dataclass(slots=True)
class ItemDelta:
    """The item-side change of one batch: ``items`` ids plus arrays indexed into them.

    ``t_ref`` is the event time the masses are decayed to (None: no events).
    """

    items: list[str]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    t_ref: float | None = None

    def __len__(self) -> int:
        return len(self.items)


@runtime_checkable
class SharesItemState(Protocol):
    """A model whose item-side state several trainers can build together."""

    def learn_local(self, batch: Batch) -> ItemDelta: ...

    def apply_delta(self, delta: ItemDelta) -> None: ...

    def apply_deltas(self, deltas: Sequence[ItemDelta]) -> None: ...

    def user_state(self, users: Sequence[str]) -> dict[str, np.ndarray]: ...

    def load_user_state(self, arrays: Mapping[str, np.ndarray]) -> None: ...

    def forget_users(self, users: Sequence[str]) -> None: ...


def shares_item_state(model: object) -> bool:
    """Whether ``model`` implements :class:`SharesItemState`."""
    return isinstance(model, SharesItemState)


def learns_from_item_state(model: object) -> bool:
    """Whether ``model``'s learning reads its item state (then every trainer folds)."""
    return bool(getattr(model, "learns_from_item_state", False))


def unsupported(models: Mapping[str, object]) -> list[str]:
    """Names of the models that cannot learn in scale-out mode."""
    return [name for name, m in models.items() if not shares_item_state(m)]


_HEADER = "liverec.deltas"


def encode_deltas(deltas: Mapping[str, ItemDelta], meta: Mapping[str, Any] | None = None
                  ) -> bytes:
    """One update message: every model's delta of a batch (safetensors + JSON header)."""
    tensors: dict[str, np.ndarray] = {}
    head: dict[str, Any] = {"meta": dict(meta or {}), "models": {}}
    for name, d in deltas.items():
        data, offsets = pack_strings(d.items)
        tensors[f"{name}/items.data"] = data
        tensors[f"{name}/items.offsets"] = offsets
        for key, arr in d.arrays.items():
            tensors[f"{name}/{key}"] = np.ascontiguousarray(arr)
        head["models"][name] = {"t_ref": d.t_ref, "arrays": sorted(d.arrays)}
    return stn.save(tensors, metadata={_HEADER: orjson.dumps(head).decode()})


def decode_deltas(raw: bytes) -> tuple[dict[str, Any], dict[str, ItemDelta]]:
    """``(meta, {model: delta})`` of an :func:`encode_deltas` message."""
    tensors = stn.load(raw)
    head = _header(raw)
    out: dict[str, ItemDelta] = {}
    for name, info in head["models"].items():
        items = unpack_strings(tensors[f"{name}/items.data"], tensors[f"{name}/items.offsets"])
        arrays = {k: tensors[f"{name}/{k}"] for k in info["arrays"]}
        out[name] = ItemDelta(items, arrays, info["t_ref"])
    return head["meta"], out


def _header(raw: bytes) -> dict[str, Any]:
    # safetensors: 8-byte little-endian header size, then the JSON header.
    size = int.from_bytes(raw[:8], "little")
    header = orjson.loads(raw[8 : 8 + size])
    parsed: dict[str, Any] = orjson.loads(header["__metadata__"][_HEADER])
    return parsed
