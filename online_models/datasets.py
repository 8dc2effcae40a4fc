"""Interaction data sets from CSV files, in event-time order.

One reader serves both ``liverec replay`` (which turns rows into Kafka events) and
``liverec evaluate`` (which turns them into mini-batches). Presets:

``liverec``
    The synthetic CSV written by ``liverec generate``:
    ``event_id,user_id,item_id,event_type,timestamp,session_id`` (epoch seconds).
``movielens``
    MovieLens ``ratings.csv`` (``userId,movieId,rating,timestamp``). Every rating is
    one interaction; its event type comes from the rating so stronger opinions weigh
    more: rating < 3 -> ``view``, 3-3.5 -> ``click``, 4-4.5 -> ``add_to_cart``,
    5 -> ``purchase``. There are no sessions (``session_id`` is ``None``).
``online-retail``
    UCI Online Retail (``InvoiceNo,StockCode,Description,Quantity,InvoiceDate,
    UnitPrice,CustomerID,Country``). A line with a customer id, a positive quantity and
    an invoice not starting with ``C`` is one ``purchase`` of ``StockCode`` by
    ``CustomerID``; the invoice is the session. Other lines are *skipped* (counted by
    reason), not invalid. ``InvoiceDate`` (``YYYY-MM-DD HH:MM:SS``) is UK wall-clock
    time and is converted with the ``Europe/London`` zone.

Without a preset, name the columns (``user_col``, ``item_col``, ``time_col`` and
optionally ``event_type_col``, ``event_id_col``, ``session_col``); a time column may
hold epoch seconds or ISO-8601 text (naive times are taken as UTC). With neither, the
preset is guessed from the header.

Rows are sorted by timestamp. Rows with the same timestamp keep their file order,
except in MovieLens (``tie_order="hash"``, its default): there 16% of the ratings share
their second with the user's previous one, and the file lists them by movie id, an
order no user produced; a sequence model learned it (on the first 20,000 ratings, the
transition model's HR@10 was 6% higher with the file's order than with rows shuffled).
Such ties are put in the order of a hash of (user, item): fixed, and free of the file's
sort. ``tie_order="file"`` reproduces figures measured before (BENCHMARKS.md). A row
without an
``event_id`` gets one derived from its content and its line number, so replaying the
same file twice reproduces the same ids. Rows whose values cannot be parsed are kept
apart as :class:`InvalidRow` with a reason (the replay turns them into rejects).
Plain and gzip files are both read (detected from the file's first bytes).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple
from zoneinfo import ZoneInfo

import numpy as np

from online_models.base import Batch

__all__ = [
    "EVENT_TYPES",
    "EVENT_WEIGHTS",
    "INVALID_REASONS",
    "LIVEREC_COLUMNS",
    "PRESETS",
    "Dataset",
    "Interaction",
    "InvalidRow",
    "TieOrder",
    "detect_preset",
    "parse_event_types",
    "read_interactions",
    "to_batches",
]

#: order of rows with equal timestamps (see the module docstring)
TieOrder = Literal["file", "hash"]

#: Weight of each event type in learning (mirrors ``stream.events.EVENT_WEIGHTS``;
#: ``online_models`` may not import ``stream``).
EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}
EVENT_TYPES: tuple[str, ...] = tuple(EVENT_WEIGHTS)

#: Columns of the synthetic CSV (preset ``liverec``), in file order.
LIVEREC_COLUMNS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "timestamp",
    "session_id",
)

PRESETS: tuple[str, ...] = ("liverec", "movielens", "online-retail")

#: Bounded set of reasons an :class:`InvalidRow` may carry.
INVALID_REASONS: tuple[str, ...] = (
    "missing_field",
    "bad_timestamp",
    "bad_event_type",
    "bad_value",
)

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


class Interaction(NamedTuple):
    """One interaction row, as replayed or learned."""

    event_id: str
    user_id: str
    item_id: str
    event_type: str
    timestamp: float  # epoch seconds, event time
    session_id: str | None


@dataclass(frozen=True, slots=True)
class InvalidRow:
    """A row that could not be read: its 1-based line number, a reason, the raw fields."""

    line: int
    reason: str  # one of INVALID_REASONS
    detail: str
    raw: tuple[str, ...]


@dataclass
class Dataset:
    """Interactions in time order, column-wise, plus what was skipped or invalid.

    Iterating yields :class:`Interaction` rows; ``dataset[a:b]`` is a smaller
    :class:`Dataset`.

    >>> ds = Dataset.from_records([
    ...     {"user_id": "u1", "item_id": "i2", "timestamp": 20.0, "event_type": "click"},
    ...     {"user_id": "u1", "item_id": "i1", "timestamp": 10.0},
    ... ])
    >>> [(r.item_id, r.event_type) for r in ds]
    [('i1', 'view'), ('i2', 'click')]
    >>> len(ds), ds.n_users, ds.n_items
    (2, 1, 2)
    """

    name: str
    event_ids: list[str]
    users: list[str]
    items: list[str]
    event_types: list[str]
    timestamps: np.ndarray  # float64 epoch seconds, non-decreasing
    session_ids: list[str | None]
    skipped: Counter[str] = field(default_factory=Counter)
    invalid: list[InvalidRow] = field(default_factory=list)
    #: how rows with equal timestamps were ordered (see the module docstring)
    tie_order: TieOrder = "file"

    def __len__(self) -> int:
        return len(self.users)

    def __iter__(self) -> Iterator[Interaction]:
        return map(
            Interaction,
            self.event_ids,
            self.users,
            self.items,
            self.event_types,
            self.timestamps.tolist(),
            self.session_ids,
        )

    def __getitem__(self, index: slice) -> Dataset:
        if not isinstance(index, slice):
            raise TypeError("Dataset supports slices only; iterate for rows")
        return Dataset(
            name=self.name,
            event_ids=self.event_ids[index],
            users=self.users[index],
            items=self.items[index],
            event_types=self.event_types[index],
            timestamps=self.timestamps[index],
            session_ids=self.session_ids[index],
            skipped=Counter(self.skipped),
            invalid=list(self.invalid),
            tie_order=self.tie_order,
        )

    @property
    def n_users(self) -> int:
        return len(set(self.users))

    @property
    def n_items(self) -> int:
        return len(set(self.items))

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @classmethod
    def from_records(
        cls, records: Iterable[Mapping[str, object]], name: str = "records"
    ) -> Dataset:
        """Build from mappings with at least ``user_id``, ``item_id``, ``timestamp``.

        ``event_type`` defaults to ``view``, ``session_id`` to ``None``, and a missing
        ``event_id`` is derived as for files. Rows are sorted stably by time.
        """
        b = _Builder(name)
        for n, r in enumerate(records, start=1):
            session = r.get("session_id")
            b.add(
                n,
                str(r.get("event_id") or ""),
                str(r["user_id"]),
                str(r["item_id"]),
                str(r.get("event_type") or "view"),
                float(r["timestamp"]),  # type: ignore[arg-type]
                None if session in (None, "") else str(session),
            )
        return b.build()


# --------------------------------------------------------------------------- reading


def parse_event_types(spec: str) -> dict[str, str]:
    """``"like=click,buy=purchase"`` as ``{"like": "click", "buy": "purchase"}``: a
    file's own event types as liverec's (``read_interactions(event_types=...)``).

    >>> parse_event_types("like=click, buy=purchase")
    {'like': 'click', 'buy': 'purchase'}
    >>> parse_event_types("like=love")
    Traceback (most recent call last):
    ...
    ValueError: 'like=love': liverec's event types are view, click, add_to_cart, purchase
    """
    out: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        own, sep, ours = (x.strip() for x in part.partition("="))
        if not sep or not own:
            raise ValueError(f"{part!r}: give FILE_TYPE=LIVEREC_TYPE pairs, e.g. like=click")
        if ours not in EVENT_WEIGHTS:
            raise ValueError(f"{part!r}: liverec's event types are {', '.join(EVENT_TYPES)}")
        out[own] = ours
    return out


def read_interactions(
    path: str | Path,
    preset: str | None = None,
    *,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    event_type_col: str | None = None,
    event_id_col: str | None = None,
    session_col: str | None = None,
    default_event_type: str = "view",
    tie_order: TieOrder | None = None,
    event_types: Mapping[str, str] | None = None,
) -> Dataset:
    """Read a CSV (plain or gzip) of interactions into a time-ordered :class:`Dataset`.

    Parameters
    ----------
    path
        The CSV file.
    preset
        ``"liverec"``, ``"movielens"``, ``"online-retail"``, or ``None`` for custom
        columns (or, with no columns given either, a preset guessed from the header).
    user_col, item_col, time_col
        Column names for a custom file (required together when ``preset`` is ``None``
        and the header is not a known one); with the ``liverec`` preset they override
        its column names.
    event_type_col, event_id_col, session_col
        Optional columns for a custom file. Without ``event_type_col`` every row is a
        ``default_event_type``; without ``event_id_col`` ids are derived.
    event_types
        The file's own event types as liverec's (``{"like": "click", "buy":
        "purchase"}``), applied to the event-type column before it is checked; a row
        whose type is still none of :data:`EVENT_TYPES` is invalid (``bad_event_type``).
    tie_order
        Order of rows with equal timestamps: ``"file"`` or ``"hash"`` (of user and
        item; see the module docstring). Default: ``"hash"`` for MovieLens, whose file
        order within a second is its sort by movie id, else ``"file"``.

    Raises
    ------
    ValueError
        For an unknown preset, a missing column, or an unknown header without columns.
    """
    custom = any(c is not None for c in (user_col, item_col, time_col))
    with _open_text(path) as fh:
        reader = csv_rows(fh, path)
        header = _header(reader)
        if preset is None and not custom:
            preset = detect_preset(header)
            if preset is None:
                raise ValueError(
                    f"{path}: unknown header {header!r}; give --preset or "
                    "--user-col/--item-col/--time-col"
                )
        order: TieOrder = tie_order or ("hash" if preset == "movielens" else "file")
        if event_types and preset in ("movielens", "online-retail"):
            raise ValueError(f"the {preset} preset has no event types of its own to map "
                             "(event_types is for a file with an event-type column)")
        if preset == "movielens":
            return _read_movielens(reader, header, str(path), order)
        if preset == "online-retail":
            return _read_retail(reader, header, str(path), order)
        if preset == "liverec":
            return _read_generic(
                reader,
                header,
                str(path),
                user_col=user_col or "user_id",
                item_col=item_col or "item_id",
                time_col=time_col or "timestamp",
                event_type_col=event_type_col or "event_type",
                event_id_col=event_id_col or "event_id",
                session_col=session_col or "session_id",
                default_event_type=default_event_type,
                tie_order=order,
                event_types=event_types,
            )
        if preset is not None:
            raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
        if not (user_col and item_col and time_col):
            raise ValueError("custom columns need user_col, item_col and time_col")
        return _read_generic(
            reader,
            header,
            str(path),
            user_col=user_col,
            item_col=item_col,
            time_col=time_col,
            event_type_col=event_type_col,
            event_id_col=event_id_col,
            session_col=session_col,
            default_event_type=default_event_type,
            tie_order=order,
            event_types=event_types,
        )


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


def to_batches(
    dataset: Dataset,
    batch_size: int,
    weights: Mapping[str, float] = EVENT_WEIGHTS,
) -> Iterator[Batch]:
    """Consecutive mini-batches of ``dataset`` in time order, weighted by event type.

    Event types missing from ``weights`` weigh 1.

    >>> ds = Dataset.from_records(
    ...     {"user_id": "u", "item_id": f"i{n}", "timestamp": n, "event_type": "purchase"}
    ...     for n in range(5))
    >>> [len(b) for b in to_batches(ds, 2)], float(next(to_batches(ds, 2)).weights[0])
    ([2, 2, 1], 5.0)
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    n = len(dataset)
    users = np.empty(n, dtype=object)
    items = np.empty(n, dtype=object)
    users[:] = dataset.users
    items[:] = dataset.items
    get = weights.get
    w = np.fromiter((get(t, 1.0) for t in dataset.event_types), dtype=np.float32, count=n)
    ts = np.asarray(dataset.timestamps, dtype=np.float64)
    for start in range(0, n, batch_size):
        end = start + batch_size
        yield Batch(users[start:end], items[start:end], w[start:end], ts[start:end])


