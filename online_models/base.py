"""The one protocol every online model implements, and the small shared pieces.

Every model -- collaborative filtering, torch embeddings, the hybrid -- is an
:class:`OnlineModel`. The trainer, the prequential evaluator and the server only
ever talk to this protocol:

* ``learn(batch)`` learns a mini-batch of interactions in place (returns ``None``);
* ``score_all(user, history)`` scores every item the model knows, one float per
  item row (``self.items``); ``score``, ``recommend`` build on it;
* ``score_many(users, histories)`` scores several queries at once against one
  state, one row per query (``score_all`` stacked; models override it with a
  matrix product or vectorised gathers: the evaluator's and the hybrid's path);
* ``similar(item, k)`` returns items like an item;
* ``get_state()`` / ``from_state(state)`` export and rebuild the model from
  numeric arrays plus JSON-able metadata (never pickle);
* ``n_users`` / ``n_items`` say how many ids the model knows;
* ``adaptable_params()`` / ``set_param(name, value)`` declare and set the
  hyperparameters drift adaptation may change (half-lives, learning rates).

Hyperparameters are constructor arguments stored under the same names; learned
state lives apart; randomness comes only from ``seed``.
"""

from __future__ import annotations

import inspect
import itertools
from abc import ABC, abstractmethod
from array import array
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np

__all__ = [
    "ADAPTABLE_KINDS",
    "Batch",
    "IdIndex",
    "ModelState",
    "OnlineModel",
    "UserHistory",
    "grow_rows",
    "learning_order",
    "pack_strings",
    "top_k",
    "unpack_strings",
]


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True, slots=True)
class Batch:
    """A mini-batch of interactions, column-wise, in arrival (event) order.

    ``users`` and ``items`` are object arrays of ``str``; ``weights`` float32
    (the event type's weight); ``timestamps`` float64 epoch seconds (event time).

    >>> b = Batch.from_records([("u1", "i1", 1.0, 10.0), ("u2", "i2", 2.0, 11.0)])
    >>> len(b), b.users[1], float(b.weights.sum())
    (2, 'u2', 3.0)
    """

    users: np.ndarray
    items: np.ndarray
    weights: np.ndarray
    timestamps: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.users)
        if not (len(self.items) == len(self.weights) == len(self.timestamps) == n):
            raise ValueError("Batch columns must all have the same length")

    @classmethod
    def from_records(cls, records: Iterable[tuple[str, str, float, float]]) -> Batch:
        rows = list(records)
        users = np.empty(len(rows), dtype=object)
        items = np.empty(len(rows), dtype=object)
        users[:] = [r[0] for r in rows]
        items[:] = [r[1] for r in rows]
        return cls(
            users=users,
            items=items,
            weights=np.asarray([r[2] for r in rows], dtype=np.float32),
            timestamps=np.asarray([r[3] for r in rows], dtype=np.float64),
        )

    @classmethod
    def from_columns(
        cls,
        users: Sequence[str] | np.ndarray,
        items: Sequence[str] | np.ndarray,
        weights: Sequence[float] | np.ndarray | None = None,
        timestamps: Sequence[float] | np.ndarray | None = None,
    ) -> Batch:
        n = len(users)
        u = np.empty(n, dtype=object)
        i = np.empty(n, dtype=object)
        u[:] = list(users)
        i[:] = list(items)
        w = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
        t = np.zeros(n, np.float64) if timestamps is None else np.asarray(timestamps, np.float64)
        return cls(users=u, items=i, weights=w, timestamps=t)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: slice | np.ndarray) -> Batch:
        return Batch(
            self.users[index], self.items[index], self.weights[index], self.timestamps[index]
        )

    def chunks(self, size: int) -> Iterator[Batch]:
        """Consecutive sub-batches of at most ``size`` events."""
        for start in range(0, len(self), size):
            yield self[start : start + size]


# --------------------------------------------------------------------------- ids


