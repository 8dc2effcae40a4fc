"""bench/bench_deep.py: argument mistakes are one-line argparse errors, the AUC its counts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_deep", ROOT / "bench" / "bench_deep.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ratings(tmp_path: Path) -> Path:
    rows = [f"{u},{(u * 7 + n * 4) % 60},4.0,{1_000_000 + 60 * (u * 40 + n)}"
            for u in range(30) for n in range(40)]
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(("extra", "why"), [
    (["--param", "nomodel.x=1"],
     "--param names models not evaluated: nomodel (evaluated: popularity, itemknn)"),
    (["--param", "itemknn.nope=1"], "itemknn does not take: nope (it takes: window"),
    (["--param", "itemknn.window"], "'itemknn.window' is not model.param=value"),
    (["--param", "window=3"], "'window=3' is not model.param=value"),
    (["--models", "popularity,itemnn"], "--models: unknown model 'itemnn'"),
    (["--preset", "movielenz"], "unknown preset 'movielenz'"),
    (["--auc-positives", "0"], "--auc-positives >= 1"),
    (["--auc-every", "-1"], "--auc-every must be >= 0"),
])
def test_mistakes_are_argparse_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      extra: list[str], why: str) -> None:
    args = [str(_ratings(tmp_path)), "--preset", "movielens", "--models", "popularity,itemknn",
            "--no-features", "--limit", "300", *extra]
    with pytest.raises(SystemExit) as exc:
        _bench().main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert why in err.splitlines()[-1], err
    assert "Traceback" not in err


def test_auc_comes_with_its_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    report = _bench().main([
        str(_ratings(tmp_path)), "--preset", "movielens", "--models", "popularity,ranked",
        "--no-features", "--batch-size", "200", "--auc-every", "1", "--auc-positives", "20",
        "--param", "ranked.warmup_examples=0", "--json", str(out)])
    r = report["models"]["ranked"]
    assert json.loads(out.read_text())["models"]["ranked"]["auc_positives"] == r["auc_positives"]
    # 6 sampled batches, at most 20 evaluable positives each; users' first events are
    # left out, and said so.
    assert 0 < r["auc_positives"] <= 6 * 20 and r["auc_negatives"] > 0
    assert r["auc_excluded"]["first_user_event"] > 0
    assert 0.0 <= r["auc"] <= 1.0
    assert "auc_positives" not in report["models"]["popularity"]
    printed = capsys.readouterr().out
    assert f"over {r['auc_positives']:,} positives, {r['auc_negatives']:,} negatives" in printed
