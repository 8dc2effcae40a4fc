"""RowMaps: component rows onto a blending model's rows, grown batch by batch."""

from __future__ import annotations

import numpy as np

from online_models.ids import IdIndex
from online_models.rowmap import RowMaps


class _Component:
    def __init__(self) -> None:
        self.items = IdIndex()


def test_growing_map_matches_a_map_built_at_once() -> None:
    """Extending in place gives the rows a fresh build gives, and a view handed out
    earlier keeps its rows while the map grows past its buffer."""
    rng = np.random.default_rng(3)
    comp, ours = _Component(), IdIndex()
    ours.add_many(["z0", "z1"])  # our rows start elsewhere: not the identity
    maps = RowMaps()
    early = None
    for step in range(40):
        comp.items.add_many([f"i{x}" for x in rng.integers(0, 300, 7)])
        maps.sync({"c": comp}, ours)
        if step == 2:
            early = maps.rows("c").copy(), maps.rows("c")
    fresh = RowMaps()
    fresh.sync({"c": comp}, IdIndex(ours.ids))  # type: ignore[arg-type]
    assert len(maps.rows("c")) == comp.items.capacity
    assert maps.rows("c").tolist() == fresh.rows("c").tolist()
    assert maps.rows("c").tolist() == [ours.get(k) for k in comp.items.ids]  # type: ignore[arg-type]
    assert early is not None and early[1].tolist() == early[0].tolist()
    assert not maps.is_identity("c")


def test_identity_holds_while_rows_agree_and_ends_when_they_part() -> None:
    comp, ours = _Component(), IdIndex()
    maps = RowMaps()
    for batch in (["a", "b"], ["c"], ["d", "e", "f"]):
        comp.items.add_many(batch)
        maps.sync({"c": comp}, ours)
        assert maps.is_identity("c")
    ours.add("x")  # our next row is taken: the component's next item lands after it
    comp.items.add("g")
    maps.sync({"c": comp}, ours)
    assert not maps.is_identity("c")
    assert maps.rows("c").tolist() == [0, 1, 2, 3, 4, 5, 7]


def test_a_row_freed_and_given_to_a_new_item_maps_to_that_item() -> None:
    """A component that expires an item and later reuses its row for another: the
    map points the row at the new item, not nowhere (nor at the old one)."""
    comp, ours = _Component(), IdIndex()
    maps = RowMaps()
    comp.items.add_many(["a", "b", "c"])
    maps.sync({"c": comp}, ours)
    comp.items.remove("b")
    maps.sync({"c": comp}, ours)
    assert maps.rows("c").tolist() == [0, -1, 2]
    assert comp.items.add("d") == 1  # the freed row
    maps.sync({"c": comp}, ours)
    rows = maps.rows("c").tolist()
    assert rows[0] == 0 and rows[2] == 2
    assert rows[1] >= 0 and ours.ids[rows[1]] == "d"


def test_maps_follow_random_frees_and_reuses_including_past_the_change_log() -> None:
    """Random adds and removes between syncs: after every sync the map equals a
    look-up of the component's ids, whether the changed rows are mapped again from
    the change log or, past its end (a small ``CHANGE_LOG``), all rows are."""
    rng = np.random.default_rng(5)
    for log_size in (1 << 16, 4):
        comp, ours = _Component(), IdIndex()
        comp.items.CHANGE_LOG = log_size
        maps = RowMaps()
        for _ in range(60):
            for x in rng.integers(0, 80, 6).tolist():
                comp.items.add(f"i{x}")
            live = [k for k in comp.items.ids if k is not None]
            for k in rng.choice(live, size=min(3, len(live)), replace=False).tolist():
                comp.items.remove(k)
            maps.sync({"c": comp}, ours)
            assert maps.rows("c").tolist() == [
                -1 if k is None else ours.get(k) for k in comp.items.ids]
