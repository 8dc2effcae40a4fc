"""Each user's recent distinct items (:class:`UserHistory`).

Shared by the prequential evaluator (what to exclude and what to use as query context),
the trainer (kept in snapshots, packed incrementally) and the server (live context
from the topic).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from online_models.ids import concat_packed, pack_strings, unpack_strings

__all__ = ["UserHistory"]


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
        capture: Sequence[bool] | None = None, same_group: Sequence[bool] | None = None,
    ) -> tuple[np.ndarray, dict[int, list[str]]]:
        """:meth:`extend`, telling for each event whether it was new (:meth:`is_new`
        just before it) and, at the positions ``capture`` marks where it was, the user's
        history just before it -- what a prequential evaluator needs, in one pass.

        ``same_group`` marks the events that arrive *together* with their user's
        previous event in this call (a basket, a page of ratings: same user, same
        timestamp). Such an event is judged against the history before its group: new
        when it is neither in it nor earlier in the group, and its captured history is
        the one before the group.

        >>> h = UserHistory()
        >>> new, before = h.advance(["u", "u", "u", "v"], ["a", "b", "a", "a"],
        ...                         [True, True, True, True])
        >>> new.tolist(), before
        ([False, True, False, False], {1: ['a']})
        >>> new, before = h.advance(["u", "u", "u", "u"], ["c", "d", "c", "b"],
        ...                         [True] * 4, same_group=[False, True, True, True])
        >>> new.tolist(), before
        ([True, True, False, False], {0: ['b', 'a'], 1: ['b', 'a']})
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
        if same_group is not None:
            return self._advance_groups(users, items, marks, same_group)
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

    def _advance_groups(
        self, users: Sequence[str] | np.ndarray, items: Sequence[str] | np.ndarray,
        marks: Sequence[bool], same_group: Sequence[bool],
    ) -> tuple[np.ndarray, dict[int, list[str]]]:
        """:meth:`advance` with ``same_group`` (kept apart: the trainer's path above
        copies no history per event)."""
        table = self._items
        get, to_end = table.get, table.move_to_end
        max_items, max_users = self.max_items, self.max_users
        # Which events begin a group that goes on: only theirs is copied.
        goes_on = [False] * len(users)
        last: dict[str, int] = {}
        for pos, (user, cont) in enumerate(zip(users, same_group, strict=True)):
            if cont and user in last:
                goes_on[last[user]] = True
            last[user] = pos
        flags: list[bool] = []
        before: dict[int, list[str]] = {}
        # Each user's open group: the history before it (as captured, and as a set)
        # and the group's items so far.
        base: dict[str, tuple[list[str], set[str], set[str]]] = {}
        for pos, (user, item, mark, cont) in enumerate(
                zip(users, items, marks, same_group, strict=True)):
            q = get(user)
            group = base.get(user) if cont and q is not None else None
            if group is None:  # a group begins: judged as without groups
                base.pop(user, None)
                new = q is not None and bool(q) and item not in q
                if new and mark and q is not None:
                    before[pos] = list(q)
                if goes_on[pos]:
                    ahead = list(q) if q is not None else []
                    base[user] = (ahead, set(ahead), {item})
            else:  # against the history before the group, and the group's items
                ahead, ahead_set, seen = group
                new = bool(ahead) and item not in ahead_set and item not in seen
                seen.add(item)
                if new and mark:
                    before[pos] = ahead
            flags.append(new)
            if q is None:
                q = table[user] = {}
                if max_users is not None and len(table) > max_users:
                    self._drop_oldest()
            else:
                to_end(user)
                q.pop(item, None)
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
