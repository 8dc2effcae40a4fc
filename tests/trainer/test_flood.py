"""The flood guard: pure logic, and a planted click flood through the trainer's batch path."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from online_models.base import pack_strings
from online_models.synthetic import generate_events
from stream.columns import EventColumns
from stream.settings import KafkaSettings
from trainer import Trainer, TrainerSettings
from trainer.flood import LATE_WINDOWS, FloodGuard, FloodSettings
from trainer.source import PolledBatch

FLOOD_ITEM = "flood-item"


def test_caps_users_repeats_and_item_share() -> None:
    g = FloodGuard(FloodSettings(user_events=3, pair_events=2, item_share=0.5, item_min=2))
    users = ["u", "u", "u", "u", "v", "v", "w", "x", "y"]
    items = ["a", "a", "a", "b", "c", "d", "z", "z", "z"]
    keep, why = g.admit(users, items, np.arange(len(users), dtype=np.float64))
    # u: 2 on "a" pass, the third is a repeat, then "b" passes (3 events); w/x on "z"
    # pass (z holds 2 of 8 learned), y's "z" would hold >= half... 2 >= 0.5 * 9: no.
    assert keep.tolist() == [True, True, False, True, True, True, True, True, True]
    assert why == {"repeat": 1}
    keep, why = g.admit(["u"], ["e"], np.array([9.0]))
    assert keep.tolist() == [False] and why == {"user_rate": 1}


def test_windows_slide_in_event_time() -> None:
    g = FloodGuard(FloodSettings(user_events=2, window_s=60, item_share=1.0))
    assert g.admit(["u", "u"], ["a", "b"], np.array([0.0, 1.0]))[0].all()
    assert not g.admit(["u"], ["c"], np.array([30.0]))[0].any()
    # Two windows later nothing of the first one is left.
    assert g.admit(["u", "u"], ["d", "e"], np.array([130.0, 131.0]))[0].all()


def test_verdicts_do_not_depend_on_batch_boundaries_and_survive_snapshots() -> None:
    rows = generate_events(3000, 40, 30, seed=4)
    users = [r["user_id"] for r in rows]
    items = [r["item_id"] for r in rows]
    ts = np.asarray([r["timestamp"] for r in rows], np.float64) / 20.0  # dense: caps bite
    settings = FloodSettings(user_events=20, pair_events=3, item_share=0.1, item_min=10)
    whole, why = FloodGuard(settings).admit(users, items, ts)
    assert sum(why.values()) > 0
    split = FloodGuard(settings)
    parts = []
    for lo, hi in [(0, 7), (7, 1000), (1000, 1001), (1001, 3000)]:
        if lo == 1000:  # restore from arrays mid-stream, as after a restart
            again = FloodGuard(settings)
            again.load_arrays(split.to_arrays())
            split = again
        parts.append(split.admit(users[lo:hi], items[lo:hi], ts[lo:hi])[0])
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_honest_synthetic_traffic_passes_whole() -> None:
    rows = generate_events(100_000, 20_000, 20_000, seed=0)
    keep, why = FloodGuard(FloodSettings()).admit(
        [r["user_id"] for r in rows], [r["item_id"] for r in rows],
        np.asarray([r["timestamp"] for r in rows], np.float64))
    assert keep.all(), why


# --------------------------------------------------------------------------- the flood


def _batches(rows: list[dict[str, object]]) -> list[PolledBatch]:
    out = []
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        cols = EventColumns(
            positions=list(range(len(chunk))),
            event_ids=[str(r["event_id"]) for r in chunk],
            users=[str(r["user_id"]) for r in chunk],
            items=[str(r["item_id"]) for r in chunk],
            sessions=[None] * len(chunk),
            weights=np.full(len(chunk), 2.0, np.float32),
            timestamps=np.asarray([r["timestamp"] for r in chunk], np.float64),
        )
        out.append(PolledBatch(cols, [], {("clicks", 0): start + len(chunk)},
                               {("clicks", 0): start}, len(chunk)))
    return out


MODELS = ("popularity", "itemknn")


def _run(tmp: Path, rows: list[dict[str, object]], guard: bool
         ) -> dict[str, tuple[float, float]]:
    """Per model: (share of honest users with the flood item in their top 10, HR@10)."""
    settings = TrainerSettings(snapshots=tmp, models="popularity,itemknn", metrics_port=-1,
                               eval_sample=1.0, eval_cpu_share=0, drift_adapt=False)
    t = Trainer(settings, KafkaSettings(topic="clicks"),
                flood=FloodSettings(enabled=guard))
    for b in _batches(rows):
        t.handle(b)
    honest = sorted({str(r["user_id"]) for r in rows if str(r["user_id"]).startswith("u")})
    users = honest[:: max(1, len(honest) // 400)]
    out = {}
    for model in MODELS:
        entered = sum(
            any(item == FLOOD_ITEM
                for item, _ in t.models[model].recommend(u, 10, history=t.history.get(u)))
            for u in users)
        out[model] = (entered / len(users), t.evaluator.totals(model)["hr"])
    return out


@pytest.mark.slow
def test_a_click_flood_stays_out_of_honest_top_lists(tmp_path: Path) -> None:
    honest = generate_events(20_000, 2_000, 1_000, seed=11)
    t0 = float(honest[10_000]["timestamp"])  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    flood = [{"event_id": f"f{k}", "user_id": f"fake{k % 100}", "item_id": FLOOD_ITEM,
              "timestamp": t0 + float(x)}
             for k, x in enumerate(np.sort(rng.uniform(0, 60, 50_000)))]
    flooded = sorted(honest + flood, key=lambda r: float(r["timestamp"]))  # type: ignore[arg-type]
    # Measure right after the flood minute, as an attacker would want it.
    cut = next(i for i, r in enumerate(flooded) if float(r["timestamp"]) > t0 + 90)  # type: ignore[arg-type]
    cut_honest = sum(1 for r in honest if float(r["timestamp"]) <= t0 + 90)  # type: ignore[arg-type]

    clean = _run(tmp_path / "clean", honest[:cut_honest], guard=True)
    unguarded = _run(tmp_path / "open", flooded[:cut], guard=False)
    guarded = _run(tmp_path / "guarded", flooded[:cut], guard=True)
    for m in MODELS:
        print(f"{m}: flood item in top-10 lists: no guard {unguarded[m][0]:.3f}, guard "
              f"{guarded[m][0]:.3f} (flood-free {clean[m][0]:.3f}); HR@10 guarded "
              f"{guarded[m][1]:.4f}, flood-free {clean[m][1]:.4f}")
    # Popularity is what an attacker moves: without the guard nearly everyone sees it.
    assert unguarded["popularity"][0] > 0.9
    for m in MODELS:
        assert guarded[m][0] <= clean[m][0] + 0.05, m
        assert abs(guarded[m][1] - clean[m][1]) <= 0.02 * clean[m][1], m


def test_whole_batch_shortcut_decides_as_event_by_event() -> None:
    rows = generate_events(6000, 300, 200, seed=9)
    users = [r["user_id"] for r in rows]
    items = [r["item_id"] for r in rows]
    ts = np.asarray([r["timestamp"] for r in rows], np.float64) / 8.0  # caps bite sometimes
    settings = FloodSettings(user_events=15, pair_events=2, item_share=0.05, item_min=8)
    one_by_one = FloodGuard(settings)
    want, _ = one_by_one._admit_each(users, items, ts, np.ones(len(users), bool))
    batched = FloodGuard(settings)
    got = np.concatenate([batched.admit(users[i:i + 50], items[i:i + 50], ts[i:i + 50])[0]
                          for i in range(0, len(users), 50)])
    assert 0 < (~want).sum() < len(want) // 2
    np.testing.assert_array_equal(got, want)
    # The same counts in every window the batched guard still holds (it forgets old
    # windows; one _admit_each call forgets nothing).
    for table in ("_users", "_pairs", "_items", "_all"):
        held = getattr(batched, table).buckets
        assert held and {b: c for b, c in getattr(one_by_one, table).buckets.items()
                         if b in held} == held


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shortcut_bounds_hold_through_late_events_and_a_restore(seed: int) -> None:
    # Event time mostly moves on, with late batches and quiet gaps; a snapshot is
    # restored half-way. Batch verdicts must equal one-by-one verdicts throughout.
    rng = np.random.default_rng(seed)
    n = 4000
    users = [f"u{k}" for k in rng.zipf(1.6, n) % 60]
    items = [f"i{k}" for k in rng.zipf(1.4, n) % 90]
    ts = np.cumsum(rng.exponential(0.4, n))
    ts[rng.random(n) < 0.05] -= 90.0  # late events, one or two windows back
    ts[n // 3:] += 300.0  # a quiet gap of five windows
    settings = FloodSettings(user_events=12, pair_events=3, item_share=0.2, item_min=10)
    one_by_one = FloodGuard(settings)
    want = np.concatenate([one_by_one.admit(users[i:i + 1], items[i:i + 1], ts[i:i + 1])[0]
                           for i in range(n)])
    batched = FloodGuard(settings)
    got = []
    for i in range(0, n, 40):
        if i == n // 2:
            restored = FloodGuard(settings)
            restored.load_arrays(batched.to_arrays())
            batched = restored
        got.append(batched.admit(users[i:i + 40], items[i:i + 40], ts[i:i + 40])[0])
    assert 0 < (~want).sum() < 3 * n // 4  # late events count in their own window
    np.testing.assert_array_equal(np.concatenate(got), want)


def test_counters_of_past_windows_are_forgotten_without_changing_verdicts() -> None:
    rows = generate_events(20_000, 2_000, 1_500, seed=5)  # about 65 windows of 60 s
    users = [r["user_id"] for r in rows]
    items = [r["item_id"] for r in rows]
    ts = np.asarray([r["timestamp"] for r in rows], np.float64)
    settings = FloodSettings(user_events=4, pair_events=2, item_share=0.05, item_min=5)
    guard = FloodGuard(settings)
    got = np.concatenate([guard.admit(users[i:i + 100], items[i:i + 100], ts[i:i + 100])[0]
                          for i in range(0, len(users), 100)])
    # Event by event in one call forgets nothing until its end: the same verdicts.
    want, _ = FloodGuard(settings)._admit_each(users, items, ts, np.ones(len(users), bool))
    assert (~want).sum() > 0
    np.testing.assert_array_equal(got, want)
    # Only the last few windows' counts remain (not the stream's 2,000 users): every
    # window no event up to LATE_WINDOWS windows late reads is gone.
    latest = int(ts.max() // settings.window_s)
    for table in (guard._users, guard._pairs, guard._items, guard._all):
        assert min(table.buckets) >= latest - 1 - LATE_WINDOWS
    assert len(guard._users) < len(set(users)) / 2
    assert len(guard._pairs) < len(set(zip(users, items, strict=True))) / 10


def test_a_late_event_counts_in_its_own_window() -> None:
    g = FloodGuard(FloodSettings(user_events=100, item_share=1.0))
    g.admit(["u"] * 3, ["a", "b", "c"], np.array([310.0, 311.0, 312.0]))  # window 5
    g.admit(["u"], ["d"], np.array([250.0]))  # a late event: window 4
    # At 330 s (a third into window 5): 3 + 1 * (1 - 1/2); the late event did not
    # replace the newer window's counts.
    assert g._users.estimate("u", 5, 0.5) == 3.5
    assert g._all.estimate("", 5, 0.5) == 3.5


def test_a_restored_guard_decides_late_events_as_the_crash_free_one() -> None:
    # The latest window (what pruning follows) travels with the snapshot: a restored
    # guard must not take a late event's window for the latest and keep counting it.
    settings = FloodSettings(window_s=60, user_events=1, item_share=1.0)
    live = FloodGuard(settings)
    live.admit(["x"], ["i"], np.array([6000.0]))  # window 100
    restored = FloodGuard(settings)
    restored.load_arrays(live.to_arrays())
    for g in (live, restored):
        g.admit(["u"], ["j"], np.array([5770.0]))  # window 96: too late to be kept
    kept = [g.admit(["u"], ["k"], np.array([5771.0]))[0].tolist() for g in (live, restored)]
    assert kept == [[True], [True]]
    assert restored._latest == live._latest == 100


def test_a_snapshot_without_the_latest_window_takes_its_newest_bucket() -> None:
    g = FloodGuard(FloodSettings(window_s=60, item_share=1.0))
    g.admit(["x", "y"], ["i", "j"], np.array([120.0, 6000.0]))
    old = {k: v for k, v in g.to_arrays().items() if k != "flood.latest"}
    again = FloodGuard(FloodSettings(window_s=60, item_share=1.0))
    again.load_arrays(old)
    assert again._latest == 100


def test_max_keys_drops_the_oldest_windows_keys_first() -> None:
    g = FloodGuard(FloodSettings(max_keys=1_000, item_share=1.0))
    users = [f"u{k}" for k in range(1_500)]
    g.admit(users[:1_000], ["a"] * 1_000, np.full(1_000, 10.0))  # window 0
    g.admit(users[1_000:], ["a"] * 500, np.full(500, 70.0))  # window 1
    assert len(g._users) == 1_000
    assert set(g._users.buckets[1]) == set(users[1_000:])  # the newest window whole
    assert set(g._users.buckets[0]) == set(users[500:1_000])  # the oldest half gone


def test_a_snapshot_of_the_earlier_per_key_layout_loads() -> None:
    # Before: one row per key of (latest bucket, its count, the previous bucket's).
    data, ends = pack_strings(["u", "v"])
    old = {"flood.users.keys.data": data, "flood.users.keys.offsets": ends,
           "flood.users.values": np.array([[7.0, 4.0, 2.0], [6.0, 1.0, 0.0]])}
    g = FloodGuard(FloodSettings())
    g.load_arrays(old)
    assert g._users.buckets == {7: Counter({"u": 4.0}), 6: Counter({"u": 2.0, "v": 1.0})}
    assert g._users.estimate("u", 7, 0.25) == 4.0 + 2.0 * 0.75
    # ... and comes back the same from the new layout.
    again = FloodGuard(FloodSettings())
    again.load_arrays(g.to_arrays())
    assert again._users.buckets == g._users.buckets


@pytest.mark.parametrize("seed", [4, 5])
def test_the_peak_bound_never_changes_a_fits_verdict(seed: int) -> None:
    # fits() first compares the buckets' peak counts with the cap, then looks key by key:
    # its verdict must be the key-by-key one, also after keys are dropped and a restore.
    from trainer.flood import _Windowed

    rng = np.random.default_rng(seed)
    table = _Windowed()
    verdicts: Counter[tuple[bool, bool]] = Counter()  # (passed on the peaks, fits)
    for step in range(300):
        bucket = 10 + step // 20
        keys = [f"k{k}" for k in rng.zipf(1.5, int(rng.integers(1, 30))) % 40]
        batch = Counter(keys)
        frac, cap = float(rng.random()), float(rng.integers(2, 200))
        cur, prev = table.buckets.get(bucket, {}), table.buckets.get(bucket - 1, {})
        exact = all(cur.get(k, 0) + prev.get(k, 0) * (1.0 - frac) + c <= cap
                    for k, c in batch.items())
        assert table.fits(batch, bucket, frac, cap) == exact
        by_peak = table.peaks.get(bucket, 0.0) + table.peaks.get(bucket - 1, 0.0) * (1.0 - frac)
        verdicts[(by_peak + max(batch.values()) <= cap, exact)] += 1
        table.count(batch, keys, bucket)
        assert table.peaks[bucket] >= max(table.buckets[bucket].values())
        if step % 50 == 49:
            table.prune(bucket, max_keys=30)
            restored = _Windowed()
            restored.load_arrays(table.to_arrays("t"), "t")
            assert restored.buckets == table.buckets
            table = restored
    # Every path is taken: passed on the peaks, and key by key either way.
    assert min(verdicts[(True, True)], verdicts[(False, True)], verdicts[(False, False)]) > 0
