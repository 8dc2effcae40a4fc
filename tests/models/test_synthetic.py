"""The synthetic stream: determinism, shape, funnel, new items, sessions and drift."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from online_models.datasets import LIVEREC_COLUMNS, read_interactions
from online_models.itemknn import ItemKNN
from online_models.synthetic import generate_events, iter_events, write_csv


def popularity_psi(before: list[str], after: list[str], top: int = 20) -> float:
    """PSI of the item distribution over the reference window's top items + "other"."""
    ca, cb = Counter(before), Counter(after)
    keys = [k for k, _ in ca.most_common(top)]
    pa = np.array([ca[k] for k in keys] + [len(before) - sum(ca[k] for k in keys)], float)
    pb = np.array([cb[k] for k in keys] + [len(after) - sum(cb[k] for k in keys)], float)
    pa = np.clip(pa / len(before), 1e-4, None)
    pb = np.clip(pb / len(after), 1e-4, None)
    return float(((pb - pa) * np.log(pb / pa)).sum())


@pytest.fixture(scope="module")
def drifting() -> list[dict]:
    return generate_events(40_000, 400, 800, seed=11, drift_at=20_000)


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    a = generate_events(2_000, 50, 100, seed=5, drift_at=1_000)
    assert a == generate_events(2_000, 50, 100, seed=5, drift_at=1_000)
    b = generate_events(2_000, 50, 100, seed=6, drift_at=1_000)
    assert [e["item_id"] for e in a] != [e["item_id"] for e in b]


def test_shape_order_and_ids(drifting: list[dict]) -> None:
    assert len(drifting) == 40_000
    assert all(set(e) == set(LIVEREC_COLUMNS) for e in drifting[:100])
    ts = np.array([e["timestamp"] for e in drifting])
    assert bool((np.diff(ts) >= 0).all())
    assert len({e["event_id"] for e in drifting}) == len(drifting)
    assert len({e["user_id"] for e in drifting}) > 300
    assert len({e["item_id"] for e in drifting}) > 600


def test_funnel_is_a_funnel(drifting: list[dict]) -> None:
    c = Counter(e["event_type"] for e in drifting)
    assert c["view"] > c["click"] > c["add_to_cart"] > 0 and c["purchase"] > 0
    assert c["view"] > 0.5 * len(drifting)


def test_sessions_group_a_users_events(drifting: list[dict]) -> None:
    by_session: dict[str, set[str]] = {}
    for e in drifting:
        by_session.setdefault(e["session_id"], set()).add(e["user_id"])
    assert all(len(users) == 1 for users in by_session.values())
    mean_len = len(drifting) / len(by_session)
    assert 3.0 < mean_len < 10.0


def test_new_items_appear_over_time(drifting: list[dict]) -> None:
    first_seen: dict[str, int] = {}
    for n, e in enumerate(drifting):
        first_seen.setdefault(e["item_id"], n)
    late = sum(1 for n in first_seen.values() if n > 20_000)
    assert late > 40  # released items keep arriving in the second half


def test_drift_shows_in_popularity_psi_only_at_the_drift(drifting: list[dict]) -> None:
    items = [e["item_id"] for e in drifting]
    w = 5_000
    stable = [
        popularity_psi(items[s : s + w], items[s + w : s + 2 * w])
        for s in (0, 5_000, 10_000, 25_000, 30_000)
    ]
    across = popularity_psi(items[15_000:20_000], items[20_000:25_000])
    assert max(stable) < 0.1
    assert across > 0.2


