"""Reading CSV files: plain or gzip, a header without its byte-order mark, columns by
name, and parse errors that name the file and line. Shared by the interaction readers
(:mod:`online_models.datasets`) and the item-content reader
(:mod:`online_models.item_texts`)."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

__all__ = ["csv_rows"]


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
