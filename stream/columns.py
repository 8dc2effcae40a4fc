"""Decode a polled batch of messages into columns: the trainer's hot path.

:func:`decode_columns` gives the same verdict as :func:`stream.events.decode` on every
message (same accepted events, same rejection reasons) without building a
:class:`~stream.events.ClickEvent` per event. A message takes the *fast path* when it
is a plain event: a JSON object whose ids are short printable strings, with a known
event type, a numeric or ISO-8601 timestamp in range, and no ``context``. A batch of
nothing but plain events -- the common case -- is checked column by column, each check
one C-level pass over the batch (:func:`_decode_plain`); a batch with anything else in
it is decoded message by message. Anything
else -- a context to check, an odd id, bytes that are not JSON -- goes through the
full :func:`~stream.events.validate_dict` / :func:`~stream.events.decode`, so the
fast path can only be *stricter* about what it handles itself, never more lenient
about what it accepts. ``tests/stream/test_columns.py`` checks the two agree on a
property-based corpus.

Examples
--------
>>> cols, rejects = decode_columns(
...     [b'{"event_id": "e1", "user_id": "u", "item_id": "i", "event_type": "click",'
...      b' "timestamp": 1700000000}', b"nope"], now=1_700_000_000.0)
>>> cols.users, cols.weights.tolist(), [(i, r.reason) for i, r in rejects]
(['u'], [2.0], [(1, 'not_json')])
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat

import numpy as np
import orjson

from stream.events import (
    DEFAULT_LIMITS,
    EVENT_WEIGHTS,
    SCHEMA_VERSION,
    ClickEvent,
    Limits,
    Rejected,
    decode,
    validate_dict,
)

__all__ = ["EventColumns", "decode_columns"]

_MS_THRESHOLD = 1e11
_FAST_KEYS = frozenset(
    {"schema", "event_id", "user_id", "item_id", "event_type", "timestamp", "session_id"}
)


@dataclass(slots=True)
class EventColumns:
    """Valid events of a batch, column-wise, in input order.

    ``positions`` are the indexes of the events in the decoded input (so a caller
    can map an event back to its partition and offset).
    """

    positions: list[int] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    sessions: list[str | None] = field(default_factory=list)
    weights: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    timestamps: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))

    def __len__(self) -> int:
        return len(self.users)

    def take(self, keep: np.ndarray) -> EventColumns:
        """The events where the boolean mask ``keep`` is true."""
        idx = np.flatnonzero(keep).tolist()
        return EventColumns(
            positions=[self.positions[i] for i in idx],
            event_ids=[self.event_ids[i] for i in idx],
            users=[self.users[i] for i in idx],
            items=[self.items[i] for i in idx],
            sessions=[self.sessions[i] for i in idx],
            weights=self.weights[keep],
            timestamps=self.timestamps[keep],
        )


def _iso_ts(text: str) -> float | None:
    """Epoch seconds of an ISO-8601 timestamp (UTC when it names no zone), or None."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _fast_ts(value: object) -> float | None:
    """Epoch seconds of a plain timestamp, or None to leave it to the full path.

    Mirrors :func:`stream.events.parse_timestamp`: text is a number first, then
    ISO-8601; numbers above 1e11 are milliseconds; fractions round to microseconds
    as the ``datetime`` of the full path does.
    """
    t = type(value)
    if t is str:
        text = value.strip()  # type: ignore[attr-defined]
        # "YYYY-..." is never a number, so the ISO parse goes first (a failed float()
        # costs an exception per event on the common path).
        if text[4:5] == "-" and text[:4].isdigit():
            return _iso_ts(text)
        try:
            seconds = float(text)
        except ValueError:
            return _iso_ts(text)
    elif t is int or t is float:
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except OverflowError:
            return None
    else:
        return None
    if not math.isfinite(seconds):
        return None
    if abs(seconds) >= _MS_THRESHOLD:
        seconds /= 1000.0
    if seconds != math.floor(seconds):
        try:
            seconds = datetime.fromtimestamp(seconds, tz=UTC).timestamp()
        except (OverflowError, OSError, ValueError):
            return None
    return seconds


def _plain_ids(ids: list[object], max_chars: int) -> bool:
    """Whether every one of ``ids`` is a printable string of 1 to ``max_chars``
    characters (a string of printable characters is printable)."""
    if not ids:
        return True
    if set(map(type, ids)) != {str}:
        return False
    lengths = list(map(len, ids))  # type: ignore[arg-type]
    return min(lengths) > 0 and max(lengths) <= max_chars and \
        "".join(ids).isprintable()  # type: ignore[arg-type]


def _plain_times(stamps: list[object]) -> list[float] | None:
    """:func:`_fast_ts` of every stamp when all of them take its ISO-8601 branch (or
    are numbers), else None."""
    kinds = set(map(type, stamps))
    if kinds == {str}:
        if not all(s[4:5] == "-" and s[:4].isdigit() for s in stamps):  # type: ignore[index]
            return None  # text that may be a number, or padded: message by message
        try:
            parsed = list(map(datetime.fromisoformat, stamps))  # type: ignore[arg-type]
        except ValueError:
            return None
        if any(dt.tzinfo is None for dt in parsed):
            parsed = [dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
                      for dt in parsed]
        return list(map(datetime.timestamp, parsed))
    if kinds <= {int, float}:
        out = list(map(_fast_ts, stamps))
        return None if None in out else out  # type: ignore[return-value]
    return None