def test_planted_structure_sequence_signal_beats_popularity() -> None:
    """A last-item co-occurrence counter beats global popularity by a wide margin."""
    ev = generate_events(15_000, 300, 600, seed=2)
    pop: Counter[str] = Counter()
    co: dict[str, Counter[str]] = {}
    seen: dict[str, set[str]] = {}
    last: dict[str, str] = {}
    hits_pop = hits_seq = 0
    for e in ev:
        u, i = e["user_id"], e["item_id"]
        s = seen.setdefault(u, set())
        if u in last:
            rec_pop = [x for x, _ in pop.most_common(10 + len(s)) if x not in s][:10]
            c = co.setdefault(last[u], Counter())
            rec_seq = [x for x, _ in c.most_common(10 + len(s)) if x not in s][:10]
            hits_pop += i in rec_pop
            hits_seq += i in rec_seq
            c[i] += 1
        pop[i] += 1
        s.add(i)
        last[u] = i
    assert hits_seq > 2 * hits_pop, (hits_seq, hits_pop)


def test_write_csv_round_trips_through_the_reader(tmp_path: Path) -> None:
    ev = generate_events(500, 20, 60, seed=9)
    for name in ("e.csv", "e.csv.gz"):
        assert write_csv(iter(ev), tmp_path / name) == 500
        ds = read_interactions(tmp_path / name, "liverec")
        assert not ds.invalid
        assert ds.event_ids == [e["event_id"] for e in ev]
        assert ds.items == [e["item_id"] for e in ev]
        assert ds.timestamps.tolist() == [e["timestamp"] for e in ev]
        assert ds.session_ids == [e["session_id"] for e in ev]


def test_iter_events_is_lazy_and_validates() -> None:
    it = iter_events(10**9, 10, 10, seed=0)
    assert next(it)["event_id"].startswith("ev0-")
    with pytest.raises(ValueError):
        next(iter_events(10, 0, 10))
    assert generate_events(0, 5, 5) == []


def test_generate_then_evaluate_through_the_cli(tmp_path: Path) -> None:
    import orjson
    from typer.testing import CliRunner

    from liverec.cli import app

    runner = CliRunner()
    data = tmp_path / "events.csv.gz"
    res = runner.invoke(
        app,
        [
            "generate",
            "--events",
            "3000",
            "--users",
            "80",
            "--items",
            "200",
            "--seed",
            "4",
            "--drift-at",
            "1500",
            "--out",
            str(data),
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(read_interactions(data)) == 3000

    report, plot = tmp_path / "r.json", tmp_path / "r.png"
    res = runner.invoke(
        app,
        [
            "evaluate",
            str(data),
            "--models",
            "popularity,itemknn",
            "--k",
            "5",
            "--batch-size",
            "128",
            "--limit",
            "2000",
            "--json",
            str(report),
            "--plot",
            str(plot),
        ],
    )
    assert res.exit_code == 0, res.output
    out = orjson.loads(report.read_bytes())
    assert (out["events"], out["batch_size"], out["k"]) == (2000, 128, 5)
    assert set(out["models"]) == {"popularity", "itemknn"}
    entry = out["models"]["itemknn"]
    for key in ("hr@5", "ndcg@5", "mrr@5", "precision@5", "coverage@5", "diversity@5"):
        assert 0.0 <= entry[key] <= 1.0
    assert entry["evaluated"] > 1000 and entry["learn_events_per_s"] > 0
    assert entry["hr@5"] > out["models"]["popularity"]["hr@5"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "hr@5" in res.output  # the summary table
    # What produced the figures: the code and each model's settings, defaults included.
    assert len(out["code"]["git_commit"]) == 40 and out["code"]["numpy"]
    assert out["hyperparameters"]["itemknn"]["window"] == ItemKNN().window
    assert out["model_params"] == {}  # only the arguments given
    # How sure: HR@K's interval over the users, and the best model against the other.
    lo, hi = entry["hr@5_ci95"]
    assert lo < entry["hr@5"] < hi and 0 < out["users_evaluated"] <= out["users"]
    (diff,) = out["hr_differences"]
    assert (diff["best"], diff["other"]) == ("itemknn", "popularity")
    assert diff["ci95"][0] <= diff["difference"] <= diff["ci95"][1]
    assert "95% CI" in res.output and "paired" in res.output
