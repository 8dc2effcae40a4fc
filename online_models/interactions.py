"""Interaction rows in time order: :class:`Dataset` and its rows, and mini-batches of it.

:class:`Dataset` holds interactions column-wise, with what a reader skipped or found
invalid; :func:`to_batches` cuts it into mini-batches weighted by event type. The CSV
readers that build one are in :mod:`online_models.datasets`, which re-exports
everything here.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

from online_models.base import Batch

__all__ = [
    "EVENT_TYPES",
    "EVENT_WEIGHTS",
    "INVALID_REASONS",
    "Dataset",
    "Interaction",
    "InvalidRow",
    "TieOrder",
    "derive_event_id",
    "to_batches",
]

#: order of rows with equal timestamps (see :mod:`online_models.datasets`)
TieOrder = Literal["file", "hash"]

#: Weight of each event type in learning (mirrors ``stream.events.EVENT_WEIGHTS``;
#: ``online_models`` may not import ``stream``).
EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}
EVENT_TYPES: tuple[str, ...] = tuple(EVENT_WEIGHTS)

#: Bounded set of reasons an :class:`InvalidRow` may carry.
INVALID_REASONS: tuple[str, ...] = (
    "missing_field",
    "bad_timestamp",
    "bad_event_type",
    "bad_value",
)


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
    #: how rows with equal timestamps were ordered (see :mod:`online_models.datasets`)
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


def to_batches(
    dataset: Dataset,
    batch_size: int,
    weights: Mapping[str, float] = EVENT_WEIGHTS,
    whole_ties: bool = False,
) -> Iterator[Batch]:
    """Consecutive mini-batches of ``dataset`` in time order, weighted by event type.

    Event types missing from ``weights`` weigh 1. With ``whole_ties`` a batch never
    ends between two events of the same timestamp (it grows past ``batch_size``
    instead), so events that arrive together are scored before any of them is learned.

    >>> ds = Dataset.from_records(
    ...     {"user_id": "u", "item_id": f"i{n}", "timestamp": n // 2, "event_type": "purchase"}
    ...     for n in range(5))
    >>> [len(b) for b in to_batches(ds, 3)], float(next(to_batches(ds, 2)).weights[0])
    ([3, 2], 5.0)
    >>> [len(b) for b in to_batches(ds, 3, whole_ties=True)]
    [4, 1]
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
    start = 0
    while start < n:
        end = min(start + batch_size, n)
        if whole_ties and end < n and ts[end] == ts[end - 1]:
            end = int(np.searchsorted(ts, ts[end - 1], side="right"))
        yield Batch(users[start:end], items[start:end], w[start:end], ts[start:end])
        start = end


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
