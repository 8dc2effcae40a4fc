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

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import orjson
import safetensors.numpy as stn

from online_models.base import Batch, pack_strings, unpack_strings

__all__ = [
    "ItemDelta",
    "SharedIds",
    "SharesItemState",
    "decode_deltas",
    "delta_rows",
    "encode_deltas",
    "learns_from_item_state",
    "shares_item_state",
    "unsupported",
]


class ItemDelta:
    """The item-side change of one batch: ``items`` ids plus arrays indexed into them.

    ``t_ref`` is the event time the masses are decayed to (None: no events). A decoded
    delta may instead hold positions in an id ``table`` shared with other deltas (the
    models of one update message, or every message of a fold's read; see
    :class:`SharedIds`): ``items`` is then ``[table[p] for p in index]``, built only
    when asked for, and :func:`delta_rows` resolves a group's ids once per model.
    """

    __slots__ = ("_items", "arrays", "index", "t_ref", "table")

    def __init__(self, items: Sequence[str] | None = None,
                 arrays: dict[str, np.ndarray] | None = None, t_ref: float | None = None,
                 *, table: list[str] | None = None, index: np.ndarray | None = None) -> None:
        if (table is None) != (index is None) or (items is not None and table is not None):
            raise ValueError("an ItemDelta holds either items or a table and an index")
        self._items = list(items) if items is not None else None
        self.arrays = arrays if arrays is not None else {}
        self.t_ref = t_ref
        self.table = table
        self.index = index

    @property
    def items(self) -> list[str]:
        if self._items is None:
            assert self.table is not None and self.index is not None
            table = self.table
            self._items = [table[p] for p in self.index.tolist()]
        return self._items

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else len(self.items)

    def __repr__(self) -> str:
        return (f"ItemDelta({len(self)} items, arrays={sorted(self.arrays)}, "
                f"t_ref={self.t_ref})")


class SharedIds:
    """One id table for the deltas of many update messages (a fold's read).

    :meth:`adopt` merges a decoded message's table in and re-points its deltas at
    :attr:`ids` (positions remapped), so :func:`delta_rows` looks each distinct id of
    the read up once per model instead of once per message and model.
    """

    def __init__(self) -> None:
        self._pos: dict[str, int] = {}
        #: the ids, in order of first appearance (only ever appended to)
        self.ids: list[str] = []

    def adopt(self, deltas: Iterable[ItemDelta]) -> None:
        """Re-point ``deltas`` (one message's: they share one table, or hold items)."""
        remaps: dict[int, np.ndarray] = {}
        for d in deltas:
            table = d.table
            if table is None:  # an items list: a table of its own
                table, d.index = d.items, np.arange(len(d.items), dtype=np.int64)
            if table is self.ids:
                continue
            remap = remaps.get(id(table))
            if remap is None:
                remap = remaps[id(table)] = _intern(table, self._pos, self.ids, np.int64)
            assert d.index is not None
            d.index = remap[np.asarray(d.index, np.int64)]
            d.table, d._items = self.ids, None


def _intern(names: Sequence[str], pos: dict[str, int], ids: list[str],
            dtype: type[np.integer[Any]]) -> np.ndarray:
    """Positions of ``names`` in ``ids``, the ones not there yet appended (``pos``:
    each id's position in ``ids``, kept up to date)."""
    new = [x for x in dict.fromkeys(names) if x not in pos]
    pos.update(zip(new, range(len(ids), len(ids) + len(new)), strict=True))
    ids.extend(new)
    return np.fromiter(map(pos.__getitem__, names), dtype, count=len(names))


def delta_rows(deltas: Sequence[ItemDelta],
               admit: Callable[[list[str]], np.ndarray]) -> list[np.ndarray]:
    """Each delta's item rows in a model, through ``admit`` (the model's: the rows of
    a list of ids, unknown ones added in order; the list is distinct unless a table
    itself repeats an id).

    Deltas that index one table (:class:`SharedIds`, or one message's models) admit
    the ids they use once, in table order; others admit their distinct ids in order
    of first appearance.

    >>> from online_models.ids import IdIndex
    >>> idx = IdIndex(["b"])
    >>> [r.tolist() for r in delta_rows([ItemDelta(["a", "b"]), ItemDelta(["a"])],
    ...                                 idx.add_many)]
    [[1, 0], [1]]
    """
    if not deltas:
        return []
    sizes = [len(d) for d in deltas]
    table = deltas[0].table
    if table is not None and all(d.table is table for d in deltas):
        flat = np.concatenate([np.asarray(d.index, np.int64) for d in deltas])
        used = np.unique(flat)
        rows_used = np.asarray(admit([table[p] for p in used.tolist()]), np.int64)
        rows = rows_used[np.searchsorted(used, flat)]
    else:
        names = [x for d in deltas for x in d.items]
        distinct = list(dict.fromkeys(names))
        lookup = dict(zip(distinct, np.asarray(admit(distinct)).tolist(), strict=True))
        rows = np.fromiter(map(lookup.__getitem__, names), np.int64, count=len(names))
    return np.split(rows, np.cumsum(sizes)[:-1])


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


