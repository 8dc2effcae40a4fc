"""The flood guard: bound what one user or one item can put into the models.

The typical attack on a recommender is not a break-in but poisoning: a few accounts
click one item thousands of times so it lands in everybody's top 10. The guard runs
on every de-duplicated batch before evaluation and learning, in event time, and
keeps an event out of learning when

* ``user_rate``: its user already had ``user_events`` learned events within the
  last ``window_s`` seconds (sliding window);
* ``repeat``: the same user already had ``pair_events`` learned events on the same
  item within the window (a purchase funnel view -> click -> cart -> purchase passes
  whole; the 500th click on one item does not);
* ``item_share``: its item already holds ``item_share`` of all events learned within
  the window, and more than ``item_min`` of them.

Windows are sliding-window counters (the current and the previous ``window_s``
bucket, the previous one weighted by how much of it still overlaps), decided event
by event, so the result does not depend on where mini-batch boundaries fall, and the
counters are part of every snapshot. Counters of windows that no event up to
``LATE_WINDOWS`` windows late can read are forgotten once per window, so the tables
(and snapshots) hold the recent windows' keys, not the whole stream's.

A kept-out event still moves the offsets and is counted by reason
(``liverec_trainer_events_capped_total{reason}``): none disappears without a count.

Examples
--------
>>> import numpy as np
>>> g = FloodGuard(FloodSettings(user_events=2, window_s=60, item_share=1.0))
>>> keep, why = g.admit(["u", "u", "u", "v"], ["a", "b", "c", "a"],
...                     np.array([0.0, 1.0, 2.0, 3.0]))
>>> keep.tolist(), why
([True, True, False, True], {'user_rate': 1})
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from online_models.base import pack_strings, unpack_strings

__all__ = ["CAP_REASONS", "FloodGuard", "FloodSettings"]

#: the ``reason`` label values of ``liverec_trainer_events_capped_total``
CAP_REASONS: tuple[str, ...] = ("user_rate", "repeat", "item_share")

#: how many windows late an event may be and still see every count it would have seen
#: with nothing forgotten (counters of older windows are dropped once per window)
LATE_WINDOWS = 2


class FloodSettings(BaseSettings):
    """Flood guard settings (``LIVEREC_FLOOD_<FIELD>``); the defaults leave honest
    traffic alone (a synthetic stream of 100,000 events loses none).

    >>> FloodSettings().user_events
    120
    """

    model_config = SettingsConfigDict(env_prefix="LIVEREC_FLOOD_", extra="ignore")

    enabled: bool = True
    window_s: float = Field(default=60.0, gt=0)
    #: learned events one user may add within the window
    user_events: int = Field(default=120, ge=1)
    #: learned events one user may add on one item within the window
    pair_events: int = Field(default=10, ge=1)
    #: the most of all events learned within the window one item may hold ...
    item_share: float = Field(default=0.05, gt=0, le=1)
    #: ... once it holds more than this many (small streams are not capped)
    item_min: int = Field(default=50, ge=0)
    #: users / (user, item, type) keys remembered (the oldest go first)
    max_keys: int = Field(default=1_000_000, ge=1_000)


class _Windowed:
    """Sliding-window counters per key: (bucket, current count, previous count)."""

    #: a table is swept once it holds this many times the keys its last sweep kept
    #: (and at least ``MIN_SWEEP`` keys): each key is swept O(1) times on average,
    #: where a sweep per window read every key every window (on a stream of few
    #: events per window, every batch)
    GROWTH = 2
    MIN_SWEEP = 256

    def __init__(self) -> None:
        self.state: dict[str, tuple[int, float, float]] = {}
        self._pruned_below = -(2**62)  # keys of older windows are gone
        self._kept = 0  # keys the last sweep kept

    def estimate(self, key: str, bucket: int, frac: float) -> float:
        st = self.state.get(key)
        if st is None:
            return 0.0
        b, cur, prev = st
        if b == bucket:
            return cur + prev * (1.0 - frac)
        if b == bucket - 1:
            return cur * (1.0 - frac)
        return 0.0

    def add(self, key: str, bucket: int, count: float = 1.0) -> None:
        self.add_counts({key: count}, bucket)

    def try_add(self, counts: Mapping[str, float], bucket: int, frac: float, cap: float
                ) -> list[tuple[str, tuple[int, float, float] | None]] | None:
        """:meth:`add_counts` if ``estimate(key) + count <= cap`` for every key, in one
        pass; returns what :meth:`undo` needs to take it back. When a key would pass
        the cap nothing is added (the keys done so far are undone) and None returned."""
        state = self.state
        get, keep = state.get, 1.0 - frac
        done: list[tuple[str, tuple[int, float, float] | None]] = []
        for key, c in counts.items():
            st = get(key)
            if st is None:
                est, new = 0.0, (bucket, c, 0.0)
            else:
                b, cur, prev = st
                if b == bucket:
                    est, new = cur + prev * keep, (b, cur + c, prev)
                elif b == bucket - 1:
                    est, new = cur * keep, (bucket, c, cur)
                else:
                    est, new = 0.0, (bucket, c, 0.0)
            if est + c > cap:
                self.undo(done)
                return None
            state[key] = new
            done.append((key, st))
        return done

    def undo(self, done: list[tuple[str, tuple[int, float, float] | None]]) -> None:
        """Take back a :meth:`try_add` (key order, which pruning follows, included)."""
        state = self.state
        for key, st in reversed(done):
            if st is None:
                del state[key]
            else:
                state[key] = st

    def add_counts(self, counts: Mapping[str, float], bucket: int) -> None:
        """:meth:`add` of every key's count."""
        state = self.state
        get = state.get
        for key, c in counts.items():
            st = get(key)
            if st is None:
                state[key] = (bucket, c, 0.0)
                continue
            b, cur, prev = st
            if b == bucket:
                state[key] = (b, cur + c, prev)
            elif b == bucket - 1:
                state[key] = (bucket, c, cur)
            else:
                state[key] = (bucket, c, 0.0)

    def prune(self, bucket: int, max_keys: int) -> None:
        """Forget keys that no event up to :data:`LATE_WINDOWS` windows older than
        ``bucket`` (the latest window seen) reads, once the table has grown
        ``GROWTH``-fold since the last sweep; then the oldest beyond ``max_keys``.
        Without it every key of the stream stayed until ``max_keys``, and every
        snapshot packed them all."""
        horizon = bucket - 1 - LATE_WINDOWS
        if horizon > self._pruned_below and len(self.state) >= max(
                self.GROWTH * self._kept, self.MIN_SWEEP):
            self.state = {k: v for k, v in self.state.items() if v[0] >= horizon}
            self._pruned_below = horizon
            self._kept = len(self.state)
        while len(self.state) > max_keys:
            self.state.pop(next(iter(self.state)))

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        data, offsets = pack_strings(list(self.state))
        vals = np.asarray(list(self.state.values()), np.float64).reshape(-1, 3)  # same order
        return {f"{prefix}.keys.data": data, f"{prefix}.keys.offsets": offsets,
                f"{prefix}.values": vals}

    def load_arrays(self, arrays: Mapping[str, np.ndarray], prefix: str) -> None:
        if f"{prefix}.values" not in arrays:
            return
        keys = unpack_strings(arrays[f"{prefix}.keys.data"], arrays[f"{prefix}.keys.offsets"])
        self.state = {k: (int(b), float(c), float(p))
                      for k, (b, c, p) in zip(keys, arrays[f"{prefix}.values"].tolist(),
                                              strict=True)}


