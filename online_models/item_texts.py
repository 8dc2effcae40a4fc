"""Item content read from a file, as tokens per item id (for
:class:`online_models.content.ItemFeatures`): MovieLens ``movies.csv``, the Online
Retail CSV's descriptions, or any catalogue as an ``item_id,text`` CSV."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from online_models.csv_files import _col, _header, _open_text, csv_rows
from online_models.datasets import detect_preset

__all__ = ["ITEM_TEXT_PRESETS", "RETAIL_CODE_CHARS", "item_texts_source", "read_item_texts"]


_MOVIES_HEADER = ("movieId", "title", "genres")
#: the plain item-content format: one row per item, its id and free text
_TEXT_HEADER = ("item_id", "text")
#: the columns each item-content format needs
_COLUMNS: dict[str, tuple[str, ...]] = {
    "movielens": _MOVIES_HEADER, "online-retail": ("StockCode", "Description"),
    "text": _TEXT_HEADER}
#: the item-content formats :func:`read_item_texts` reads
ITEM_TEXT_PRESETS: tuple[str, ...] = tuple(_COLUMNS)
#: leading characters of an Online Retail ``StockCode`` that name its product range (its
#: ``code:`` token); 4 chosen on the first 30% of the file over 3 and 4 together, and none
#: (content-kNN HR@10 0.2627, 0.2617 and 0.2365 there)
RETAIL_CODE_CHARS = 4


def read_item_texts(path: str | Path, preset: str | None = None) -> dict[str, list[str]]:
    """Content tokens per item id from a file, for :class:`online_models.content.ItemFeatures`.

    ``movielens``: ``movies.csv`` (``movieId,title,genres``; a path to ``ratings.csv``
    or to its directory finds ``movies.csv`` beside it): the title's words, one
    ``genre:<name>`` token per genre and a ``decade:<yyy0>`` token from the year in
    the title. ``online-retail``: the Online Retail CSV; the words of each
    ``StockCode``'s most frequent ``Description`` and a ``code:<first four characters>``
    token: this catalogue numbers a product range's items consecutively (22720 "cake
    tins pantry design", 22722 "spice tins pantry design", 22725 "alarm clock bakelike
    chocolate"), and on the first 30% of the file the next item shared those four
    characters with one of the user's last 10 items in 25% of the evaluated events,
    against 2% for a random item (BENCHMARKS.md). ``text``: any catalogue as a CSV with
    ``item_id`` and ``text`` columns (others ignored), the words of ``text``. ``None``
    guesses from the header.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "movies.csv")
    >>> _ = open(p, "w").write('movieId,title,genres\\n1,"Toy Story (1995)",Animation|Comedy\\n')
    >>> read_item_texts(p)["1"]
    ['toy', 'story', '1995', 'genre:animation', 'genre:comedy', 'decade:1990']
    >>> p = os.path.join(d, "catalogue.csv")
    >>> _ = open(p, "w").write('item_id,text,price\\nsku-1,"Red wool scarf",12\\n')
    >>> read_item_texts(p)
    {'sku-1': ['red', 'wool', 'scarf']}
    """
    from online_models.content import tokenize

    p, preset = item_texts_source(path, preset)
    out: dict[str, list[str]] = {}
    with _open_text(p) as fh:
        reader = csv_rows(fh, p)
        header = _header(reader)
        if preset == "movielens":
            im, it, ig = (_col(header, c, str(p)) for c in _MOVIES_HEADER)
            for row in reader:
                if len(row) <= max(im, it, ig) or not row[im]:
                    continue
                title = row[it]
                tokens = tokenize(title)
                genres = [g for g in row[ig].split("|") if g and g != "(no genres listed)"]
                tokens += ["genre:" + g.lower() for g in genres]
                year = re.search(r"\((\d{4})\)\s*$", title)
                if year:
                    tokens.append(f"decade:{year.group(1)[:3]}0")
                out[row[im]] = tokens
        elif preset == "online-retail":
            istock, idesc = (_col(header, c, str(p)) for c in ("StockCode", "Description"))
            seen: dict[str, Counter[str]] = {}
            for row in reader:
                if len(row) <= max(istock, idesc) or not row[istock] or not row[idesc].strip():
                    continue
                seen.setdefault(row[istock], Counter())[row[idesc].strip()] += 1
            for item, descs in seen.items():
                text = max(descs.items(), key=lambda kv: (kv[1], kv[0]))[0]
                out[item] = [*tokenize(text), f"code:{item[:RETAIL_CODE_CHARS]}"]
        else:
            ii, itx = (_col(header, c, str(p)) for c in _TEXT_HEADER)
            for row in reader:
                if len(row) > max(ii, itx) and row[ii] and row[itx].strip():
                    out[row[ii]] = tokenize(row[itx])
    return out


def item_texts_source(path: str | Path, preset: str | None = None) -> tuple[Path, str]:
    """The file :func:`read_item_texts` reads for ``path`` and its preset, from the
    header when ``preset`` is None. Reads the header only: a cheap check before a
    long start-up. Raises ``ValueError`` for a file neither preset reads, ``OSError``
    for one that cannot be opened."""
    p = Path(path)
    if p.is_dir():
        p = p / "movies.csv"
    elif preset == "movielens" and p.name != "movies.csv" and (p.parent / "movies.csv").exists():
        p = p.parent / "movies.csv"
    with _open_text(p) as fh:
        header = _header(csv_rows(fh, p))
    if preset is None and detect_preset(header) == "movielens" and (
            p.parent / "movies.csv").exists():  # ratings.csv: the movies beside it
        return item_texts_source(p.parent / "movies.csv", "movielens")
    columns = _COLUMNS
    if preset is None:
        preset = next((name for name, cols in columns.items() if set(cols) <= set(header)),
                      None)
    if preset not in columns:
        raise ValueError(
            f"{p}: item features are read as movielens (movies.csv: movieId,title,genres), "
            f"online-retail (StockCode,Description) or text (item_id,text); "
            + (f"got preset {preset!r}" if preset is not None else
               f"the header has none of these: {header[:6]}"))
    for c in columns[preset]:
        _col(header, c, str(p))  # a missing column: its ValueError
    return p, preset
