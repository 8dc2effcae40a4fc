"""The de-duplication window's incremental snapshot packing equals packing it whole."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from online_models.base import pack_strings
from trainer.dedup import DedupWindow


def _whole(d: DedupWindow) -> dict[str, np.ndarray]:
    data, ends = pack_strings(list(d._ids))
    return {"dedup.ids.data": data, "dedup.ids.offsets": ends,
            "dedup.ts": np.fromiter(d._ids.values(), np.float64, len(d._ids))}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_snapshots_pack_only_new_ids_and_equal_a_whole_packing(
    seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="trainer.dedup")
    rng = np.random.default_rng(seed)
    d = DedupWindow(window_s=50.0, max_ids=300)
    t = 0.0
    for step in range(400):
        n = int(rng.integers(0, 40))
        t += float(rng.exponential(2.0))
        # Repeats, late events, ids of several lengths (and non-ASCII ones).
        ids = [f"e{int(k)}" + "é" * int(k % 3) for k in rng.integers(0, 3000, n)]
        times = t - rng.exponential(5.0, n)
        if step % 7 == 0 and n:
            d.add(ids[0], float(times[0]))
        else:
            d.add_many(ids, times)
        if rng.random() < 0.3:
            got, want = d.to_arrays(), _whole(d)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
        if step == 200:  # a restart from the snapshot mid-stream
            d = DedupWindow.from_arrays(d.to_arrays(), window_s=50.0, max_ids=300)
    assert 0 < len(d) <= 300
    assert not caplog.records  # the whole-packing fallback never ran
    got, want = d.to_arrays(), _whole(d)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("seed", [0, 1])
def test_batches_with_and_without_repeats_decide_as_one_by_one(seed: int) -> None:
    # add_many takes a whole-batch path when no id repeats; it must equal the
    # event-by-event rule (first occurrence fresh, every later one a duplicate).
    rng = np.random.default_rng(seed)
    d = DedupWindow(window_s=1e9, max_ids=10**6)
    seen: dict[str, float] = {}
    fast = 0
    for step in range(300):
        n = int(rng.integers(1, 30))
        pool = 10**6 if step % 2 else 500  # odd steps: (almost surely) no repeat at all
        ids = [f"e{int(k)}" for k in rng.integers(0, pool, n)]
        times = np.full(n, float(step))
        want = []
        for eid in ids:
            want.append(eid not in seen)
            seen.setdefault(eid, float(step))
        fast += all(want)
        np.testing.assert_array_equal(d.add_many(ids, times), want)
    assert list(d._ids.items()) == list(seen.items())
    assert 100 < fast < 300


def test_a_leap_in_event_time_that_empties_the_memory_is_said(
        caplog: pytest.LogCaptureFixture) -> None:
    """One event stamped years ahead (a live click on a topic of replayed history) made
    the memory forget every id at once, and re-replayed history was learned twice,
    without a word (new-user review)."""

    d = DedupWindow(window_s=86_400)
    d.add_many([f"e{i}" for i in range(100)], [1.7e9 + i for i in range(100)])
    with caplog.at_level(logging.WARNING, logger="trainer.dedup"):
        d.add_many(["e100"], [1.7e9 + 3_600])  # an hour on: nothing to say
        assert not caplog.records
        d.add_many(["live"], [1.7e9 + 400 * 86_400])
    assert len(d) == 1
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith("event time jumped 400.0 days in one batch (to ")
    assert "event 'live'" in said and "forgot its 101 ids" in said
    assert d.add_many(["e5"], [1.7e9 + 5]).tolist() == [True]  # learned again: as said
    # A sparse stream replayed at full speed jumps batch after batch: one line, not one
    # per jump, until the next is due, which counts the rest.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainer.dedup"):
        for year in range(2, 6):
            d.add_many([f"y{year}"], [1.7e9 + year * 400 * 86_400])
        assert not caplog.records
        d._jump_said_at = -1e9  # the throttle's time has passed
        d.add_many(["y6"], [1.7e9 + 6 * 400 * 86_400])
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.endswith("; 4 more such jumps in the last 300 s not logged")