class FloodGuard:
    """Decides which events of a batch may be learned (see the module docstring)."""

    def __init__(self, settings: FloodSettings) -> None:
        self.settings = settings
        self._users = _Windowed()
        self._pairs = _Windowed()
        self._items = _Windowed()
        self._all = _Windowed()
        #: the latest window bucket seen (pruning follows it, never a late event's)
        self._latest = -(2**62)

    def admit(
        self,
        users: Sequence[str],
        items: Sequence[str],
        timestamps: np.ndarray,
    ) -> tuple[np.ndarray, dict[str, int]]:
        """The mask of events to learn and the count of the others by reason."""
        n = len(users)
        keep = np.ones(n, bool)
        if not self.settings.enabled or n == 0:
            return keep, {}
        buckets = np.floor(timestamps / self.settings.window_s)
        self._latest = max(self._latest, int(buckets.max()))
        if n > 1 and bool((np.diff(buckets) < 0).any()):
            # Out of event-time order across windows: decide event by event.
            return self._admit_each(users, items, timestamps, keep)
        why: Counter[str] = Counter()
        # Runs of one window bucket, in order: the whole run at once when nothing in it
        # can be capped, else event by event.
        cuts = [0, *(np.flatnonzero(np.diff(buckets)) + 1).tolist(), n]
        for lo, hi in itertools.pairwise(cuts):
            u, it, ts = users[lo:hi], items[lo:hi], timestamps[lo:hi]
            if not self._all_pass(u, it, ts):
                part, part_why = self._admit_each(u, it, ts, keep[lo:hi])
                keep[lo:hi] = part
                why.update(part_why)
        return keep, dict(why)

    def _all_pass(self, users: Sequence[str], items: Sequence[str], ts: np.ndarray) -> bool:
        """Admit a whole batch at once when no event can be capped (the common case).

        Within one window bucket every estimate can only shrink as event time moves
        on, so checking each key's count at the batch's earliest time plus its count
        in the batch against the caps is conservative: when it passes, the
        event-by-event decision would have admitted every event too, and the counters
        end up the same.
        """
        s = self.settings
        w = s.window_s
        t_lo, t_hi = float(ts.min()), float(ts.max())
        bucket = math.floor(t_lo / w)
        if math.floor(t_hi / w) != bucket:
            return False
        f_lo, f_hi = t_lo / w - bucket, t_hi / w - bucket
        user_n = Counter(users)
        pair_n = Counter(map("\x1f".join, zip(users, items, strict=True)))
        item_n = Counter(items)
        total = self._all.estimate("", bucket, f_hi)
        # An item is capped before its last event here when it holds >= item_min and
        # >= item_share * (total + 1) events: allowed is the most it may hold then.
        allowed = max(s.item_min, s.item_share * (total + 1.0))
        added_users = self._users.try_add(user_n, bucket, f_lo, s.user_events)
        if added_users is None:
            return False
        added_pairs = self._pairs.try_add(pair_n, bucket, f_lo, s.pair_events)
        if added_pairs is None:
            self._users.undo(added_users)
            return False
        if self._items.try_add(item_n, bucket, f_lo, allowed + 1.0 - 1e-9) is None:
            self._pairs.undo(added_pairs)
            self._users.undo(added_users)
            return False
        self._all.add("", bucket, len(users))
        self._prune()
        return True

    def _admit_each(self, users: Sequence[str], items: Sequence[str], timestamps: np.ndarray,
                    keep: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        s = self.settings
        w = s.window_s
        why: Counter[str] = Counter()
        users_, pairs, items_, all_ = self._users, self._pairs, self._items, self._all
        for i, (u, it, t) in enumerate(zip(users, items, timestamps.tolist(), strict=True)):
            bucket = math.floor(t / w)
            frac = t / w - bucket
            pair = f"{u}\x1f{it}"
            if users_.estimate(u, bucket, frac) >= s.user_events:
                reason = "user_rate"
            elif pairs.estimate(pair, bucket, frac) >= s.pair_events:
                reason = "repeat"
            else:
                in_item = items_.estimate(it, bucket, frac)
                total = all_.estimate("", bucket, frac)
                reason = ("item_share" if in_item >= s.item_min
                          and in_item >= s.item_share * (total + 1.0) else "")
            if reason:
                keep[i] = False
                why[reason] += 1
                continue
            users_.add(u, bucket)
            pairs.add(pair, bucket)
            items_.add(it, bucket)
            all_.add("", bucket)
        self._prune()
        return keep, dict(why)

    def _prune(self) -> None:
        for table in (self._users, self._pairs, self._items):
            table.prune(self._latest, self.settings.max_keys)

    def to_arrays(self, prefix: str = "flood") -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, table in self._tables().items():
            out.update(table.to_arrays(f"{prefix}.{name}"))
        return out

    def load_arrays(self, arrays: Mapping[str, np.ndarray], prefix: str = "flood") -> None:
        for name, table in self._tables().items():
            table.load_arrays(arrays, f"{prefix}.{name}")

    def _tables(self) -> dict[str, _Windowed]:
        return {"users": self._users, "pairs": self._pairs, "items": self._items,
                "all": self._all}
