"""The click-event contract: what travels on the events topic, and how it is checked.

An event is a small JSON object (UTF-8, ``"schema": 1``)::

    {"schema": 1, "event_id": "e-1", "user_id": "u1", "item_id": "i9",
     "event_type": "click", "timestamp": "2024-05-01T12:00:00+00:00",
     "session_id": "s-7", "context": {"device": "mobile"}}

* ``event_id`` is unique per event; consumers drop repeats (a re-replayed file
  produces the same ids).
* ``user_id``, ``item_id`` (and ``session_id``, ``event_id``): printable strings of
  ``1..max_id_chars`` characters (no control characters, no unpaired surrogates).
* ``event_type``: ``view``, ``click``, ``add_to_cart`` or ``purchase``; each has a
  learning weight (:data:`EVENT_WEIGHTS`, configurable through the settings).
* ``timestamp``: epoch seconds, epoch milliseconds (numbers above ``1e11``) or
  ISO-8601 text (naive text is taken as UTC); always a timezone-aware UTC
  ``datetime`` once decoded. Times absurdly far from "now" are rejected.
* ``context``: optional flat mapping of a few string keys to str/int/float/bool.
* The Kafka message key is ``user_id``, so one user's events stay ordered in one
  partition. Rejects go to ``<topic>.dlq`` (see :mod:`stream.consumer`).

:func:`decode` (bytes) and :func:`validate_dict` (an already-parsed object, as the
HTTP ingestion endpoint gets) are pure and never raise: they return either a
:class:`ClickEvent` or a :class:`Rejected` with a bounded ``reason`` label from
:data:`REJECT_REASONS`.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from stream.weights import DEFAULT_EVENT_WEIGHTS

if TYPE_CHECKING:
    from stream.settings import StreamSettings

__all__ = [
    "EVENT_TYPES",
    "EVENT_WEIGHTS",
    "REJECT_REASONS",
    "SCHEMA_VERSION",
    "ClickEvent",
    "Limits",
    "Rejected",
    "decode",
    "dlq_payload",
    "encode",
    "event_key",
    "parse_timestamp",
    "validate_dict",
]

SCHEMA_VERSION = 1
EVENT_TYPES: tuple[str, ...] = tuple(DEFAULT_EVENT_WEIGHTS)
#: Default learning weight per event type (``StreamSettings.event_weights`` overrides).
EVENT_WEIGHTS: dict[str, float] = dict(DEFAULT_EVENT_WEIGHTS)

#: Every reason a :class:`Rejected` can carry (a bounded metric label set).
REJECT_REASONS: tuple[str, ...] = (
    "empty",
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "bad_schema",
    "missing_field",
    "bad_field_type",
    "bad_id",
    "bad_event_type",
    "bad_timestamp",
    "timestamp_out_of_range",
    "bad_context",
    "invalid_row",
)

# Above this a numeric timestamp is read as milliseconds: 1e11 s is the year 5138,
# while 1e11 ms is 1973, so the two ranges of plausible times do not overlap.
_MS_THRESHOLD = 1e11
# Ids are printable text: control characters (Unicode category Cc: C0, DEL, C1) and
# unpaired surrogates (which cannot be encoded as UTF-8) are refused as ``bad_id``.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_MAX_CONTEXT_KEY_CHARS = 64
_MAX_CONTEXT_VALUE_CHARS = 256


#: the most characters an id may have under any setting: the server's routes take ids
#: up to this long, so a longer limit would let ids in that no read could name
ID_CHARS_BOUND = 256


@dataclass(frozen=True, slots=True)
class Limits:
    """Validation limits (see :class:`stream.settings.StreamSettings` for meanings)."""

    max_event_bytes: int = 8192
    max_id_chars: int = ID_CHARS_BOUND
    max_context_keys: int = 16
    max_future_s: float = 86_400.0
    max_past_s: float = 50 * 365.25 * 86_400.0

    @classmethod
    def from_settings(cls, settings: StreamSettings) -> Limits:
        return cls(
            max_event_bytes=settings.max_event_bytes,
            max_id_chars=settings.max_id_chars,
            max_context_keys=settings.max_context_keys,
            max_future_s=settings.max_future_s,
            max_past_s=settings.max_past_s,
        )


DEFAULT_LIMITS = Limits()

ContextValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class ClickEvent:
    """One user interaction with an item.

    Build events from untrusted input with :func:`validate_dict` or :func:`decode`;
    the constructor itself trusts its arguments.

    Examples
    --------
    >>> ev = validate_dict({"event_id": "e1", "user_id": "u1", "item_id": "i1",
    ...                     "event_type": "click", "timestamp": 1_700_000_000})
    >>> ev.timestamp.isoformat(), ev.ts, ev.weight
    ('2023-11-14T22:13:20+00:00', 1700000000.0, 2.0)
    >>> decode(encode(ev)) == ev
    True
    """

    event_id: str
    user_id: str
    item_id: str
    event_type: str
    timestamp: datetime
    session_id: str | None = None
    context: Mapping[str, ContextValue] | None = None

    @property
    def ts(self) -> float:
        """Event time as epoch seconds."""
        return self.timestamp.timestamp()

    @property
    def weight(self) -> float:
        """Default learning weight of this event's type (:data:`EVENT_WEIGHTS`)."""
        return EVENT_WEIGHTS[self.event_type]

    def to_dict(self) -> dict[str, Any]:
        """The wire object (what :func:`encode` serialises)."""
        out: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event_type": self.event_type,
            "timestamp": self.timestamp.isoformat(),
        }
        if self.session_id is not None:
            out["session_id"] = self.session_id
        if self.context:
            out["context"] = dict(self.context)
        return out


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why an input is not a valid event; carries the raw bytes for the dead-letter topic.

    >>> r = decode(b"{not json")
    >>> r.reason, r.raw
    ('not_json', b'{not json')
    """

    raw: bytes
    reason: str  # one of REJECT_REASONS
    detail: str


class _Reject(ValueError):
    """Internal control flow of validation; :func:`validate_dict` turns it into a reject."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def encode(event: ClickEvent) -> bytes:
    """Serialise ``event`` for the wire (compact UTF-8 JSON)."""
    return orjson.dumps(event.to_dict())


