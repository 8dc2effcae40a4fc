"""Replay's column fast path is a faster way to compute ``encode(validate_dict(row))``."""

from __future__ import annotations

from typing import Any


def test_fast_row_encoding_equals_validate_then_encode() -> None:
    """The replay's column path gives byte-identical values and the same rejects as
    ``encode(validate_dict(row))``, which stays the definition."""
    from online_models.datasets import Dataset
    from online_models.synthetic import iter_events
    from stream.events import ClickEvent, Limits, encode, validate_dict
    from stream.replay import encode_chunks, encode_rows

    now = 1_800_000_000.0
    rows: list[dict[str, Any]] = [dict(r) for r in iter_events(300, 40, 60, 3, None)]
    odd = [
        {"user_id": "u\x00", "item_id": "i", "timestamp": 1.7e9, "event_type": "view"},
        {"user_id": "u" * 300, "item_id": "i", "timestamp": 1.7e9, "event_type": "view"},
        {"user_id": "u", "item_id": "i", "timestamp": now + 10 * 86_400, "event_type": "view"},
        {"user_id": "u", "item_id": "i", "timestamp": 1.7e9, "event_type": "like"},
        {"user_id": "u", "item_id": "i", "timestamp": 1.7e9 + 0.123456, "event_type": "click",
         "session_id": "s 1"},
        {"user_id": "ü\u00a0é", "item_id": "i", "timestamp": 1.7e9, "event_type": "purchase"},
        {"user_id": "u", "item_id": "i", "timestamp": 1.7e9, "event_type": "view",
         "session_id": ""},
    ]
    ds = Dataset.from_records(rows + odd)
    limits = Limits(max_id_chars=64)
    got = list(encode_rows(ds, limits, now=now))
    assert len(got) == len(ds)
    for (_, _, key, value), row in zip(got, ds, strict=True):
        want = validate_dict(row._asdict(), now=now, limits=limits)
        if isinstance(want, ClickEvent):
            assert (key, value) == (want.user_id.encode(), encode(want)), row
        else:
            assert not isinstance(value, bytes) and value.reason == want.reason, row
    assert sum(not isinstance(v, bytes) for *_, v in got) >= 3  # the odd rows do reject

    # The chunked encoder (unpaced replay) gives the same records in row order and the
    # same rejects; chunks of 64 rows: most all-valid (one comprehension), one not.
    records, rejects, ends = [], [], []
    for end, recs, rejs in encode_chunks(ds, limits, now=now, size=64):
        ends.append(end)
        records.extend(recs)
        rejects.extend(r.reason for r in rejs)
    assert ends == [*range(64, len(ds), 64), len(ds)]
    assert records == [(key, value) for _, _, key, value in got if isinstance(value, bytes)]
    assert rejects == [v.reason for *_, v in got if not isinstance(v, bytes)]


def test_vectorised_iso_times_equal_datetime_isoformat() -> None:
    from datetime import UTC, datetime

    import numpy as np

    from stream.replay import iso_times

    rng = np.random.default_rng(1)
    stamps = np.concatenate([
        rng.uniform(0, 4e9, 20_000),
        np.round(rng.uniform(1e9, 2e9, 10_000), 3),  # milliseconds, as files often hold
        np.round(rng.uniform(1e9, 2e9, 10_000) * 2) / 2,
        np.array([1.9999995, 0.0000005, 0.0000015, 1_700_000_000.9999996]),
    ])
    want = [datetime.fromtimestamp(t, UTC).isoformat() for t in stamps.tolist()]
    assert iso_times(stamps) == want
    five = datetime.fromtimestamp(5, UTC).isoformat()
    assert iso_times(np.array([5.0, np.nan, 10.0]), lo=0, hi=6) == [five, "", ""]