class IdIndex:
    """Maps string ids to dense rows ``0..n-1`` and back; grows as ids arrive.

    Rows are stable for the life of the index. Models that expire ids call
    :meth:`remove`, which frees the row for reuse and bumps ``generation`` so
    callers holding row mappings know to rebuild them.

    The id -> row lookup is an open-addressing hash table of int32 rows (linear
    probing on ``hash(id)``, at most half full) over the ``ids`` list, not a
    ``dict[str, int]``: a dict costs a 24-byte entry plus a 32-byte int object
    per id, ~56 bytes against this table's 4-8, which at a million ids was
    ~50 MiB of a model whose parameters are ~250 MiB (``bench/bench_memory.py``).
    The batch lookups (:meth:`rows`, :meth:`add_many`) go through a bounded
    ``dict`` of recently looked-up ids first (at most ``CACHE_IDS``, emptied when
    full): a hot id costs one C-level dict probe instead of a Python probe loop,
    and the cache adds at most ~3 MiB per index whatever the number of ids.

    >>> idx = IdIndex()
    >>> idx.add_many(["a", "b", "a", "c"]).tolist()
    [0, 1, 0, 2]
    >>> idx.get("b"), idx.get("zz"), len(idx), idx.ids[2]
    (1, -1, 3, 'c')
    >>> idx.remove("b"), "b" in idx, list(idx.ids)
    (1, False, ['a', None, 'c'])
    >>> idx.add("d"), idx.capacity  # the freed row is reused
    (1, 3)
    """

    _EMPTY = -1
    _DELETED = -2  # tombstone: probing goes on past it, insertion may reuse it
    #: most ids the lookup cache holds before it is emptied
    CACHE_IDS = 1 << 15

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str | None] = []
        self._free: list[int] = []
        self._n = 0
        self._used = 0  # slots that are not _EMPTY (live rows + tombstones)
        self._slots = array("i", [self._EMPTY]) * 8
        self._cache: dict[str, int] = {}  # id -> row of live ids, bounded
        self.generation = 0
        # (UTF-8 bytes, end offsets) of the first rows as the last to_arrays packed
        # them, and the rows among those freed or reused since (see to_arrays). Kept
        # only once a snapshot asked for it (a trainer's index, not a server's): about
        # 16 bytes per id.
        self._packed: tuple[np.ndarray, np.ndarray] | None = None
        self._dirty: set[int] = set()
        self.add_many(list(ids))

    def __len__(self) -> int:
        return self._n

    def __contains__(self, key: object) -> bool:
        return self._find(key) >= 0

    @property
    def capacity(self) -> int:
        """Number of rows ever allocated (live + freed); arrays are sized to this."""
        return len(self._ids)

    @property
    def ids(self) -> list[str | None]:
        """Id of each row (``None`` for a freed row). Do not mutate."""
        return self._ids

    def _find(self, key: object) -> int:
        slots, ids = self._slots, self._ids
        mask = len(slots) - 1
        i = hash(key) & mask
        while True:
            row = slots[i]
            if row == -1:
                return -1
            if row >= 0 and ids[row] == key:
                return row
            i = (i + 1) & mask

    def get(self, key: str) -> int:
        """Row of ``key``, or -1 when unknown."""
        return self._find(key)

    def rows(self, keys: Iterable[str]) -> np.ndarray:
        """Rows of ``keys`` (-1 for unknown ones) as an int64 array."""
        keys = keys if isinstance(keys, list) else list(keys)
        return np.asarray(self._lookup(keys, add=False), np.int64)

    def _lookup(self, keys: list[str], add: bool) -> list[int]:
        """Rows of ``keys`` through the cache; misses are probed (``add``: added, in
        order of first appearance) and cached."""
        cache = self._cache
        got: list[int | None] = list(map(cache.get, keys))
        if None not in got:
            return got  # type: ignore[return-value]
        limit = self.CACHE_IDS
        if len(cache) >= limit:
            cache.clear()
        probe = self.add if add else self._find
        for j, row in enumerate(got):
            if row is None:
                key = keys[j]
                row = got[j] = probe(key)
                if row >= 0 and len(cache) < limit:
                    cache[key] = row
        return got  # type: ignore[return-value]

    def _rehash(self, size: int) -> None:
        """Rebuild the table at ``size`` slots from the live ids, in rounds of array
        operations instead of one Python probe loop per id.

        Each round, every id not yet placed claims the slot it has probed to; the
        first claimant of a free slot takes it, the others step on. An id only steps
        past slots that are taken, so a lookup probing from its home slot finds it.
        """
        ids = self._ids
        if self._n == len(ids):  # no freed rows
            live: list[str] = ids  # type: ignore[assignment]
            rows = np.arange(len(ids), dtype=np.intc)
        else:
            rows = np.flatnonzero([k is not None for k in ids]).astype(np.intc)
            live = [k for k in ids if k is not None]
        pos = np.fromiter(map(hash, live), np.int64, count=len(live))
        mask = size - 1
        pos &= mask
        slots = np.full(size, self._EMPTY, np.intc)
        pending = np.arange(len(live))
        while len(pending):
            p = pos[pending]
            free = slots[p] == self._EMPTY
            taken, first = np.unique(p[free], return_index=True)
            winners = pending[free][first]
            slots[taken] = rows[winners]
            left = np.ones(len(pending), bool)
            left[np.flatnonzero(free)[first]] = False
            pending = pending[left]
            pos[pending] = (pos[pending] + 1) & mask
        self._slots = array("i", slots.tobytes())
        self._used = len(live)

    def add(self, key: str) -> int:
        # One probe both looks the key up and finds its slot (the first tombstone on
        # the way, else the empty slot that ends the chain).
        slots, ids = self._slots, self._ids
        mask = len(slots) - 1
        i = hash(key) & mask
        reuse = -1
        while True:
            row = slots[i]
            if row == -1:
                break
            if row >= 0:
                if ids[row] == key:
                    return row
            elif reuse < 0:
                reuse = i
            i = (i + 1) & mask
        if self._free:
            row = self._free.pop()
            ids[row] = key
            if self._packed is not None:
                self._dirty.add(row)
        else:
            row = len(ids)
            ids.append(key)
        self._n += 1
        if reuse >= 0:
            slots[reuse] = row
        elif 2 * (self._used + 1) > len(slots):
            # Grow only when live rows need it; otherwise just sweep the tombstones.
            # At most a third full afterwards, so the next rehash is >= size/6 adds away.
            size = len(slots)
            while 3 * (self._n + 1) > size:
                size *= 2
            self._rehash(size)
        else:
            slots[i] = row
            self._used += 1
        return row

    def add_many(self, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        """Rows of ``keys``, adding the unknown ones in order of first appearance."""
        keys = keys if isinstance(keys, list) else list(keys)
        return np.asarray(self._lookup(keys, add=True), np.int64)

    def remove(self, key: str) -> int:
        """Forget ``key``; its row is freed for reuse. Returns the freed row."""
        slots, ids = self._slots, self._ids
        mask = len(slots) - 1
        i = hash(key) & mask
        while True:
            row = slots[i]
            if row == self._EMPTY:
                raise KeyError(key)
            if row >= 0 and ids[row] == key:
                break
            i = (i + 1) & mask
        slots[i] = self._DELETED
        ids[row] = None
        if self._packed is not None:
            self._dirty.add(row)
        self._cache.pop(key, None)
        self._free.append(row)
        self._n -= 1
        self.generation += 1
        return row

    def remove_many(self, keys: Iterable[str]) -> list[int]:
        """:meth:`remove` those of ``keys`` held here; returns their freed rows."""
        return [self.remove(k) for k in keys if k in self]

    def live_mask(self) -> np.ndarray:
        """Boolean mask over ``capacity`` rows, True where the row holds an id."""
        if self._n == len(self._ids):  # no freed row
            return np.ones(len(self._ids), bool)
        return np.fromiter((k is not None for k in self._ids), dtype=bool, count=len(self._ids))

    # State: the row order is the state (freed rows stored as empty strings).
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The ids in row order, packed; only rows added since the last call are packed
        anew, and rows freed or reused since are spliced into the last packing (a
        trainer bounding its users frees rows between every two snapshots)."""
        data, ends = self._packed or (np.zeros(0, np.uint8), np.zeros(0, np.int64))
        dirty, self._dirty = sorted(r for r in self._dirty if r < len(ends)), set()
        if len(dirty) > len(ends) // 8:  # many rows changed: pack it all again
            data, ends = np.zeros(0, np.uint8), np.zeros(0, np.int64)
        elif dirty:
            data, ends = self._splice(data, ends, dirty)
        data, ends = self._packed = append_packed(
            (data, ends), ["" if k is None else k for k in self._ids[len(ends):]])
        return {f"{prefix}.data": data, f"{prefix}.offsets": ends}

    def _splice(self, data: np.ndarray, ends: np.ndarray, rows: list[int]
                ) -> tuple[np.ndarray, np.ndarray]:
        """``(data, ends)`` with ``rows`` (sorted) packed again from today's ids."""
        new = ["" if self._ids[r] is None else self._ids[r] for r in rows]
        new_data, new_ends = pack_strings(new)  # type: ignore[arg-type]
        lengths = np.diff(ends, prepend=0)
        starts = ends - lengths
        pieces, at = [], 0
        lo = np.concatenate(([0], new_ends[:-1]))
        for k, r in enumerate(rows):
            pieces.append(data[at:starts[r]])
            pieces.append(new_data[lo[k]:new_ends[k]])
            at = int(ends[r])
        pieces.append(data[at:])
        lengths[rows] = new_ends - lo
        return np.concatenate(pieces), np.cumsum(lengths)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> IdIndex:
        keys = unpack_strings(arrays[f"{prefix}.data"], arrays[f"{prefix}.offsets"])
        idx = cls()
        for row, key in enumerate(keys):
            if key == "":
                idx._ids.append(None)
                idx._free.append(row)
            else:
                idx._ids.append(key)
        idx._n = len(idx._ids) - len(idx._free)
        size = 8
        while 3 * (idx._n + 1) > size:
            size *= 2
        idx._rehash(size)
        # Reuse lowest freed rows first, as the live index would have (LIFO of frees
        # is not recoverable; any order is valid since rows are only reused).
        idx._free.reverse()
        return idx


def grow_rows(
    arr: np.ndarray,
    needed: int,
    fill: np.ndarray | float = 0.0,
    *,
    min_capacity: int = 1,
    limit: int | None = None,
) -> np.ndarray:
    """Return ``arr`` with at least ``needed`` rows, doubling capacity; new rows = ``fill``.

    ``fill`` may be an array of the new rows' values (e.g. random initial factors).
    Capacity starts at ``min_capacity`` and, with ``limit``, doubles no further than
    ``max(limit, needed)``.

    >>> grow_rows(np.zeros((2, 3)), 3).shape
    (4, 3)
    >>> grow_rows(np.zeros(0), 1, min_capacity=16).shape, grow_rows(np.zeros(8), 9, limit=10).shape
    ((16,), (10,))
    """
    cap = len(arr)
    if needed <= cap:
        return arr
    new_cap = max(cap, min_capacity)
    while new_cap < needed:
        new_cap *= 2
    if limit is not None:
        new_cap = max(min(new_cap, limit), needed)
    out = np.empty((new_cap, *arr.shape[1:]), dtype=arr.dtype)
    out[:cap] = arr
    out[cap:] = fill
    return out


def pack_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pack strings into one uint8 UTF-8 buffer plus int64 end offsets.

    Lets string ids live in safetensors/npz files without pickle.

    >>> data, off = pack_strings(["ab", "", "ç"])
    >>> unpack_strings(data, off)
    ['ab', '', 'ç']
    """
    text = "".join(strings)
    if text.isascii():  # one encode; a character is a byte
        data = np.frombuffer(text.encode("ascii"), dtype=np.uint8).copy()
        return data, np.fromiter(map(len, strings), np.int64, count=len(strings)).cumsum()
    encoded = list(map(str.encode, strings))  # UTF-8
    offsets = np.fromiter(map(len, encoded), np.int64, count=len(encoded)).cumsum()
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return data, offsets


def append_packed(packed: tuple[np.ndarray, np.ndarray], strings: Sequence[str]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``packed`` (a :func:`pack_strings` result) with ``strings`` packed after it.

    >>> unpack_strings(*append_packed(pack_strings(["ab"]), ["", "ç"]))
    ['ab', '', 'ç']
    """
    if not strings:
        return packed
    return concat_packed([packed, pack_strings(strings)])


def concat_packed(parts: Sequence[tuple[np.ndarray, np.ndarray]]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pack_strings` results one after the other, as one (each part's end
    offsets shifted by the bytes before it).

    >>> unpack_strings(*concat_packed([pack_strings(["ab"]), pack_strings([]),
    ...                                pack_strings(["", "ç"])]))
    ['ab', '', 'ç']
    """
    if not parts:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64)
    sizes = [len(data) for data, _ in parts]
    bases = np.cumsum([0, *sizes[:-1]])
    return (np.concatenate([data for data, _ in parts]),
            np.concatenate([ends + base for (_, ends), base in zip(parts, bases, strict=True)]))


def unpack_strings(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    """Inverse of :func:`pack_strings`. ASCII buffers (ids, mostly) decode once and are
    sliced, 1.5x faster than decoding each string.

    >>> unpack_strings(*pack_strings(["i1", "", "i22"])), unpack_strings(*pack_strings([]))
    (['i1', '', 'i22'], [])
    """
    raw = np.asarray(data, dtype=np.uint8).tobytes()
    ends = np.asarray(offsets, dtype=np.int64).tolist()
    if raw.isascii():  # then byte offsets are character offsets
        text = raw.decode("ascii")
        starts = [0, *ends[:-1]] if ends else []
        return [text[a:b] for a, b in zip(starts, ends, strict=True)]
    out: list[str] = []
    start = 0
    for end in ends:
        out.append(raw[start:end].decode("utf-8"))
        start = end
    return out


# --------------------------------------------------------------------------- state


@dataclass
class ModelState:
    """A model's whole state: numeric arrays (no object dtype) plus JSON-able meta.

    ``meta`` always holds ``"class"`` (the registry name) and ``"params"`` (the
    constructor arguments). Arrays are written to safetensors/npz by the snapshot
    writer; nothing here can execute code on load.
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        for name, arr in self.arrays.items():
            if not isinstance(arr, np.ndarray) or arr.dtype == object:
                raise TypeError(f"state array {name!r} must be a numeric numpy array")


# --------------------------------------------------------------------------- helpers


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest finite scores, best first (``argpartition``).

    >>> top_k(np.array([0.1, 3.0, -np.inf, 2.0]), 5).tolist()
    [1, 3, 0]
    """
    finite = np.isfinite(scores)
    n_ok = int(finite.sum())
    if n_ok == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(k, n_ok)
    s = np.where(finite, scores, -np.inf)
    part = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
    order = np.lexsort((part, -s[part]))  # score desc, then row asc: deterministic
    return part[order].astype(np.int64)


@dataclass(frozen=True, slots=True)
class _PackedHistory:
    """Some users' histories as :meth:`UserHistory.to_arrays` packs them."""

    users: list[str]
    u_data: np.ndarray
    u_ends: np.ndarray
    lengths: np.ndarray
    i_data: np.ndarray
    i_ends: np.ndarray

    def keep(self, mask: np.ndarray) -> _PackedHistory:
        """The users where the boolean ``mask`` is true, in order, with their items
        (byte masks over the packed data: no per-user work)."""
        u_lens = np.diff(self.u_ends, prepend=0)
        i_lens = np.diff(self.i_ends, prepend=0)
        item_mask = np.repeat(mask, self.lengths)
        return _PackedHistory(
            list(itertools.compress(self.users, mask.tolist())),
            self.u_data[np.repeat(mask, u_lens)],
            np.cumsum(u_lens[mask]),
            self.lengths[mask],
            self.i_data[np.repeat(item_mask, i_lens)],
            np.cumsum(i_lens[item_mask]),
        )

    def extend(self, more: _PackedHistory) -> _PackedHistory:
        """This packing with ``more`` after it."""
        u_data, u_ends = concat_packed([(self.u_data, self.u_ends), (more.u_data, more.u_ends)])
        i_data, i_ends = concat_packed([(self.i_data, self.i_ends), (more.i_data, more.i_ends)])
        return _PackedHistory(self.users + more.users, u_data, u_ends,
                              np.concatenate((self.lengths, more.lengths)), i_data, i_ends)


class UserHistory:
    """Each user's most recent distinct items, bounded per user, in event order.

    Shared by the evaluator (what to exclude and what to use as query context),
    the trainer (kept in snapshots) and the server (live context from the topic).

    >>> h = UserHistory(max_items=3)
    >>> for it in ["a", "b", "a", "c", "d"]:
    ...     h.append("u", it)
    >>> h.get("u")
    ['a', 'c', 'd']
    """

    def __init__(self, max_items: int = 200, max_users: int | None = None) -> None:
        self.max_items = max_items
        #: most users held; beyond it the least recently active one is dropped
        self.max_users = max_users
        #: when a list, the users dropped for ``max_users`` are appended to it (the
        #: trainer drains it with :meth:`take_evicted` and forgets them elsewhere too)
        self.evicted: list[str] | None = None
        # user -> its items, oldest first, as the keys of a dict: membership and
        # removal in O(1) (a deque scanned the whole history, which evaluating
        # unbounded histories paid on every event)
        self._items: OrderedDict[str, dict[str, None]] = OrderedDict()
        # Once a snapshot asked (to_arrays), the last packing -- its users in order, the
        # packed users, lengths and items -- and the users touched or dropped since.
        # Every change moves its user to the end (or drops it), so the untouched users
        # keep their order in front of the touched ones: a snapshot repacks only those.
        # (Memory: the packed arrays once more, plus a list of the users.)
        self._packed: _PackedHistory | None = None
        self._dirty: set[str] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, user: object) -> bool:
        return user in self._items

    def append(self, user: str, item: str) -> None:
        if self._dirty is not None:
            self._dirty.add(user)
        q = self._items.get(user)
        if q is None:
            q = self._items[user] = {}
            if self.max_users is not None and len(self._items) > self.max_users:
                self._drop_oldest()
        else:
            self._items.move_to_end(user)
            q.pop(item, None)
        q[item] = None
        if len(q) > self.max_items:
            del q[next(iter(q))]

    def extend(self, users: Iterable[str], items: Iterable[str]) -> None:
        for u, i in zip(users, items, strict=True):
            self.append(u, i)

    def advance(
        self, users: Sequence[str] | np.ndarray, items: Sequence[str] | np.ndarray,
        capture: Sequence[bool] | None = None,
    ) -> tuple[np.ndarray, dict[int, list[str]]]:
        """:meth:`extend`, telling for each event whether it was new (:meth:`is_new`
        just before it) and, at the positions ``capture`` marks where it was, the user's
        history just before it -- what a prequential evaluator needs, in one pass.

        >>> h = UserHistory()
        >>> new, before = h.advance(["u", "u", "u", "v"], ["a", "b", "a", "a"],
        ...                         [True, True, True, True])
        >>> new.tolist(), before
        ([False, True, False, False], {1: ['a']})
        """
        table = self._items
        get, to_end = table.get, table.move_to_end
        max_items, max_users = self.max_items, self.max_users
        flags: list[bool] = []
        new_flag = flags.append
        before: dict[int, list[str]] = {}
        marks = [False] * len(users) if capture is None else capture
        if self._dirty is not None:
            self._dirty.update(users)
        for pos, (user, item, mark) in enumerate(zip(users, items, marks, strict=True)):
            q = get(user)
            if q is None:
                q = table[user] = {}
                if max_users is not None and len(table) > max_users:
                    self._drop_oldest()
                new_flag(False)
            else:
                to_end(user)
                if item in q:
                    del q[item]
                    new_flag(False)
                elif q:
                    new_flag(True)
                    if mark:
                        before[pos] = list(q)
                else:
                    new_flag(False)
            q[item] = None
            if len(q) > max_items:
                del q[next(iter(q))]
        return np.asarray(flags, bool), before

    def get(self, user: str) -> list[str]:
        q = self._items.get(user)
        return list(q) if q is not None else []

    def limit_users(self, max_users: int | None) -> None:
        """Set :attr:`max_users`, dropping the least recently active users beyond it now
        (reported in :attr:`evicted` like any other drop)."""
        self.max_users = max_users
        while max_users is not None and len(self._items) > max_users:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        """Drop the least recently active user (into :attr:`evicted` when it is a list)."""
        gone = self._items.popitem(last=False)[0]
        if self._dirty is not None:
            self._dirty.add(gone)
        if self.evicted is not None:
            self.evicted.append(gone)

    def forget(self, users: Iterable[str]) -> None:
        """Drop ``users`` and their items."""
        table = self._items
        dirty = self._dirty
        for u in users:
            if table.pop(u, None) is not None and dirty is not None:
                dirty.add(u)

    def take_evicted(self) -> list[str]:
        """The users dropped for ``max_users`` since the last call that are still gone
        (one dropped and then seen again is back), in order; empties :attr:`evicted`.

        >>> h = UserHistory(max_users=2)
        >>> h.evicted = []
        >>> for u in ["a", "b", "c", "d", "a"]:
        ...     h.append(u, "x")
        >>> h.take_evicted(), list(h._items), h.evicted
        (['b', 'c'], ['d', 'a'], [])
        """
        if not self.evicted:
            return []
        gone, self.evicted = self.evicted, []
        table = self._items
        return [u for u in dict.fromkeys(gone) if u not in table]

    def has(self, user: str, item: str) -> bool:
        q = self._items.get(user)
        return q is not None and item in q

    def is_new(self, user: str, item: str) -> bool:
        """Whether ``user`` has history and ``item`` is not in it (an evaluable event)."""
        q = self._items.get(user)
        return bool(q) and item not in q  # type: ignore[operator]

    def to_arrays(self, prefix: str = "history") -> dict[str, np.ndarray]:
        """Every user's items, packed, in the table's order. From the second call on
        only the users touched since the last call are packed again (see ``_packed``).
        The arrays are kept for the next call: do not mutate them."""
        packed, dirty = self._packed, self._dirty
        if packed is None or dirty is None:
            packed = self._pack(list(self._items))
        elif dirty:
            clean = ~np.fromiter(map(dirty.__contains__, packed.users), bool,
                                 count=len(packed.users))
            fresh_n = len(self._items) - int(clean.sum())
            fresh = list(itertools.islice(reversed(self._items), fresh_n))[::-1]
            packed = packed.keep(clean).extend(self._pack(fresh))
        self._packed, self._dirty = packed, set()
        return {
            f"{prefix}.users.data": packed.u_data,
            f"{prefix}.users.offsets": packed.u_ends,
            f"{prefix}.items.data": packed.i_data,
            f"{prefix}.items.offsets": packed.i_ends,
            f"{prefix}.lengths": packed.lengths,
        }

    def _pack(self, users: list[str]) -> _PackedHistory:
        """``users`` and their items, packed (C-level walks over the table)."""
        table = self._items
        qs = list(map(table.__getitem__, users))
        lengths = np.fromiter(map(len, qs), np.int64, count=len(users))
        u_data, u_ends = pack_strings(users)
        i_data, i_ends = pack_strings(list(itertools.chain.from_iterable(qs)))
        return _PackedHistory(users, u_data, u_ends, lengths, i_data, i_ends)

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, np.ndarray],
        prefix: str = "history",
        max_items: int = 200,
        max_users: int | None = None,
    ) -> UserHistory:
        h = cls(max_items=max_items, max_users=max_users)
        users = unpack_strings(arrays[f"{prefix}.users.data"], arrays[f"{prefix}.users.offsets"])
        items = unpack_strings(arrays[f"{prefix}.items.data"], arrays[f"{prefix}.items.offsets"])
        pos = 0
        for u, n in zip(users, arrays[f"{prefix}.lengths"].tolist(), strict=True):
            h._items[u] = dict.fromkeys(items[max(pos, pos + n - max_items) : pos + n])
            pos += n
        return h


# --------------------------------------------------------------------------- protocol

#: kinds of hyperparameter drift adaptation may change (:meth:`OnlineModel.adaptable_params`):
#: ``"half_life"`` (event-time seconds; shorter forgets faster) and ``"learning_rate"``
ADAPTABLE_KINDS: tuple[str, ...] = ("half_life", "learning_rate")


class OnlineModel(ABC):
    """Base class and protocol of every liverec model.

    Subclasses set ``name`` (the registry key, e.g. ``"itemknn"``), keep their
    constructor arguments as attributes of the same name, own an ``items`` and a
    ``users`` :class:`IdIndex`, and implement the abstract methods. ``score``,
    ``recommend``, ``get_params`` and ``clone`` come for free.
    """

    name: ClassVar[str] = "base"
    #: hyperparameter name -> kind (one of :data:`ADAPTABLE_KINDS`) that drift
    #: adaptation may change at run time; see :meth:`adaptable_params`
    adaptable: ClassVar[Mapping[str, str]] = {}
    items: IdIndex
    users: IdIndex

    # -- learning
    @abstractmethod
    def learn(self, batch: Batch) -> None:
        """Learn a mini-batch in place, in the batch's (event) order."""

    # -- scoring
    @abstractmethod
    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        """A float32 score for every item row (length ``self.items.capacity``).

        ``history`` is the caller's view of the user's recent items, oldest first,
        most recent last (the evaluator's and the server's live context). When it
        is empty a model may fall back on what it learned about ``user`` itself.
        Higher is better; ``-inf`` marks rows that must never be recommended
        (freed rows). Unknown users get a sensible non-personal score or all
        zeros; they must not raise.
        """

    def score_many(
        self, users: Sequence[str], histories: Sequence[Sequence[str]]
    ) -> np.ndarray:
        """``score_all`` of several queries against the current state, stacked.

        Returns float32 ``(len(users), items.capacity)``: row ``r`` equals
        ``score_all(users[r], histories[r])``. The model must not change between
        the queries (the evaluator scores a mini-batch before it is learned), which
        is what lets subclasses share work across rows: one matrix product for
        factor models, one sparse gather for count models. This default loops.
        """
        if len(users) != len(histories):
            raise ValueError("score_many needs one history per user")
        out = np.empty((len(users), self.items.capacity), np.float32)
        for r, (user, hist) in enumerate(zip(users, histories, strict=True)):
            out[r] = self.score_all(user, hist)
        return out

    @abstractmethod
    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        """Up to ``k`` items most like ``item`` (never ``item`` itself), best first."""

    # -- state
    @abstractmethod
    def get_state(self) -> ModelState:
        """Export the whole state; ``type(self).from_state(s)`` must rebuild it exactly."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: ModelState) -> Self:
        """Rebuild a model from :meth:`get_state`'s output."""

    # -- per-user state
    def forget_users(self, users: Sequence[str]) -> None:
        """Drop ``users`` and all the model learned about them alone (the trainer's
        bound on users; a partition moving to another trainer); one seen again starts
        afresh. Item-side state keeps what their events taught it. This default drops
        them from the user index: a model with more per-user state extends it."""
        self.users.remove_many(users)

    # -- sizes
    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    # -- shared behaviour
    def score(
        self, user: str, items: Sequence[str], history: Sequence[str] = ()
    ) -> np.ndarray:
        """Scores of candidate ``items`` for ``user``; unknown items get ``-inf``."""
        all_scores = self.score_all(user, history)
        rows = self.items.rows(items)
        out = np.full(len(rows), -np.inf, dtype=np.float32)
        known = rows >= 0
        out[known] = all_scores[rows[known]]
        return out

    def recommend(
        self,
        user: str,
        k: int = 10,
        history: Sequence[str] = (),
        exclude: Collection[str] = (),
    ) -> list[tuple[str, float]]:
        """The top ``k`` (item, score) for ``user``, never an item in ``exclude``."""
        scores = self.score_all(user, history).astype(np.float32, copy=True)
        if len(scores) == 0:
            return []
        ex = self.items.rows(exclude)
        scores[ex[ex >= 0]] = -np.inf
        ids = self.items.ids
        return [(ids[r], float(scores[r])) for r in top_k(scores, k)]

    # -- helpers for subclasses
    def _finish_scores(
        self, scores: np.ndarray, popularity: np.ndarray | None = None, tiebreak: float = 0.0
    ) -> np.ndarray:
        """``score_all``'s result: float32 over ``items.capacity``, freed rows ``-inf``.

        With ``tiebreak > 0`` a sliver of normalised ``popularity`` is added so that
        ties (notably all-zero rows for a user with no signal) go to popular items.
        """
        if tiebreak and popularity is not None and len(popularity) and popularity.max() > 0:
            scores = scores + tiebreak * popularity / popularity.max()
        out = np.array(scores, dtype=np.float32)  # always a copy: callers may write to it
        if len(self.items) < self.items.capacity:
            out[~self.items.live_mask()] = -np.inf
        return out

    def _tail_rows(self, histories: Sequence[Sequence[str]], n_last: int) -> list[np.ndarray]:
        """Item rows (-1: unknown) of the last ``n_last`` items of every history.

        One :meth:`IdIndex.rows` call for all of them, so an item shared by many
        queries (a user's consecutive events) is looked up once.
        """
        tails = [list(h)[-n_last:] if n_last > 0 else [] for h in histories]
        flat = self.items.rows([i for t in tails for i in t])
        cuts = np.cumsum([len(t) for t in tails])[:-1]
        return np.split(flat, cuts) if len(tails) else []

    def _fold_in_groups(self, histories: Sequence[Sequence[str]], last: int
                        ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """The known rows of each history's ``last`` items (0: the whole history, as a
        ``[-0:]`` slice gives), grouped by how many there are: ``(folds, groups)`` with
        ``folds`` the queries that have any and, per count k, ``(queries, rows)`` where
        ``rows`` is (queries, k) in history order -- so a factor model takes one mean
        per group, the same figures as each query's own mean."""
        tails = self._tail_rows(histories, last or max(map(len, histories), default=0))
        counts = np.fromiter((int((t >= 0).sum()) for t in tails), np.int64, count=len(tails))
        groups = []
        for k in np.unique(counts[counts > 0]).tolist():
            sel = np.flatnonzero(counts == k)
            groups.append((sel, np.stack([tails[r][tails[r] >= 0] for r in sel.tolist()])))
        return counts > 0, groups

    def _finish_many(
        self, scores: np.ndarray, popularity: np.ndarray | None = None, tiebreak: float = 0.0
    ) -> np.ndarray:
        """:meth:`_finish_scores` of every row of ``scores`` (``score_many``'s result)."""
        if tiebreak and popularity is not None and len(popularity) and popularity.max() > 0:
            scores = scores + tiebreak * popularity / popularity.max()
        out = np.array(scores, dtype=np.float32)
        if len(self.items) < self.items.capacity:
            out[:, ~self.items.live_mask()] = -np.inf
        return out

    def _similar_from(self, row: int, scores: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Top ``k`` items by ``scores`` (in place: ``row`` and non-positive ones dropped)."""
        scores[row] = 0.0
        scores[scores <= 0] = -np.inf
        ids = self.items.ids
        return [(ids[r], float(scores[r])) for r in top_k(scores, k)]

    # -- drift-adaptable hyperparameters
    def adaptable_params(self) -> dict[str, str]:
        """Hyperparameters drift adaptation may change: name -> kind.

        Kinds are :data:`ADAPTABLE_KINDS`. Only parameters whose current value is a
        positive number are listed (a half-life of ``None`` means "no decay" and
        has nothing to shorten). The trainer scales them while a drift alarm holds
        and restores them afterwards, through :meth:`set_param`.
        """
        out: dict[str, str] = {}
        for pname, kind in self.adaptable.items():
            value = getattr(self, pname, None)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                out[pname] = kind
        return out

    def set_param(self, name: str, value: float) -> None:
        """Set an adaptable hyperparameter (one :meth:`adaptable_params` lists) in place.

        Takes effect from the next ``learn``/``score`` call; the learned state is
        kept. Raises ``KeyError`` for any other parameter and ``ValueError`` for a
        value that is not a positive finite number.
        """
        if name not in self.adaptable:
            raise KeyError(f"{type(self).__name__} has no adaptable parameter {name!r}")
        v = float(value)
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        setattr(self, name, v)

    def shared_components(self) -> Mapping[str, OnlineModel]:
        """Other models this one reads but does not learn (a bound hybrid's components).

        Such a model must learn each batch *before* the models it reads, so that it
        sees their state as of the batch's start, as it would with private copies;
        :func:`learning_order` puts it first. Empty for ordinary models.
        """
        return {}

    def item_vectors(self) -> np.ndarray | None:
        """Item embedding matrix (rows aligned to ``self.items``) if the model has one.

        Used for embedding drift between snapshots; ``None`` for models without one.
        """
        return None

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, read back from attributes of the same name."""
        sig = inspect.signature(type(self).__init__)
        return {
            p: getattr(self, p)
            for p in sig.parameters
            if p != "self" and sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD
        }

    def clone(self, **overrides: Any) -> Self:
        """A fresh, unfitted model with the same hyperparameters."""
        params = {**self.get_params(), **overrides}
        return type(self)(**params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def learning_order(models: Mapping[str, OnlineModel]) -> list[str]:
    """Names of ``models`` in the order they must learn a batch.

    A model that reads others it does not learn (:meth:`OnlineModel.shared_components`,
    a bound hybrid) learns before them; everything else keeps its order.

    >>> class M:  # any object with shared_components()
    ...     def __init__(self, shared=None): self.shared = shared or {}
    ...     def shared_components(self): return self.shared
    >>> pop = M()
    >>> learning_order({"popularity": pop, "hybrid": M({"popularity": pop})})
    ['hybrid', 'popularity']
    """
    readers = [n for n, m in models.items() if m.shared_components()]
    return readers + [n for n in models if n not in readers]