def missing_share_methods(model: object) -> list[str]:
    """The :class:`SharesItemState` methods ``model`` (an instance or a class) lacks.

    >>> from online_models.popularity import Popularity
    >>> missing_share_methods(Popularity), missing_share_methods(object)[:2]
    ([], ['learn_local', 'apply_delta'])
    """
    return [m for m in ("learn_local", "apply_delta", "apply_deltas", "user_state",
                        "load_user_state", "forget_users")
            if not callable(getattr(model, m, None))]


def learns_from_item_state(model: object) -> bool:
    """Whether ``model``'s learning reads its item state (then every trainer folds)."""
    return bool(getattr(model, "learns_from_item_state", False))


def unsupported(models: Mapping[str, object]) -> list[str]:
    """Names of the models that cannot learn in scale-out mode."""
    return [name for name, m in models.items() if not shares_item_state(m)]


_HEADER = "liverec.deltas"


def encode_deltas(deltas: Mapping[str, ItemDelta], meta: Mapping[str, Any] | None = None
                  ) -> bytes:
    """One update message: every model's delta of a batch (safetensors + JSON header).

    The models' item ids share one table (``items.data`` / ``items.offsets``); each
    model's ``<model>/items.index`` holds its positions in it (int32).
    """
    table: list[str] = []
    pos: dict[str, int] = {}
    done: list[tuple[list[str], np.ndarray]] = []  # models often list the same ids
    indexes: dict[str, np.ndarray] = {}
    # The longest list first: the others mostly repeat its ids.
    for name, d in sorted(deltas.items(), key=lambda kv: -len(kv[1])):
        items = d.items
        index = next((ix for seen, ix in done if seen == items), None)
        if index is None:
            index = _intern(items, pos, table, np.int32)
        done.append((items, index))
        indexes[name] = index
    tensors: dict[str, np.ndarray] = {}
    head: dict[str, Any] = {"meta": dict(meta or {}), "ids": "shared", "models": {}}
    for name, d in deltas.items():
        tensors[f"{name}/items.index"] = indexes[name]
        for key, arr in d.arrays.items():
            tensors[f"{name}/{key}"] = np.ascontiguousarray(arr)
        head["models"][name] = {"t_ref": d.t_ref, "arrays": sorted(d.arrays)}
    tensors["items.data"], tensors["items.offsets"] = pack_strings(table)
    return stn.save(tensors, metadata={_HEADER: orjson.dumps(head).decode()})


def decode_deltas(raw: bytes) -> tuple[dict[str, Any], dict[str, ItemDelta]]:
    """``(meta, {model: delta})`` of an :func:`encode_deltas` message (or of the
    earlier layout, one id list per model, which the update topic may still hold)."""
    tensors = stn.load(raw)
    head = _header(raw)
    out: dict[str, ItemDelta] = {}
    shared = head.get("ids") == "shared"
    table = unpack_strings(tensors["items.data"], tensors["items.offsets"]) if shared else []
    for name, info in head["models"].items():
        arrays = {k: tensors[f"{name}/{k}"] for k in info["arrays"]}
        if shared:
            out[name] = ItemDelta(arrays=arrays, t_ref=info["t_ref"], table=table,
                                  index=tensors[f"{name}/items.index"])
        else:
            items = unpack_strings(tensors[f"{name}/items.data"],
                                   tensors[f"{name}/items.offsets"])
            out[name] = ItemDelta(items, arrays, info["t_ref"])
    return head["meta"], out


def _header(raw: bytes) -> dict[str, Any]:
    # safetensors: 8-byte little-endian header size, then the JSON header.
    size = int.from_bytes(raw[:8], "little")
    header = orjson.loads(raw[8 : 8 + size])
    parsed: dict[str, Any] = orjson.loads(header["__metadata__"][_HEADER])
    return parsed
