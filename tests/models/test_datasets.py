"""CSV presets, custom columns, ordering, ids and invalid rows of ``online_models.datasets``."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from online_models.datasets import (
    EVENT_WEIGHTS,
    Dataset,
    read_interactions,
    to_batches,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MOVIELENS = DATA / "movielens-small" / "ratings.csv"
RETAIL = DATA / "online-retail" / "online_retail.csv.gz"


def _write(path: Path, text: str, gz: bool = False) -> Path:
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


LIVEREC_CSV = (
    "event_id,user_id,item_id,event_type,timestamp,session_id\n"
    "e1,u1,i1,view,100.5,s1\n"
    "e2,u2,i2,purchase,50,s2\n"
    "e3,u1,i3,click,100.5,\n"
    "e4,u3,i1,teleport,70,s3\n"
    "e5,u3,,view,70,s3\n"
    "e6,u3,i2,view,yesterday,s3\n"
)


@pytest.mark.parametrize("gz", [False, True])
def test_liverec_preset_sorts_stably_and_reports_invalid_rows(tmp_path: Path, gz: bool) -> None:
    path = _write(tmp_path / ("a.csv.gz" if gz else "a.csv"), LIVEREC_CSV, gz=gz)
    ds = read_interactions(path, "liverec")
    rows = list(ds)
    assert [r.event_id for r in rows] == ["e2", "e1", "e3"]  # e1/e3 tie: file order kept
    assert rows[0].timestamp == 50.0 and rows[0].event_type == "purchase"
    assert rows[2].session_id is None and rows[1].session_id == "s1"
    assert [(b.line, b.reason) for b in ds.invalid] == [
        (5, "bad_event_type"),
        (6, "missing_field"),
        (7, "bad_timestamp"),
    ]
    assert ds.invalid[0].raw == ("e4", "u3", "i1", "teleport", "70", "s3")


def test_preset_is_guessed_from_the_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", LIVEREC_CSV)
    assert [r.event_id for r in read_interactions(path)] == ["e2", "e1", "e3"]
    with pytest.raises(ValueError, match="unknown header"):
        read_interactions(_write(tmp_path / "b.csv", "x,y\n1,2\n"))
    with pytest.raises(ValueError, match="unknown preset"):
        read_interactions(path, "netflix")


def test_custom_columns_with_iso_times_and_derived_ids(tmp_path: Path) -> None:
    text = (
        "who,what,when,kind\n"
        "a,x,2024-01-01T00:00:10Z,click\n"
        "b,y,2024-01-01T00:00:00,view\n"
        "a,y,1704067205,purchase\n"
    )
    path = _write(tmp_path / "c.csv", text)
    ds = read_interactions(
        path, user_col="who", item_col="what", time_col="when", event_type_col="kind"
    )
    assert [(r.user_id, r.item_id, r.event_type) for r in ds] == [
        ("b", "y", "view"),
        ("a", "y", "purchase"),
        ("a", "x", "click"),
    ]
    assert ds.timestamps.tolist() == [1704067200.0, 1704067205.0, 1704067210.0]
    again = read_interactions(
        path, user_col="who", item_col="what", time_col="when", event_type_col="kind"
    )
    assert ds.event_ids == again.event_ids  # a re-replay reproduces the ids
    assert len(set(ds.event_ids)) == 3
    no_type = read_interactions(path, user_col="who", item_col="what", time_col="when")
    assert set(no_type.event_types) == {"view"}
    with pytest.raises(ValueError, match="no column 'nope'"):
        read_interactions(path, user_col="nope", item_col="what", time_col="when")


def test_online_retail_rules_on_a_small_file(tmp_path: Path) -> None:
    text = (
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n"
        "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527,United Kingdom\n"
        "536366,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85,,United Kingdom\n"
        "536367,22634,WARMER,0,2010-12-01 08:28:00,1.85,13047,United Kingdom\n"
        "536368,22635,WARMER,2,2011-06-01 12:00:00,1.85,13047.0,United Kingdom\n"
        "536369,22636,WARMER,2,not a date,1.85,13047,United Kingdom\n"
    )
    ds = read_interactions(_write(tmp_path / "r.csv", text), "online-retail")
    assert [(r.user_id, r.item_id, r.session_id, r.event_type) for r in ds] == [
        ("17850", "85123A", "536365", "purchase"),
        ("13047", "22635", "536368", "purchase"),
    ]
    # Winter is GMT, summer BST (UTC+1): local wall-clock converted with Europe/London.
    assert ds.timestamps.tolist() == [1291191960.0, 1306926000.0]
    assert ds.skipped == {"cancelled": 1, "no_customer": 1, "non_positive_quantity": 1}
    assert [b.reason for b in ds.invalid] == ["bad_timestamp"]


def test_to_batches_weights_and_sizes() -> None:
    ds = Dataset.from_records(
        {
            "user_id": f"u{n % 3}",
            "item_id": f"i{n}",
            "timestamp": float(n),
            "event_type": ("view", "click", "add_to_cart", "purchase")[n % 4],
        }
        for n in range(10)
    )
    batches = list(to_batches(ds, 4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert batches[0].weights.tolist() == [
        EVENT_WEIGHTS[t] for t in ("view", "click", "add_to_cart", "purchase")
    ]
    assert batches[2].users.tolist() == ["u2", "u0"]
    assert len(ds[2:5]) == 3 and ds[2:5].items == ["i2", "i3", "i4"]
    with pytest.raises(ValueError):
        next(to_batches(ds, 0))


@pytest.mark.data
@pytest.mark.skipif(not MOVIELENS.exists(), reason="shared MovieLens data not present")
def test_movielens_full_file() -> None:
    ds = read_interactions(MOVIELENS, "movielens")
    assert len(ds) == 100_836 and not ds.invalid and ds.n_skipped == 0
    assert ds.n_users == 610 and ds.n_items == 9_724
    assert bool((ds.timestamps[1:] >= ds.timestamps[:-1]).all())
    assert set(ds.event_types) == set(EVENT_WEIGHTS)
    assert len(set(ds.event_ids)) == len(ds)


@pytest.mark.data
@pytest.mark.skipif(not RETAIL.exists(), reason="shared Online Retail data not present")
def test_online_retail_full_file() -> None:
    ds = read_interactions(RETAIL, "online-retail")
    assert len(ds) == 397_924 and not ds.invalid
    assert ds.skipped == {"no_customer": 134_697, "cancelled": 9_288}
    assert ds.n_users == 4_339
    assert set(ds.event_types) == {"purchase"}
    assert bool((ds.timestamps[1:] >= ds.timestamps[:-1]).all())


def test_epoch_milliseconds_read_as_seconds_and_sort_with_seconds(tmp_path: Path) -> None:
    # The event contract's rule (stream.events.parse_timestamp): >= 1e11 is ms. Replay
    # paces on these times, so a ms file was paced 1000x too slowly.
    text = ("user_id,item_id,timestamp\n"
            "a,x,1700000002000\n"   # ms: 2 s after the next row
            "b,y,1700000000\n"      # s
            "c,z,1700000001500\n")  # ms
    ds = read_interactions(_write(tmp_path / "ms.csv", text), "liverec")
    assert [r.user_id for r in ds] == ["b", "c", "a"]
    assert ds.timestamps.tolist() == [1700000000.0, 1700000001.5, 1700000002.0]


def test_movielens_ties_are_not_in_the_files_movie_id_order(tmp_path: Path) -> None:
    """A second's ratings are listed by movie id in MovieLens, an order no user made; a
    sequence model learned it. Ties come in a hash order, whatever the file's order;
    ``tie_order="file"`` keeps the old one. Online Retail's invoice lines keep theirs."""
    rows = [f"1,{m},4.0,1000" for m in range(1, 21)] + ["1,99,3.0,999", "2,5,5.0,1000"]
    header = "userId,movieId,rating,timestamp\n"
    by_id = read_interactions(_write(tmp_path / "a.csv", header + "\n".join(rows) + "\n"),
                              "movielens")
    reversed_file = _write(tmp_path / "b.csv", header + "\n".join(rows[::-1]) + "\n")
    again = read_interactions(reversed_file, "movielens")
    assert by_id.tie_order == "hash"
    assert [(r.user_id, r.item_id) for r in by_id] == [(r.user_id, r.item_id) for r in again]
    assert by_id.items[0] == "99"  # time still comes first
    tied = [r.item_id for r in by_id if r.user_id == "1"][1:]
    assert sorted(tied, key=int) == [str(m) for m in range(1, 21)]
    assert tied != sorted(tied, key=int)  # not the file's sort by movie id
    kept = read_interactions(tmp_path / "a.csv", "movielens", tie_order="file")
    assert kept.tie_order == "file"
    assert [r.item_id for r in kept if r.user_id == "1"][1:] == [str(m) for m in range(1, 21)]
    assert kept[:3].tie_order == "file"
    retail = read_interactions(_write(tmp_path / "r.csv", (
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536365,B,X,1,2010-12-01 08:26:00,1,17850,United Kingdom\n"
        "536365,A,X,1,2010-12-01 08:26:00,1,17850,United Kingdom\n")), "online-retail")
    assert retail.items == ["B", "A"] and retail.tie_order == "file"
