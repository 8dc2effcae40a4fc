"""The columnar decoder gives exactly :func:`stream.events.decode`'s verdict, message by message."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.columns import _decode_plain, decode_columns
from stream.events import EVENT_WEIGHTS, ClickEvent, Limits, decode, encode
from tests.stream.test_events import NOW, _fields, _json, mutated_events, valid

NOW_S = NOW.timestamp()


def _agree(values: list[bytes | None], limits: Limits | None = None) -> None:
    _agree_in_batch(values, limits)
    for value in values:  # a batch of one plain-looking message takes the batch path
        _agree_in_batch([value], limits)


def _agree_in_batch(values: list[bytes | None], limits: Limits | None = None) -> None:
    limits = limits or Limits()
    cols, rejects = decode_columns(values, now=NOW_S, limits=limits)
    expected = [decode(v, now=NOW, limits=limits) for v in values]
    want_events = [(i, e) for i, e in enumerate(expected) if isinstance(e, ClickEvent)]
    assert cols.positions == [i for i, _ in want_events]
    assert cols.event_ids == [e.event_id for _, e in want_events]
    assert cols.users == [e.user_id for _, e in want_events]
    assert cols.items == [e.item_id for _, e in want_events]
    assert cols.sessions == [e.session_id for _, e in want_events]
    assert cols.timestamps.tolist() == [e.ts for _, e in want_events]
    assert cols.weights.tolist() == [EVENT_WEIGHTS[e.event_type] for _, e in want_events]
    got_rejects = [(i, r.reason, r.raw) for i, r in rejects]
    want_rejects = [(i, e.reason, e.raw) for i, e in enumerate(expected)
                    if not isinstance(e, ClickEvent)]
    assert got_rejects == want_rejects


def test_plain_and_odd_events_agree() -> None:
    plain = {k: v for k, v in valid().items() if k != "context"}
    values: list[bytes | None] = [
        orjson.dumps(plain),
        orjson.dumps(valid()),  # with context: the full path
        orjson.dumps({**plain, "timestamp": "2024-05-31T10:00:00.123456+02:00"}),
        orjson.dumps({**plain, "timestamp": "20240531"}),  # numeric text: epoch seconds
        orjson.dumps({**plain, "timestamp": 1_717_000_000_123}),  # milliseconds
        orjson.dumps({**plain, "timestamp": 1_717_000_000.1234567}),  # rounds to µs
        orjson.dumps({**plain, "timestamp": 2**63 - 1}),
        orjson.dumps({**plain, "schema": 1.0}),
        orjson.dumps({**plain, "schema": True}),
        orjson.dumps({**plain, "event_type": ["click"]}),
        orjson.dumps({**plain, "user_id": "a\u00a0b"}),  # not isprintable: full path
        orjson.dumps({**plain, "session_id": None}),
        b"", None, b"\xff", b"[1]", b"x" * 9000,
    ]
    _agree(values)


def test_custom_limits_and_weights() -> None:
    plain = {k: v for k, v in valid().items() if k != "context"}
    limits = Limits(max_id_chars=3)
    _agree([orjson.dumps(plain), orjson.dumps({**plain, "user_id": "abc"})], limits)
    cols, _ = decode_columns([orjson.dumps(plain)], now=NOW_S,
                             weights={**EVENT_WEIGHTS, "click": 7.0})
    assert cols.weights.tolist() == [7.0]


def test_take_keeps_the_masked_events() -> None:
    evs = [valid(event_id=f"e{i}", context=None) for i in range(4)]
    cols, _ = decode_columns([orjson.dumps(e) for e in evs], now=NOW_S)
    kept = cols.take(cols.timestamps == cols.timestamps)  # all
    assert kept.event_ids == ["e0", "e1", "e2", "e3"]
    import numpy as np

    some = cols.take(np.array([True, False, False, True]))
    assert some.event_ids == ["e0", "e3"] and some.positions == [0, 3]


_PROPS = settings(max_examples=3_000, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@_PROPS
@given(st.lists(mutated_events(), min_size=1, max_size=8))
def test_columns_agree_with_decode_on_mutated_events(values: list[bytes]) -> None:
    _agree(list(values))


@pytest.mark.slow
@_PROPS
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=4))
def test_columns_agree_with_decode_on_arbitrary_bytes(values: list[bytes]) -> None:
    _agree(list(values))


_stamps = (st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
           | st.text(max_size=30) | st.floats() | st.integers(-(2**63), 2**64 - 1))


@st.composite
def plain_events(draw: st.DrawFn) -> bytes:
    """A plain event (no context) with at most one field changed: what the batch path
    sees, with the odd cases it must hand to the message-by-message loop."""
    obj = {k: v for k, v in valid().items() if k != "context"}
    obj["timestamp"] = draw(st.sampled_from([obj["timestamp"], NOW.isoformat()]) | _stamps)
    if draw(st.booleans()):
        key = draw(_fields)
        obj[key] = draw(_json | st.text(max_size=4))
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


@pytest.mark.slow
@_PROPS
@given(st.lists(plain_events(), min_size=1, max_size=4))
def test_columns_agree_with_decode_on_plain_events(values: list[bytes]) -> None:
    _agree(list(values))


def test_encoded_events_take_the_fast_path() -> None:
    ev = decode(orjson.dumps({**valid(), "context": None}), now=NOW)
    assert isinstance(ev, ClickEvent)
    _agree([encode(ev)] * 3)
    lo, hi = NOW_S - Limits().max_past_s, NOW_S + Limits().max_future_s
    plain = _decode_plain([encode(ev)] * 3, lo, hi, EVENT_WEIGHTS, Limits())
    assert plain is not None and plain.users == [ev.user_id] * 3  # the batch path
    assert _decode_plain([encode(ev), b"{}"], lo, hi, EVENT_WEIGHTS, Limits()) is None
