"""The CSV readers behind :func:`online_models.datasets.read_interactions`: one per
preset (MovieLens ``ratings.csv``, UCI Online Retail), the generic one for named columns
(also the ``liverec`` preset's), and :func:`detect_preset`, which tells the presets
apart by their header. What each preset reads is described in
:mod:`online_models.datasets`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from online_models.csv_files import _col
from online_models.interactions import (
    EVENT_TYPES,
    EVENT_WEIGHTS,
    Dataset,
    TieOrder,
    _Builder,
    derive_event_id,
)

__all__ = ["MS_THRESHOLD", "detect_preset"]

_MOVIELENS_HEADER = ("userId", "movieId", "rating", "timestamp")
_RETAIL_HEADER = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)
_LONDON = ZoneInfo("Europe/London")


def detect_preset(header: Sequence[str]) -> str | None:
    """The preset whose columns this header has, or ``None``.

    >>> detect_preset(["userId", "movieId", "rating", "timestamp"])
    'movielens'
    >>> detect_preset(["a", "b"]) is None
    True
    """
    cols = set(header)
    if set(_RETAIL_HEADER) <= cols:
        return "online-retail"
    if set(_MOVIELENS_HEADER) <= cols:
        return "movielens"
    if {"user_id", "item_id", "timestamp"} <= cols:
        return "liverec"
    return None


def _read_movielens(reader: Iterator[list[str]], header: Sequence[str], path: str,
                    tie_order: TieOrder = "hash") -> Dataset:
    iu, ii, ir, it = (_col(header, c, path) for c in _MOVIELENS_HEADER)
    width = max(iu, ii, ir, it) + 1
    b = _Builder(path, prefix="ml")
    for line, row in enumerate(reader, start=2):
        if len(row) < width:
            b.bad(line, "missing_field", f"expected {width} fields, got {len(row)}", row)
            continue
        user, item = row[iu], row[ii]
        if not user or not item:
            b.bad(line, "missing_field", "empty userId or movieId", row)
            continue
        try:
            rating = float(row[ir])
        except ValueError:
            b.bad(line, "bad_value", f"rating {row[ir]!r}", row)
            continue
        try:
            ts = float(row[it])
        except ValueError:
            b.bad(line, "bad_timestamp", f"timestamp {row[it]!r}", row)
            continue
        if not math.isfinite(ts) or not math.isfinite(rating):
            b.bad(line, "bad_value", "non-finite rating or timestamp", row)
            continue
        b.add(line, derive_event_id("ml", line, row), user, item, _rating_type(rating), ts, None)
    return b.build(tie_order)


def _rating_type(rating: float) -> str:
    if rating >= 5.0:
        return "purchase"
    if rating >= 4.0:
        return "add_to_cart"
    if rating >= 3.0:
        return "click"
    return "view"


def _read_retail(reader: Iterator[list[str]], header: Sequence[str], path: str,
                 tie_order: TieOrder = "file") -> Dataset:
    iinv, istock, iqty, idate, icust = (
        _col(header, c, path)
        for c in ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "CustomerID")
    )
    width = max(iinv, istock, iqty, idate, icust) + 1
    b = _Builder(path, prefix="or")
    # ~23k distinct invoice times for 400k lines: parse each once.
    seen_dates: dict[str, float] = {}
    for line, row in enumerate(reader, start=2):
        if len(row) < width:
            b.bad(line, "missing_field", f"expected {width} fields, got {len(row)}", row)
            continue
        invoice, customer = row[iinv], row[icust]
        if invoice.startswith("C"):
            b.skipped["cancelled"] += 1
            continue
        if not customer:
            b.skipped["no_customer"] += 1
            continue
        try:
            qty = float(row[iqty])
        except ValueError:
            b.bad(line, "bad_value", f"Quantity {row[iqty]!r}", row)
            continue
        if not qty > 0:
            b.skipped["non_positive_quantity"] += 1
            continue
        item = row[istock]
        if not item:
            b.bad(line, "missing_field", "empty StockCode", row)
            continue
        text = row[idate]
        ts = seen_dates.get(text)
        if ts is None:
            try:
                ts = datetime.fromisoformat(text).replace(tzinfo=_LONDON).timestamp()
            except ValueError:
                b.bad(line, "bad_timestamp", f"InvoiceDate {text!r}", row)
                continue
            seen_dates[text] = ts
        # CustomerID may be written as "17850.0" by some exports.
        if customer.endswith(".0"):
            customer = customer[:-2]
        b.add(line, derive_event_id("or", line, row), customer, item, "purchase", ts, invoice)
    return b.build(tie_order)


#: a numeric time at or beyond this is epoch milliseconds (the rule of the event
#: contract, ``stream.events.parse_timestamp``: 1e11 s is the year 5138)
MS_THRESHOLD = 1e11


def _parse_time(text: str) -> float:
    """Epoch seconds of a CSV time: epoch seconds, epoch milliseconds or ISO-8601.

    >>> _parse_time("1700000000"), _parse_time("1700000000500"), _parse_time("2023-11-14T22:13:20Z")
    (1700000000.0, 1700000000.5, 1700000000.0)
    """
    try:
        ts = float(text)
        if abs(ts) >= MS_THRESHOLD:
            ts /= 1000.0
    except ValueError:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ts = dt.timestamp()
    if not math.isfinite(ts):
        raise ValueError("non-finite timestamp")
    return ts


def _read_generic(
    reader: Iterator[list[str]],
    header: Sequence[str],
    path: str,
    *,
    user_col: str,
    item_col: str,
    time_col: str,
    event_type_col: str | None,
    event_id_col: str | None,
    session_col: str | None,
    default_event_type: str,
    tie_order: TieOrder = "file",
    event_types: Mapping[str, str] | None = None,
) -> Dataset:
    iu, ii, it = (_col(header, c, path) for c in (user_col, item_col, time_col))
    rename = dict(event_types or {})
    if bad := sorted(set(rename.values()) - set(EVENT_WEIGHTS)):
        raise ValueError(f"event types can map only to {', '.join(EVENT_TYPES)}, not {bad}")
    # Optional columns may be absent from the header (e.g. a liverec file without ids).
    ie = header.index(event_type_col) if event_type_col in header else -1
    iid = header.index(event_id_col) if event_id_col in header else -1
    isess = header.index(session_col) if session_col in header else -1
    width = max(iu, ii, it, ie, iid, isess) + 1
    if event_type_col is not None and ie < 0 and event_type_col != "event_type":
        raise ValueError(f"{path}: no column {event_type_col!r} in header {list(header)!r}")
    b = _Builder(path, prefix="ev")
    known_types = set(EVENT_WEIGHTS)
    for line, row in enumerate(reader, start=2):
        if not row:
            continue  # blank line
        if len(row) < width:
            b.bad(line, "missing_field", f"expected {width} fields, got {len(row)}", row)
            continue
        user, item = row[iu].strip(), row[ii].strip()
        if not user or not item:
            b.bad(line, "missing_field", "empty user or item", row)
            continue
        try:
            ts = _parse_time(row[it].strip())
        except ValueError:
            b.bad(line, "bad_timestamp", f"{time_col} {row[it]!r}", row)
            continue
        etype = row[ie].strip() if ie >= 0 else default_event_type
        etype = rename.get(etype, etype)
        if etype not in known_types:
            b.bad(line, "bad_event_type", f"{etype!r}", row)
            continue
        event_id = row[iid].strip() if iid >= 0 else ""
        if not event_id:
            event_id = derive_event_id("ev", line, row)
        session = row[isess].strip() if isess >= 0 else ""
        b.add(line, event_id, user, item, etype, ts, session or None)
    return b.build(tie_order)
