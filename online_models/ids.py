"""String ids as dense rows (:class:`IdIndex`), and string columns packed for files.

Every model keeps its users and items in :class:`IdIndex` es; snapshots store string
ids packed into one UTF-8 buffer plus end offsets (:func:`pack_strings`), never pickled.
:func:`grow_rows` grows the arrays that are indexed by those rows.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "IdIndex",
    "append_packed",
    "concat_packed",
    "grow_rows",
    "pack_strings",
    "unpack_strings",
]


class IdIndex:
    """Maps string ids to dense rows ``0..n-1`` and back; grows as ids arrive.

    Rows are stable for the life of the index. Models that expire ids call
    :meth:`remove`, which frees the row for reuse. Freeing a row and giving it to a
    new id both bump ``generation``, so that callers holding row mappings know their
    map is stale (a map that only appends rows past its end would leave a reused row
    pointing nowhere); :meth:`changed_since` tells them which rows to map again
    instead of all of them.

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
    >>> g = idx.generation
    >>> idx.add("d"), idx.capacity, idx.generation == g + 1  # the freed row is reused
    (1, 3, True)
    """

    _EMPTY = -1
    _DELETED = -2  # tombstone: probing goes on past it, insertion may reuse it
    #: most ids the lookup cache holds before it is emptied
    CACHE_IDS = 1 << 15
    #: most row changes :meth:`changed_since` remembers (older ones: map everything)
    CHANGE_LOG = 1 << 16

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str | None] = []
        # Freed rows, the next to reuse last (snapshots keep this order: a restored
        # index must give new ids the rows the live one would)
        self._free = array("q")
        self._n = 0
        self._used = 0  # slots that are not _EMPTY (live rows + tombstones)
        self._slots = array("i", [self._EMPTY]) * 8
        self._cache: dict[str, int] = {}  # id -> row of live ids, bounded
        self.generation = 0
        # The rows freed or reused at generations _log_base + 1, _log_base + 2, ...
        # (8 bytes each: an index that forgets users logs every forgotten row)
        self._log = array("q")
        self._log_base = 0
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
        """Row of ``key``, or -1 when unknown (check it: ``arr[-1]`` is the last row's
        value, another id's state)."""
        return self._find(key)

    def rows(self, keys: Iterable[str]) -> np.ndarray:
        """Rows of ``keys`` (-1 for unknown ones: mask them before indexing) as an
        int64 array."""
        keys = keys if isinstance(keys, list) else list(keys)
        return np.asarray(self._lookup(keys, add=False), np.int64)

    def _lookup(self, keys: list[str], add: bool) -> list[int]:
        """Rows of ``keys`` through the cache; misses are probed (``add``: added, in
        order of first appearance) and cached. Only the misses are visited in Python
        (``list.index`` finds them), and an id repeated among them is probed once."""
        cache = self._cache
        got: list[int | None] = list(map(cache.get, keys))
        if None not in got:
            return got  # type: ignore[return-value]
        limit = self.CACHE_IDS
        if len(cache) >= limit:
            cache.clear()
        probe = self.add if add else self._find
        j = got.index(None)
        while True:
            key = keys[j]
            row = cache.get(key)
            if row is None:
                row = probe(key)
                if row >= 0 and len(cache) < limit:
                    cache[key] = row
            got[j] = row
            try:
                j = got.index(None, j + 1)
            except ValueError:
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
            self._changed(row)
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
        self._changed(row)
        return row

    def _changed(self, row: int) -> None:
        """A new generation: ``row`` was freed or given to a new id."""
        self.generation += 1
        log = self._log
        log.append(row)
        if len(log) > self.CHANGE_LOG:
            drop = len(log) // 2
            del log[:drop]
            self._log_base += drop

    def changed_since(self, generation: int) -> list[int] | None:
        """Rows freed or given to a new id after ``generation`` (with repeats), or
        None when that is no longer known (a generation too old, or not this index's):
        then every row may have changed.

        >>> idx = IdIndex(["a", "b", "c"])
        >>> g = idx.generation
        >>> _ = idx.remove("b"), idx.add("d"), idx.add("e")
        >>> idx.changed_since(g), idx.changed_since(idx.generation), idx.changed_since(-1)
        ([1, 1], [], None)
        """
        if not self._log_base <= generation <= self.generation:
            return None
        return self._log[generation - self._log_base:].tolist()

    def remove_many(self, keys: Iterable[str]) -> list[int]:
        """:meth:`remove` those of ``keys`` held here; returns their freed rows."""
        return [self.remove(k) for k in keys if k in self]

    def live_mask(self) -> np.ndarray:
        """Boolean mask over ``capacity`` rows, True where the row holds an id."""
        if self._n == len(self._ids):  # no freed row
            return np.ones(len(self._ids), bool)
        return np.fromiter((k is not None for k in self._ids), dtype=bool, count=len(self._ids))

    # State: the ids in row order (freed rows packed as empty strings) and the freed
    # rows in the order they are reused (``{prefix}.free``: which rows are freed, so
    # that "" may be an id, and which a new id gets next).
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The ids in row order, packed, and the free rows (int64, the next to reuse
        last); only rows added since the last call are packed anew, and rows freed or
        reused since are spliced into the last packing (a trainer bounding its users
        frees rows between every two snapshots).

        >>> idx = IdIndex(["a", "", "b", "c"])
        >>> _ = idx.remove("a"), idx.remove("c")
        >>> arrays = idx.to_arrays("x")
        >>> arrays["x.free"].tolist()
        [0, 3]
        >>> restored = IdIndex.from_arrays(arrays, "x")
        >>> restored.ids
        [None, '', 'b', None]
        >>> restored.add("d"), restored.add("e"), idx.add("d"), idx.add("e")
        (3, 0, 3, 0)
        """
        data, ends = self._packed or (np.zeros(0, np.uint8), np.zeros(0, np.int64))
        dirty, self._dirty = sorted(r for r in self._dirty if r < len(ends)), set()
        if len(dirty) > len(ends) // 8:  # many rows changed: pack it all again
            data, ends = np.zeros(0, np.uint8), np.zeros(0, np.int64)
        elif dirty:
            data, ends = self._splice(data, ends, dirty)
        data, ends = self._packed = append_packed(
            (data, ends), ["" if k is None else k for k in self._ids[len(ends):]])
        free = np.frombuffer(self._free, np.int64).copy() if self._free else np.zeros(0, np.int64)
        return {f"{prefix}.data": data, f"{prefix}.offsets": ends, f"{prefix}.free": free}

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
        """The index :meth:`to_arrays` packed: the same ids in the same rows, the same
        rows free, reused in the same order.

        Snapshots from before ``{prefix}.free`` was written mark a freed row only by
        an empty string, and their order of reuse is lost: those load with every ""
        freed, the lowest reused first.
        """
        keys: list[str | None] = unpack_strings(  # type: ignore[assignment]
            arrays[f"{prefix}.data"], arrays[f"{prefix}.offsets"])
        idx = cls()
        free = arrays.get(f"{prefix}.free")
        if free is None:  # an older snapshot
            rows = [r for r, k in enumerate(keys) if k == ""]
            rows.reverse()
        else:
            given = np.asarray(free, np.int64)
            if len(np.unique(given)) != len(given) or (
                    len(given) and not 0 <= given.min() <= given.max() < len(keys)):
                raise ValueError(f"{prefix}.free must list distinct rows of {prefix}")
            rows = given.tolist()
        for r in rows:
            keys[r] = None
        idx._ids = keys
        idx._free = array("q", rows)
        idx._n = len(keys) - len(rows)
        size = 8
        while 3 * (idx._n + 1) > size:
            size *= 2
        idx._rehash(size)
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
