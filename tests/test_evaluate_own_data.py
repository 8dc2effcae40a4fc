"""`liverec evaluate` on a catalogue of one's own: its event types mapped, its item
text read, and what the figures leave out said plainly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from liverec import cli
from online_models.datasets import Dataset, read_interactions
from online_models.item_texts import item_texts_source, read_item_texts


@pytest.fixture
def own(tmp_path: Path) -> Path:
    """40 users; types like / buy / view; item s<i> has a colour of three as text."""
    rows = ["uid,sku,ts,kind"]
    kinds = ("like", "buy", "view")
    for t in range(1200):
        rows.append(f"u{t % 40},s{(t * 7 + t // 40) % 30},{1_600_000_000 + t},{kinds[t % 3]}")
    (tmp_path / "own.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "catalogue.csv").write_text(
        "item_id,text,price\n"
        + "".join(f"s{i},{('red', 'green', 'blue')[i % 3]} thing,1\n" for i in range(30)))
    return tmp_path


def _evaluate(args: list[str]) -> str:
    """The command's output, one space between words (wrapped lines joined)."""
    result = CliRunner().invoke(cli.app, ["evaluate", *args])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_event_types_are_mapped_and_unmapped_ones_are_counted(own: Path) -> None:
    def read(event_types: dict[str, str] | None = None) -> Dataset:
        return read_interactions(own / "own.csv", user_col="uid", item_col="sku",
                                 time_col="ts", event_type_col="kind", event_types=event_types)

    plain = read()
    assert (len(plain), len(plain.invalid)) == (400, 800)  # only the views are liverec's
    mapped = read({"like": "click", "buy": "purchase"})
    assert (len(mapped), len(mapped.invalid)) == (1200, 0)
    assert sorted(set(mapped.event_types)) == ["click", "purchase", "view"]
    with pytest.raises(ValueError, match="can map only to"):
        read({"like": "love"})
    ratings = own / "ratings.csv"  # a preset's file has no event types to map
    ratings.write_text("userId,movieId,rating,timestamp\n1,1,4,1\n")
    with pytest.raises(ValueError, match="movielens preset has no event types"):
        read_interactions(ratings, "movielens", event_types={"like": "click"})


def test_a_catalogue_of_ones_own_is_read_as_text(own: Path, tmp_path: Path) -> None:
    assert item_texts_source(own / "catalogue.csv") == (own / "catalogue.csv", "text")
    assert read_item_texts(own / "catalogue.csv")["s4"] == ["green", "thing"]
    # MovieLens's ratings.csv finds the movies beside it without a preset
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,1\n")
    (tmp_path / "ml" / "movies.csv").write_text("movieId,title,genres\n1,Heat (1995),Crime\n")
    assert item_texts_source(tmp_path / "ml" / "ratings.csv")[1] == "movielens"


def test_evaluate_says_what_its_figures_leave_out(own: Path, tmp_path: Path) -> None:
    base = [str(own / "own.csv"), "--user-col", "uid", "--item-col", "sku", "--time-col",
            "ts", "--event-type-col", "kind", "--split", "0"]
    models = ["--models", "popularity,content-knn,hybrid", "--model-params",
              '{"hybrid": {"components": ["popularity", "content-knn"]}}']
    said = _evaluate([*base, *models, "--json", str(tmp_path / "a.json")])
    assert "800 of 1,200 rows (66.7%) are invalid and left out: 800 bad_event_type" in said
    assert "map yours with --event-types" in said
    assert "warning: content-knn ranks by item content, and none is given" in said
    assert "* learn ev/s and score ms: hybrid's own time; the models it shares " \
           "(content-knn, popularity)" in said
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["models"]["hybrid"]["timings_exclude"] == ["content-knn", "popularity"]
    assert report["events"] == 400
    # what each component contributes, as the blend ends
    blend = report["models"]["hybrid"]["blend_weights"]
    assert set(blend) == {"popularity", "content-knn"} and sum(blend.values()) > 0
    assert "blend_weights" not in report["models"]["popularity"]
    assert "hybrid's blend at the end: popularity " in said

    said = _evaluate([*base, *models, "--event-types", "like=click,buy=purchase",
                      "--item-features", str(own / "catalogue.csv"),
                      "--json", str(tmp_path / "b.json")])
    assert "invalid" not in said and "none is given" not in said
    assert "content of 30 items" in said
    assert json.loads((tmp_path / "b.json").read_text())["events"] == 1200


def test_a_click_model_reports_its_auc_with_the_clicks_it_rests_on(
        own: Path, tmp_path: Path) -> None:
    said = _evaluate([str(own / "own.csv"), "--user-col", "uid", "--item-col", "sku",
                      "--time-col", "ts", "--event-type-col", "kind", "--event-types",
                      "like=click,buy=purchase", "--models", "popularity,itemknn,ranked",
                      "--model-params", '{"ranked": {"components": ["popularity", "itemknn"]}}',
                      "--batch-size", "16", "--split", "0", "--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())["models"]
    ranked = report["ranked"]
    assert "auc" not in report["itemknn"]  # no click head: no AUC
    assert 0 < ranked["auc_positives"] <= 3 * 64  # batches 20, 40, 60 of 75 sampled
    assert ranked["auc_negatives"] >= ranked["auc_positives"]
    assert 0.0 <= ranked["auc"] <= 1.0
    assert f"ranked: click AUC {ranked['auc']:.4f} over {ranked['auc_positives']:,} " \
           "evaluable clicks" in said
