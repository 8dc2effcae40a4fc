"""Hashed content features, their loaders, and the content-kNN model."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from online_models import registry
from online_models.base import Batch
from online_models.content import ContentKNN, ItemFeatures, load_item_features, tokenize
from online_models.item_texts import read_item_texts


def test_tokens_similarity_and_updates() -> None:
    f = ItemFeatures.from_texts(
        {"a": "red wooden train", "b": "red wooden train", "c": "blue glass vase"}
    )
    assert np.isclose(f.similarity("a", "b"), 1.0)
    assert f.similarity("a", "c") == 0.0 and f.similarity("a", "missing") == 0.0
    v = f.version
    f.set_text("c", "red glass vase")
    assert f.version > v and f.similarity("a", "c") > 0.0
    assert tokenize("The T-Light, of 3!") == ["light"]


def test_features_round_trip_through_arrays() -> None:
    f = ItemFeatures.from_texts({"a": "one two", "b": ["genre:x", "two"], "c": ""}, n_buckets=256)
    g = ItemFeatures.from_arrays(f.to_arrays("f"), "f")
    for item in ("a", "b", "c"):
        for x, y in zip(f.tokens_of(item), g.tokens_of(item), strict=True):
            np.testing.assert_allclose(x, y)
    assert (g.n_buckets, g.max_tokens, len(g)) == (256, f.max_tokens, 3)


def test_movielens_and_retail_loaders(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n"
        '1,"Toy Story (1995)",Adventure|Animation\n'
        "2,Heat (1995),(no genres listed)\n"
    )
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n")
    texts = read_item_texts(tmp_path / "ratings.csv", "movielens")  # finds movies.csv
    assert texts["1"] == ["toy", "story", "1995", "genre:adventure", "genre:animation",
                          "decade:1990"]
    assert texts["2"] == ["heat", "1995", "decade:1990"]
    retail = tmp_path / "retail.csv.gz"
    with gzip.open(retail, "wt") as fh:
        fh.write(
            "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
            "1,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,UK\n"
            "2,85123A,CREAM HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,UK\n"
            "3,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,UK\n"
            "4,POST,,1,2010-12-01 08:26:00,2.55,17850,UK\n"
        )
    f = load_item_features(retail)  # preset from the header
    assert len(f) == 1 and "85123A" in f
    retail_texts = read_item_texts(retail, "online-retail")
    # the most frequent description's words, then the product range from the code
    assert retail_texts["85123A"] == ["white", "hanging", "heart", "light", "holder",
                                      "code:8512"]


def _catalogue() -> ItemFeatures:
    return ItemFeatures.from_texts(
        {
            "lamp": "brass reading lamp green shade",
            "lamp-new": "brass reading lamp green shade large",
            "desk": "oak writing desk",
            **{f"decoy{k}": f"decoy{k} thing{k}" for k in range(20)},
        }
    )


def _clicks() -> Batch:
    users = [f"u{k}" for k in range(20) for _ in range(2)]
    items = [x for k in range(20) for x in (f"decoy{k}", "lamp" if k % 2 else "desk")]
    return Batch.from_columns(users, items, timestamps=np.arange(40, dtype=float))


def test_new_item_with_similar_content_is_recommended_before_its_first_click() -> None:
    m = ContentKNN(catalog_from_features=True)
    m.set_item_features(_catalogue())
    m.learn(_clicks())
    assert m.items.get("lamp-new") >= 0
    # A user who clicked the lamp gets its unclicked look-alike first.
    assert m.recommend("x", 1, history=["lamp"], exclude=["lamp"])[0][0] == "lamp-new"
    assert m.similar("lamp-new", 1)[0][0] == "lamp"


def test_similar_works_for_an_item_with_no_clicks_yet() -> None:
    m = ContentKNN()  # catalogue = streamed items only
    m.set_item_features(_catalogue())
    m.learn(_clicks())
    assert m.items.get("lamp-new") == -1
    assert m.similar("lamp-new", 1)[0][0] == "lamp"
    assert m.similar("unknown-item", 5) == []


def test_content_knn_state_keeps_features() -> None:
    m = ContentKNN()
    m.set_item_features(_catalogue())
    m.learn(_clicks())
    rebuilt = registry.from_state(m.get_state())
    np.testing.assert_array_equal(rebuilt.score_all("u1", ["lamp"]), m.score_all("u1", ["lamp"]))
    assert rebuilt.similar("lamp-new", 3) == m.similar("lamp-new", 3)


def test_evaluate_gives_item_features_and_splits_the_report(tmp_path: Path) -> None:
    import orjson
    from typer.testing import CliRunner

    from liverec.cli import app

    genres = ["Comedy", "Drama", "Horror", "Western"]
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{m},Film {m} ({1950 + m % 50}),{genres[m % 4]}\n" for m in range(60)))
    rows = [f"{u},{(u * 7 + n * 4) % 60},4.0,{1_000_000 + 60 * (u * 40 + n)}"
            for u in range(30) for n in range(40)]
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    report = tmp_path / "r.json"
    res = CliRunner().invoke(app, [
        "evaluate", str(tmp_path / "ratings.csv"), "--preset", "movielens",
        "--models", "popularity,content-knn,hybrid",
        "--item-features", str(tmp_path / "ratings.csv"), "--json", str(report)])
    assert res.exit_code == 0, res.output
    assert "content of 60 items" in res.output and "content-knn" in res.output
    out = orjson.loads(report.read_bytes())
    assert out["split_events"] == 512  # 30% of 1,200 events, cut at the batch boundary
    for entry in out["models"].values():
        n1, n2 = entry["evaluated_first"], entry["evaluated_rest"]
        assert n1 + n2 == entry["evaluated"] > 0
        whole = (entry["hr@10_first"] * n1 + entry["hr@10_rest"] * n2) / (n1 + n2)
        assert whole == pytest.approx(entry["hr@10"])


def test_evaluate_takes_model_params_and_refuses_bad_ones(tmp_path: Path) -> None:
    import orjson
    from typer.testing import CliRunner

    from liverec.cli import app

    rows = [f"{u},{(u * 7 + n * 4) % 60},4.0,{1_000_000 + 60 * (u * 40 + n)}"
            for u in range(30) for n in range(40)]
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    base = ["evaluate", str(tmp_path / "ratings.csv"), "--preset", "movielens",
            "--models", "popularity,itemknn,hybrid"]
    reports = {}
    for label, comps in (("two", ["popularity", "itemknn"]),
                         ("three", ["popularity", "itemknn", "sequence"])):
        report = tmp_path / f"{label}.json"
        params = orjson.dumps({"hybrid": {"components": comps}}).decode()
        res = CliRunner().invoke(app, [*base, "--model-params", params, "--json", str(report)])
        assert res.exit_code == 0, res.output
        reports[label] = orjson.loads(report.read_bytes())
        assert reports[label]["model_params"] == {"hybrid": {"components": comps}}
    # The components change the hybrid's blend, not the models evaluated beside it.
    def hr(label: str, model: str) -> float:
        return float(reports[label]["models"][model]["hr@10"])

    assert hr("two", "itemknn") == hr("three", "itemknn")
    assert hr("two", "hybrid") != hr("three", "hybrid")
    for bad, why in (("{", "not JSON"), ('{"bpr": {}}', "not evaluated"),
                     ('{"hybrid": 3}', "must be"), ('{"itemknn": {"nope": 1}}', "nope")):
        res = CliRunner().invoke(app, [*base, "--model-params", bad])
        assert res.exit_code == 2, (bad, res.output)
        assert why in res.output, (bad, res.output)


def test_hybrid_hands_features_to_its_private_components_only() -> None:
    features = ItemFeatures.from_texts({"a": "red lamp", "b": "red lamp shade"})
    comps = {"components": ["popularity", "itemknn", "content-knn"]}
    alone = registry.create("hybrid", **comps)
    alone.set_item_features(features)  # type: ignore[attr-defined]
    assert alone.models["content-knn"].features is features  # type: ignore[attr-defined]
    bound = registry.create_models(["popularity", "itemknn", "content-knn", "hybrid"],
                                   {"hybrid": comps})
    bound["hybrid"].set_item_features(features)  # type: ignore[attr-defined]
    assert bound["content-knn"].features is None  # type: ignore[attr-defined]
    assert sorted(registry.give_item_features(bound, features)) == ["content-knn", "hybrid"]
    assert bound["content-knn"].features is features  # type: ignore[attr-defined]


def test_merge_missing_keeps_newer_content() -> None:
    mine = ItemFeatures.from_texts({"a": "blue vase"})
    added = mine.merge_missing(ItemFeatures.from_texts({"a": "red lamp", "b": "red lamp"}))
    assert added == 1 and mine.similarity("a", "b") == 0.0
    with pytest.raises(ValueError, match="bucket spaces"):
        mine.merge_missing(ItemFeatures(n_buckets=8))
