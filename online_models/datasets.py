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

This module holds :func:`read_interactions` and :func:`parse_event_types` and
re-exports the parts, which live beside it: :mod:`online_models.interactions`
(:class:`Dataset`, its rows, :func:`to_batches`), :mod:`online_models.csv_readers`
(the reader of each preset, :func:`detect_preset`) and :mod:`online_models.csv_files`
(opening and reading CSV files).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from online_models.csv_files import _header, _open_text, csv_rows
from online_models.csv_readers import (
    MS_THRESHOLD,
    _read_generic,
    _read_movielens,
    _read_retail,
    detect_preset,
)
from online_models.interactions import (
    EVENT_TYPES,
    EVENT_WEIGHTS,
    INVALID_REASONS,
    Dataset,
    Interaction,
    InvalidRow,
    TieOrder,
    derive_event_id,
    to_batches,
)

__all__ = [
    "EVENT_TYPES",
    "EVENT_WEIGHTS",
    "INVALID_REASONS",
    "LIVEREC_COLUMNS",
    "MS_THRESHOLD",
    "PRESETS",
    "Dataset",
    "Interaction",
    "InvalidRow",
    "TieOrder",
    "csv_rows",
    "derive_event_id",
    "detect_preset",
    "parse_event_types",
    "read_interactions",
    "to_batches",
]

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