def _decode_plain(
    values: Sequence[bytes | None], lo: float, hi: float, weights: Mapping[str, float],
    limits: Limits,
) -> EventColumns | None:
    """The batch as columns when every message in it is a plain event, else None.

    Each check is one pass over a column, with the fast path's rules, so that a
    batch decoded here gets the verdict the message-by-message loop would give."""
    if not values or None in values:
        return None
    lengths = list(map(len, values))  # type: ignore[arg-type]
    if min(lengths) == 0 or max(lengths) > limits.max_event_bytes:
        return None
    try:
        objs = list(map(orjson.loads, values))  # type: ignore[arg-type]
    except orjson.JSONDecodeError:
        return None
    if set(map(type, objs)) != {dict} or not all(map(_FAST_KEYS.issuperset, objs)):
        return None
    get = dict.get
    eids, users, items, etypes = (list(map(get, objs, repeat(key))) for key in
                                  ("event_id", "user_id", "item_id", "event_type"))
    if not _plain_ids(eids + users + items, limits.max_id_chars):
        return None
    sessions = list(map(get, objs, repeat("session_id")))
    if not _plain_ids([s for s in sessions if s is not None], limits.max_id_chars):
        return None
    schemas = list(map(get, objs, repeat("schema"), repeat(SCHEMA_VERSION)))
    if set(map(type, schemas)) != {int} or set(schemas) != {SCHEMA_VERSION}:
        return None
    if set(map(type, etypes)) != {str} or not \
            set(etypes) <= weights.keys() & EVENT_WEIGHTS.keys():
        return None
    times = _plain_times(list(map(get, objs, repeat("timestamp"))))
    if times is None:
        return None
    ts = np.asarray(times, np.float64)
    if not bool(((ts >= lo) & (ts <= hi)).all()):
        return None
    return EventColumns(
        positions=list(range(len(values))), event_ids=eids,  # type: ignore[arg-type]
        users=users, items=items, sessions=sessions,  # type: ignore[arg-type]
        weights=np.asarray(list(map(weights.__getitem__, etypes)), np.float32),  # type: ignore[arg-type]
        timestamps=ts,
    )


def decode_columns(
    values: Sequence[bytes | None],
    *,
    now: float | None = None,
    limits: Limits = DEFAULT_LIMITS,
    weights: Mapping[str, float] | None = None,
) -> tuple[EventColumns, list[tuple[int, Rejected]]]:
    """Decode ``values`` into :class:`EventColumns` and ``(position, Rejected)`` pairs.

    Never raises on message content. ``now`` (epoch seconds, default the wall clock)
    anchors the plausible time range; ``weights`` maps event types to learning
    weights (default :data:`stream.events.EVENT_WEIGHTS`).
    """
    now_s = time.time() if now is None else float(now)
    lo, hi = now_s - limits.max_past_s, now_s + limits.max_future_s
    w_of = EVENT_WEIGHTS if weights is None else weights
    plain = _decode_plain(values, lo, hi, w_of, limits)
    if plain is not None:
        return plain, []
    max_bytes, max_chars = limits.max_event_bytes, limits.max_id_chars
    cols = EventColumns()
    pos, eids, users, items, sessions = (
        cols.positions, cols.event_ids, cols.users, cols.items, cols.sessions
    )
    ws: list[float] = []
    tss: list[float] = []
    rejects: list[tuple[int, Rejected]] = []
    loads = orjson.loads
    fast_keys = _FAST_KEYS
    for i, raw in enumerate(values):
        obj = None
        if raw and len(raw) <= max_bytes:
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError:
                obj = None
        if type(obj) is dict and obj.keys() <= fast_keys:
            schema = obj.get("schema", SCHEMA_VERSION)
            eid, user, item = obj.get("event_id"), obj.get("user_id"), obj.get("item_id")
            etype, session = obj.get("event_type"), obj.get("session_id")
            if (
                type(eid) is str and type(user) is str and type(item) is str
                and 0 < len(eid) <= max_chars and 0 < len(user) <= max_chars
                and 0 < len(item) <= max_chars
                and eid.isprintable() and user.isprintable() and item.isprintable()
                and (session is None or (type(session) is str
                                         and 0 < len(session) <= max_chars
                                         and session.isprintable()))
                and type(schema) is int and schema == SCHEMA_VERSION
                and type(etype) is str and etype in w_of and etype in EVENT_WEIGHTS
            ):
                ts = _fast_ts(obj.get("timestamp"))
                if ts is not None and lo <= ts <= hi:
                    pos.append(i)
                    eids.append(eid)
                    users.append(user)
                    items.append(item)
                    sessions.append(session)
                    ws.append(w_of[etype])
                    tss.append(ts)
                    continue
        # The full path: exactly stream.events' verdict.
        if obj is not None and raw is not None:
            full = validate_dict(obj, now=now_s, limits=limits, raw=bytes(raw))
        else:
            full = decode(raw, now=now_s, limits=limits)
        if isinstance(full, ClickEvent):
            pos.append(i)
            eids.append(full.event_id)
            users.append(full.user_id)
            items.append(full.item_id)
            sessions.append(full.session_id)
            ws.append(w_of[full.event_type])
            tss.append(full.ts)
        else:
            rejects.append((i, full))
    cols.weights = np.asarray(ws, np.float32)
    cols.timestamps = np.asarray(tss, np.float64)
    return cols, rejects