def event_key(event: ClickEvent) -> bytes:
    """The Kafka message key: the user id, so a user's events share a partition."""
    return event.user_id.encode("utf-8")


def decode(
    raw: bytes | bytearray | memoryview | None,
    *,
    now: datetime | float | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ClickEvent | Rejected:
    """Turn raw message bytes into a :class:`ClickEvent` or a :class:`Rejected`.

    Never raises. ``now`` (default: the wall clock) anchors the plausible time range.

    >>> decode(b'\\xff').reason
    'not_utf8'
    >>> decode(b'{"event_id": "e", "user_id": "u", "item_id": "i",'
    ...        b' "event_type": "buy", "timestamp": 0}').reason
    'bad_event_type'
    """
    try:
        data = b"" if raw is None else bytes(raw)
    except Exception as exc:  # a non-bytes value from a misbehaving caller
        return Rejected(b"", "empty", f"not bytes: {type(raw).__name__}: {exc}")
    if not data:
        return Rejected(data, "empty", "empty message")
    if len(data) > limits.max_event_bytes:
        return Rejected(data, "too_large", f"{len(data)} bytes > {limits.max_event_bytes}")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(data, "not_utf8", str(exc))
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return Rejected(data, "not_json", str(exc))
    return validate_dict(obj, now=now, limits=limits, raw=data)


def validate_dict(
    obj: object,
    *,
    now: datetime | float | None = None,
    limits: Limits = DEFAULT_LIMITS,
    raw: bytes | None = None,
    generate_event_id: bool = False,
) -> ClickEvent | Rejected:
    """Validate an already-parsed JSON object as an event. Never raises.

    Parameters
    ----------
    obj
        The parsed object (normally a ``dict``).
    now
        "Now" for the plausible time range (``datetime`` or epoch seconds);
        defaults to the wall clock.
    raw
        The bytes ``obj`` came from, kept in a rejection; re-serialised from
        ``obj`` when not given.
    generate_event_id
        Give an event without ``event_id`` (absent or null) a random one instead of
        rejecting it (for ingestion endpoints whose clients cannot make ids).

    >>> validate_dict({"user_id": "u"}).reason
    'missing_field'
    >>> validate_dict({"user_id": "u", "item_id": "i", "event_type": "view",
    ...                "timestamp": "2024-01-01T00:00:00Z"},
    ...               generate_event_id=True).timestamp.year
    2024
    """
    try:
        return _validate(obj, now, limits, generate_event_id)
    except _Reject as rej:
        return Rejected(_raw_of(obj, raw), rej.reason, rej.detail)
    except Exception as exc:  # a validation gap must become a reject, not a crash
        return Rejected(_raw_of(obj, raw), "not_object", f"unexpected: {exc!r}")


def _raw_of(obj: object, raw: bytes | None) -> bytes:
    if raw is not None:
        return raw
    try:
        return orjson.dumps(obj, default=repr)
    except Exception:
        return repr(obj).encode("utf-8", "backslashreplace")


def _validate(
    obj: object, now: datetime | float | None, limits: Limits, generate_event_id: bool
) -> ClickEvent:
    if not isinstance(obj, dict):
        raise _Reject("not_object", f"expected a JSON object, got {type(obj).__name__}")
    schema = obj.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION or isinstance(schema, bool):
        raise _Reject("bad_schema", f"unsupported schema {schema!r}")
    if obj.get("event_id") is None and generate_event_id:  # absent or null (JS's undefined)
        event_id = uuid.uuid4().hex
    else:
        event_id = _id(obj, "event_id", limits)
    user_id = _id(obj, "user_id", limits)
    item_id = _id(obj, "item_id", limits)
    event_type = obj.get("event_type")
    if event_type is None:
        raise _Reject("missing_field", "event_type is missing")
    if not isinstance(event_type, str) or event_type not in EVENT_WEIGHTS:
        raise _Reject("bad_event_type", f"unknown event_type {str(event_type)[:64]!r}")
    if "timestamp" not in obj or obj["timestamp"] is None:
        raise _Reject("missing_field", "timestamp is missing")
    ts = parse_timestamp(obj["timestamp"])
    _check_range(ts, now, limits)
    session_id = None
    if obj.get("session_id") is not None:
        session_id = _id(obj, "session_id", limits)
    context = _context(obj.get("context"), limits)
    return ClickEvent(event_id, user_id, item_id, event_type, ts, session_id, context)


def _id(obj: dict[str, Any], name: str, limits: Limits) -> str:
    if name not in obj or obj[name] is None:
        raise _Reject("missing_field", f"{name} is missing")
    value = obj[name]
    if not isinstance(value, str):
        raise _Reject("bad_field_type", f"{name} must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= limits.max_id_chars:
        raise _Reject("bad_id", f"{name} must have 1..{limits.max_id_chars} characters")
    bad = _UNPRINTABLE.search(value)
    if bad is not None:
        raise _Reject(
            "bad_id",
            f"{name} holds the unprintable character U+{ord(bad.group()):04X} at {bad.start()}",
        )
    return value


def parse_timestamp(value: object) -> datetime:
    """Epoch seconds, epoch milliseconds or ISO-8601 -> aware UTC ``datetime``.

    Raises ``ValueError`` on unreadable input (which :func:`validate_dict` turns
    into a ``bad_timestamp`` or ``timestamp_out_of_range`` reject).

    >>> parse_timestamp(1_700_000_000_000).isoformat()
    '2023-11-14T22:13:20+00:00'
    >>> parse_timestamp("2023-11-14T23:13:20+01:00").timestamp()
    1700000000.0
    """
    if isinstance(value, bool):
        raise _Reject("bad_timestamp", "timestamp must be a number or ISO-8601 text")
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is None:
            try:
                dt = datetime.fromisoformat(text)
            except ValueError as exc:
                raise _Reject("bad_timestamp", f"not ISO-8601: {text[:64]!r}") from exc
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            try:
                return dt.astimezone(UTC)
            except OverflowError as exc:  # year 1 or 9999 moved across midnight
                raise _Reject("timestamp_out_of_range", f"{text[:64]!r}: {exc}") from exc
        value = number
    if not isinstance(value, int | float):
        raise _Reject("bad_timestamp", f"timestamp of type {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError as exc:  # an int beyond any float
        raise _Reject("timestamp_out_of_range", f"timestamp of {len(str(value))} digits") from exc
    if not math.isfinite(seconds):
        raise _Reject("bad_timestamp", "timestamp is not finite")
    if abs(seconds) >= _MS_THRESHOLD:
        seconds /= 1000.0
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise _Reject("timestamp_out_of_range", f"timestamp {value!r}: {exc}") from exc


def _check_range(ts: datetime, now: datetime | float | None, limits: Limits) -> None:
    if now is None:
        now_s = datetime.now(UTC).timestamp()
    elif isinstance(now, datetime):
        now_s = now.timestamp()
    else:
        now_s = float(now)
    t = ts.timestamp()
    if t > now_s + limits.max_future_s:
        raise _Reject("timestamp_out_of_range", f"{ts.isoformat()} is too far in the future")
    if t < now_s - limits.max_past_s:
        raise _Reject("timestamp_out_of_range", f"{ts.isoformat()} is too far in the past")


def _context(value: object, limits: Limits) -> Mapping[str, ContextValue] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Reject("bad_context", "context must be an object")
    if len(value) > limits.max_context_keys:
        raise _Reject("bad_context", f"context has more than {limits.max_context_keys} keys")
    out: dict[str, ContextValue] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not 1 <= len(k) <= _MAX_CONTEXT_KEY_CHARS:
            raise _Reject("bad_context", "context keys must be short strings")
        if isinstance(v, str):
            if len(v) > _MAX_CONTEXT_VALUE_CHARS:
                raise _Reject("bad_context", f"context value of {k!r} is too long")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise _Reject("bad_context", f"context value of {k!r} is not finite")
        elif not isinstance(v, bool | int):
            raise _Reject("bad_context", f"context value of {k!r} must be str/int/float/bool")
        out[k] = v
    return out or None


def dlq_payload(
    rejected: Rejected, *, topic: str | None, partition: int | None, offset: int | None,
    max_bytes: int | None = 64 * 1024,
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Dead-letter record for a reject: the raw bytes as value, the why in headers.

    Headers: ``reason``, ``detail``, ``source_topic``, ``source_partition``,
    ``source_offset`` (empty when not from Kafka, e.g. an HTTP post or a CSV row),
    ``payload_bytes`` and ``payload_sha256`` of the original, and ``truncated``
    (``1`` when only the first ``max_bytes`` bytes are kept, so that the record
    always fits the broker's size limit; else ``0``).

    >>> value, headers = dlq_payload(Rejected(b"x" * 5000, "too_large", "big"),
    ...                              topic="t", partition=0, offset=7, max_bytes=1024)
    >>> len(value), dict(headers)["truncated"], dict(headers)["payload_bytes"]
    (1024, b'1', b'5000')
    """
    import hashlib

    raw = rejected.raw
    cut = max_bytes is not None and len(raw) > max_bytes
    headers = [
        ("reason", rejected.reason.encode()),
        ("detail", rejected.detail[:1024].encode("utf-8", "backslashreplace")),
        ("source_topic", (topic or "").encode()),
        ("source_partition", b"" if partition is None else str(partition).encode()),
        ("source_offset", b"" if offset is None else str(offset).encode()),
        ("payload_bytes", str(len(raw)).encode()),
        ("payload_sha256", hashlib.sha256(raw).hexdigest().encode()),
        ("truncated", b"1" if cut else b"0"),
    ]
    return (raw[:max_bytes] if cut else raw), headers
