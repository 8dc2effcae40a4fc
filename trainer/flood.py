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

Windows are sliding-window counters (counts per key in each ``window_s`` bucket; an
event reads its own bucket and the previous one, weighted by how much of it still
overlaps), decided event by event, so the result does not depend on where
mini-batch boundaries fall, and the counters are part of every snapshot. A late
event counts in its own window. The counts of windows that no event up to
``LATE_WINDOWS`` windows late can read are forgotten after each batch, so the tables
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
import operator
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from online_models.base import append_packed, concat_packed, unpack_strings

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

    #: cap learned events per user, per (user, item) and per item (false: learn every
    #: valid event); capped events count in ``liverec_trainer_events_capped_total``
    enabled: bool = True
    #: the sliding window the caps count in, seconds of event time
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
    """Event counts per key in each recent window bucket (a ``Counter`` per bucket).

    A key's sliding-window estimate at fraction ``frac`` of bucket ``b`` is its count
    in ``b`` plus ``1 - frac`` of its count in ``b - 1``. Counting a batch into a
    bucket and checking a batch's keys against a cap are C-level loops over dicts;
    forgetting a window drops its whole ``Counter``. (Before, one tuple per key held
    its latest bucket's and the previous bucket's counts: each batch paid a Python
    loop per key, and tables were swept key by key; a late event also replaced a
    key's newer counts, where here it counts in its own window.)
    """

    def __init__(self) -> None:
        #: bucket -> each key's count in it, the recent buckets only (see prune)
        self.buckets: dict[int, Counter[str]] = {}
        #: bucket -> an upper bound on its largest count (exact unless keys were
        #: dropped), so that a batch far from every cap passes without a look per key
        self.peaks: dict[int, float] = {}
        # bucket -> its keys packed for snapshots as of the last one (a bucket's keys
        # only join at its end, so a snapshot packs only the keys added since)
        self._packed: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        """Keys held, summed over buckets."""
        return sum(map(len, self.buckets.values()))

    def estimate(self, key: str, bucket: int, frac: float) -> float:
        cur, prev = self.buckets.get(bucket), self.buckets.get(bucket - 1)
        c = cur.get(key, 0) if cur else 0
        if prev:
            return c + prev.get(key, 0) * (1.0 - frac)
        return c

    def add(self, key: str, bucket: int, count: int = 1) -> None:
        counts = self._bucket(bucket)
        c = counts[key] = counts.get(key, 0) + count
        if c > self.peaks[bucket]:
            self.peaks[bucket] = c

    def count(self, batch: Mapping[str, int], keys: Sequence[str], bucket: int) -> None:
        """Count one event of each of ``keys`` (repeats included; ``batch`` is their
        ``Counter``) in ``bucket``."""
        counts = self._bucket(bucket)
        counts.update(keys)
        if batch:
            self.peaks[bucket] = max(self.peaks[bucket], max(map(counts.__getitem__, batch)))

    def fits(self, batch: Mapping[str, int], bucket: int, frac: float, cap: float) -> bool:
        """Whether every key's :meth:`estimate` plus its count in ``batch`` stays
        within ``cap`` (nothing is counted).

        First through the buckets' peaks: when even the largest counts of the bucket
        and of the previous one plus the batch's largest stay within ``cap``, every key
        does (the common case: one C-level pass over the batch's counts instead of
        one estimate per key); else key by key.
        """
        if not batch:
            return True
        bound = self.peaks.get(bucket, 0.0) + self.peaks.get(bucket - 1, 0.0) * (1.0 - frac)
        if bound + max(batch.values()) <= cap:
            return True
        cur, prev = self.buckets.get(bucket), self.buckets.get(bucket - 1)
        zeros = itertools.repeat(0)
        est: Iterable[float] = map(cur.get, batch, zeros) if cur else zeros
        if prev:
            est = map(operator.add, est, map(operator.mul, map(prev.get, batch, zeros),
                                             itertools.repeat(1.0 - frac)))
        return max(map(operator.add, est, batch.values())) <= cap

    def _bucket(self, bucket: int) -> Counter[str]:
        counts = self.buckets.get(bucket)
        if counts is None:
            counts = self.buckets[bucket] = Counter()
            self.peaks[bucket] = 0.0
        return counts

    def prune(self, bucket: int, max_keys: int) -> None:
        """Forget the buckets that no event up to :data:`LATE_WINDOWS` windows older
        than ``bucket`` (the latest window seen) reads; then, beyond ``max_keys``
        keys, the oldest keys of the oldest buckets."""
        horizon = bucket - 1 - LATE_WINDOWS
        for b in [b for b in self.buckets if b < horizon]:
            del self.buckets[b]
            del self.peaks[b]
            self._packed.pop(b, None)
        excess = len(self) - max_keys
        for b in sorted(self.buckets):
            if excess <= 0:
                break
            counts = self.buckets[b]
            drop = min(excess, len(counts))
            for key in list(itertools.islice(counts, drop)):
                del counts[key]
            excess -= drop
            self._packed.pop(b, None)
            if not counts:
                del self.buckets[b]
                del self.peaks[b]

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        order = sorted(self.buckets)
        parts, counts = [], []
        for b in order:
            c = self.buckets[b]
            data, ends = self._packed.get(b) or (np.zeros(0, np.uint8), np.zeros(0, np.int64))
            new = list(itertools.islice(c, len(ends), None))
            self._packed[b] = data, ends = append_packed((data, ends), new)
            parts.append((data, ends))
            counts.append(np.fromiter(c.values(), np.float64, len(c)))
        keys_data, keys_offsets = concat_packed(parts)
        return {
            f"{prefix}.buckets": np.asarray(order, np.int64),
            f"{prefix}.sizes": np.asarray([len(e) for _, e in parts], np.int64),
            f"{prefix}.keys.data": keys_data,
            f"{prefix}.keys.offsets": keys_offsets,
            f"{prefix}.counts": np.concatenate(counts or [np.zeros(0)]),
        }

    def load_arrays(self, arrays: Mapping[str, np.ndarray], prefix: str) -> None:
        if f"{prefix}.keys.data" not in arrays:
            return
        self.buckets, self.peaks, self._packed = {}, {}, {}
        keys = unpack_strings(arrays[f"{prefix}.keys.data"], arrays[f"{prefix}.keys.offsets"])
        if f"{prefix}.counts" in arrays:
            ends = np.cumsum(arrays[f"{prefix}.sizes"]).tolist()
            counts = arrays[f"{prefix}.counts"].tolist()
            for b, lo, hi in zip(arrays[f"{prefix}.buckets"].tolist(), [0, *ends][:-1], ends,
                                 strict=True):
                self.buckets[b] = Counter(dict(zip(keys[lo:hi], counts[lo:hi], strict=True)))
                self.peaks[b] = max(counts[lo:hi], default=0.0)
            return
        # A snapshot of the earlier layout: per key, its latest bucket's count and
        # the previous bucket's.
        for key, (b, cur, prev) in zip(keys, arrays[f"{prefix}.values"].tolist(), strict=True):
            self._bucket(int(b))[key] += cur
            if prev:
                self._bucket(int(b) - 1)[key] += prev
        self.peaks = {b: max(c.values(), default=0.0) for b, c in self.buckets.items()}


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
            keep, why_each = self._admit_each(users, items, timestamps, keep)
            self._prune()
            return keep, why_each
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
        # Forget windows once the batch is decided: its later runs read the earlier.
        self._prune()
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
        pair_keys = list(map("\x1f".join, zip(users, items, strict=True)))
        total = self._all.estimate("", bucket, f_hi)
        # An item is capped before its last event here when it holds >= item_min and
        # >= item_share * (total + 1) events: allowed is the most it may hold then.
        allowed = max(s.item_min, s.item_share * (total + 1.0))
        by_user, by_pair, by_item = Counter(users), Counter(pair_keys), Counter(items)
        if not (self._users.fits(by_user, bucket, f_lo, s.user_events)
                and self._pairs.fits(by_pair, bucket, f_lo, s.pair_events)
                and self._items.fits(by_item, bucket, f_lo, allowed + 1.0 - 1e-9)):
            return False
        self._users.count(by_user, users, bucket)
        self._pairs.count(by_pair, pair_keys, bucket)
        self._items.count(by_item, items, bucket)
        self._all.add("", bucket, len(users))
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
        return keep, dict(why)

    def _prune(self) -> None:
        for table in self._tables().values():
            table.prune(self._latest, self.settings.max_keys)

    def to_arrays(self, prefix: str = "flood") -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {f"{prefix}.latest": np.array([self._latest], np.int64)}
        for name, table in self._tables().items():
            out.update(table.to_arrays(f"{prefix}.{name}"))
        return out

    def load_arrays(self, arrays: Mapping[str, np.ndarray], prefix: str = "flood") -> None:
        for name, table in self._tables().items():
            table.load_arrays(arrays, f"{prefix}.{name}")
        if f"{prefix}.latest" in arrays:
            self._latest = int(arrays[f"{prefix}.latest"][0])
        else:  # a snapshot from before the latest bucket was kept: its newest counted one
            held = [b for t in self._tables().values() for b in t.buckets]
            self._latest = max(held, default=self._latest)

    def _tables(self) -> dict[str, _Windowed]:
        return {"users": self._users, "pairs": self._pairs, "items": self._items,
                "all": self._all}