# --------------------------------------------------------------------------- internals


def csv_rows(fh: IO[str], path: str | Path) -> Iterator[list[str]]:
    """The CSV rows of ``fh``; a row the csv module cannot read (a field over its
    131,072-character limit) is a ``ValueError`` naming the file and line.

    >>> import io
    >>> list(csv_rows(io.StringIO('a,b\\n1,"' + "x" * 200_000 + '"\\n'), "f.csv"))
    Traceback (most recent call last):
    ...
    ValueError: f.csv: line 2: field larger than field limit (131072)
    """
    reader = csv.reader(fh)
    try:
        yield from reader
    except csv.Error as exc:
        raise ValueError(f"{path}: line {reader.line_num}: {exc}") from exc


def _open_text(path: str | Path) -> IO[str]:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def derive_event_id(prefix: str, line: int, fields: Sequence[str]) -> str:
    """Deterministic id from a row's line number and content.

    >>> derive_event_id("ml", 2, ["1", "1", "4.0"]) == derive_event_id("ml", 2, ["1", "1", "4.0"])
    True
    """
    digest = hashlib.blake2b("\x1f".join(fields).encode(), digest_size=8).hexdigest()
    return f"{prefix}-{line}-{digest}"


class _Builder:
    """Collects rows, then sorts them stably by time into a :class:`Dataset`."""

    def __init__(self, name: str, prefix: str = "ev") -> None:
        self.name = name
        self.prefix = prefix
        self.event_ids: list[str] = []
        self.users: list[str] = []
        self.items: list[str] = []
        self.types: list[str] = []
        self.ts: list[float] = []
        self.sessions: list[str | None] = []
        self.skipped: Counter[str] = Counter()
        self.invalid: list[InvalidRow] = []

    def add(
        self,
        line: int,
        event_id: str,
        user: str,
        item: str,
        etype: str,
        ts: float,
        session: str | None,
    ) -> None:
        if not event_id:
            event_id = derive_event_id(self.prefix, line, (user, item, etype, repr(ts)))
        self.event_ids.append(event_id)
        self.users.append(user)
        self.items.append(item)
        self.types.append(etype)
        self.ts.append(ts)
        self.sessions.append(session)

    def bad(self, line: int, reason: str, detail: str, raw: Sequence[str]) -> None:
        self.invalid.append(InvalidRow(line, reason, detail, tuple(raw)))

    def build(self, tie_order: TieOrder = "file") -> Dataset:
        ts = np.asarray(self.ts, dtype=np.float64)
        if tie_order == "hash":
            tie = np.fromiter((zlib.crc32(f"{u}\x1f{i}".encode())
                               for u, i in zip(self.users, self.items, strict=True)),
                              np.uint32, count=len(self.users))
            order = np.lexsort((tie, ts))
        else:
            order = np.argsort(ts, kind="stable")
        # Already-sorted files (the common case) skip the reordering copy.
        take = None if np.all(order == np.arange(len(order))) else order.tolist()

        def pick(xs: list[Any]) -> list[Any]:
            return xs if take is None else [xs[i] for i in take]

        return Dataset(
            name=self.name,
            event_ids=pick(self.event_ids),
            users=pick(self.users),
            items=pick(self.items),
            event_types=pick(self.types),
            timestamps=ts if take is None else ts[order],
            session_ids=pick(self.sessions),
            skipped=self.skipped,
            invalid=self.invalid,
            tie_order=tie_order,
        )


def _header(reader: Iterator[list[str]]) -> list[str]:
    """A CSV's first row ([] for an empty file), without a UTF-8 byte-order mark."""
    header = next(reader, [])
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    return header


def _col(header: Sequence[str], name: str, path: str) -> int:
    try:
        return list(header).index(name)
    except ValueError:
        raise ValueError(f"{path}: no column {name!r} in header {list(header)!r}") from None


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
