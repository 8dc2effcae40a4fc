"""The trainer's durable de-duplication memory: recently learned ``event_id`` s."""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from online_models.base import append_packed, pack_strings, unpack_strings

__all__ = ["DedupWindow"]

log = logging.getLogger(__name__)

#: the event-time jump warning is logged at most once in this many seconds
JUMP_LOG_EVERY_S = 300.0


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class DedupWindow:
    """Recently learned ``event_id`` s, bounded by event time and by count.

    An id is remembered until the watermark is ``window_s`` past its event time, or
    until ``max_ids`` newer ids pushed it out. A duplicate older than that is not
    recognised (and learned again): size the window to the longest replay overlap.
    The window is part of every snapshot, so it survives restarts.

    Examples
    --------
    >>> d = DedupWindow(window_s=10)
    >>> d.add("a", 1.0), d.add("a", 2.0), d.add("b", 20.0), d.add("a", 21.0)
    (True, False, True, True)
    >>> d.add_many(["c", "b", "c"], [22.0, 22.0, 23.0]).tolist()
    [True, False, False]
    """

    def __init__(self, window_s: float = 86_400.0, max_ids: int = 500_000) -> None:
        self.window_s = window_s
        self.max_ids = max_ids
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._watermark = -math.inf
        # The ids again, packed for snapshots (:meth:`to_arrays`): ids only join at the
        # back and leave at the front, so a snapshot packs only the ids added since the
        # last one. ``_packed`` = (UTF-8 bytes, end offsets, times) of the ids as of the
        # last snapshot; ``_new`` the ids added since; ``_gone`` how many left the front.
        self._packed = (np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.float64))
        self._new: list[str] = []
        self._new_ts: list[float] = []
        self._gone = 0
        # The jump warning's throttle: a sparse stream replayed at full speed (MovieLens's
        # early years) jumps every few batches, and each jump's line buried the status.
        self._jump_said_at: float | None = None
        self._jumps_unsaid = 0

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str, ts: float) -> bool:
        """Remember ``event_id``; False when it was already there (a duplicate).
        A one-event :meth:`add_many` (so the log of ids since the last snapshot stays
        bounded the same way)."""
        return bool(self.add_many([event_id], [ts])[0])

    def add_many(self, event_ids: Sequence[str], ts: Sequence[float] | np.ndarray) -> np.ndarray:
        """Remember a batch of ids; returns the mask of those not seen before.

        A repeat inside the batch is a duplicate of its first occurrence. Expiry runs
        once per batch (at the batch's newest event time), so an id that would
        expire *during* the batch still counts as seen for the rest of the batch.
        """
        ids = self._ids
        times = np.asarray(ts, np.float64)
        new, new_ts = self._new, self._new_ts
        tl = times.tolist()
        if not any(map(ids.__contains__, event_ids)) and len(set(event_ids)) == len(tl):
            # The common case, no repeat at all: the whole batch joins in C loops.
            ids.update(zip(event_ids, tl, strict=True))
            new.extend(event_ids)
            new_ts.extend(tl)
            fresh = np.ones(len(tl), bool)
        else:
            fresh = np.zeros(len(tl), bool)
            for i, (eid, t) in enumerate(zip(event_ids, tl, strict=True)):
                if eid not in ids:
                    ids[eid] = t
                    new.append(eid)
                    new_ts.append(t)
                    fresh[i] = True
        if len(times) and times.max() > self._watermark:
            before, n_before = self._watermark, len(ids)
            self._watermark = float(times.max())
            self._expire()
            if self._watermark - before > self.window_s and n_before > len(tl):
                self._say_jump(before, event_ids[int(times.argmax())], n_before - len(ids))
        while len(ids) > self.max_ids:
            ids.popitem(last=False)
            self._gone += 1
        if len(new) > self.max_ids:  # no snapshot for a long while: bound the log
            self.to_arrays()
        return fresh

    def _say_jump(self, before: float, event_id: str, forgotten: int) -> None:
        """A WARNING: the event time leapt past the window in one batch, so everything
        remembered is forgotten at once. After a pause in the stream that is expected;
        otherwise one event stamped far ahead did it (a live click on a topic of
        replayed history), and a replay of the older events is learned again. At most
        one line per ``JUMP_LOG_EVERY_S``: the next tells how many were not logged."""
        now = time.monotonic()
        if self._jump_said_at is not None and now - self._jump_said_at < JUMP_LOG_EVERY_S:
            self._jumps_unsaid += 1
            return
        unsaid, self._jumps_unsaid, self._jump_said_at = self._jumps_unsaid, 0, now
        log.warning(
            "event time jumped %.1f days in one batch (to %s, event %r; the stream was "
            "at %s): the de-duplication memory forgot its %d ids, so a replay of earlier "
            "events is learned again. Expected after a pause in the stream; otherwise "
            "one event stamped far ahead did it (e.g. a live click on a topic of "
            "replayed history: keep the two on separate topics)%s",
            (self._watermark - before) / 86_400, _utc(self._watermark), event_id,
            _utc(before), forgotten,
            f"; {unsaid} more such jumps in the last {JUMP_LOG_EVERY_S:.0f} s not logged"
            if unsaid else "")

    def _expire(self) -> None:
        horizon = self._watermark - self.window_s
        # Ids arrive roughly in event-time order, so expired ones sit at the front.
        while self._ids:
            first_id = next(iter(self._ids))
            if self._ids[first_id] >= horizon:
                break
            self._ids.popitem(last=False)
            self._gone += 1

    def to_arrays(self, prefix: str = "dedup") -> dict[str, np.ndarray]:
        """The remembered ids and their event times, in order, as arrays. Packs only the
        ids added since the last call; the rest is array slicing and concatenation."""
        data, ends, times = self._packed
        if self._new:
            data, ends = append_packed((data, ends), self._new)
            times = np.concatenate((times, np.asarray(self._new_ts, np.float64)))
            self._new, self._new_ts = [], []
        if self._gone:
            cut = int(ends[self._gone - 1])
            data, ends, times = data[cut:], ends[self._gone:] - cut, times[self._gone:]
            self._gone = 0
        if len(ends) != len(self._ids):  # a bug: never write a snapshot that lies
            log.error("dedup window: %d packed ids for %d remembered; packing them all",
                      len(ends), len(self._ids))
            data, ends = pack_strings(list(self._ids))
            times = np.fromiter(self._ids.values(), np.float64, len(self._ids))
        self._packed = (data, ends, times)
        return {f"{prefix}.ids.data": data, f"{prefix}.ids.offsets": ends,
                f"{prefix}.ts": times}

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], prefix: str = "dedup", **kwargs: Any
    ) -> DedupWindow:
        d = cls(**kwargs)
        if f"{prefix}.ts" not in arrays:
            return d
        data = np.asarray(arrays[f"{prefix}.ids.data"], np.uint8)
        ends = np.asarray(arrays[f"{prefix}.ids.offsets"], np.int64)
        times = np.asarray(arrays[f"{prefix}.ts"], np.float64)
        d._ids = OrderedDict(zip(unpack_strings(data, ends), times.tolist(), strict=True))
        d._packed = (data, ends, times)
        d._watermark = max(d._ids.values(), default=-math.inf)
        return d
