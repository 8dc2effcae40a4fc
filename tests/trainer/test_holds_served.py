"""The merge writer's "may I merge yet" test (pure, no Kafka)."""

from __future__ import annotations

from trainer.item_side import holds_served


def test_a_new_folder_may_merge_once_it_folded_what_is_served() -> None:
    served = {"0": 682, "1": 493, "2": 713}
    # just adopted the previous folder's item snapshot: the same offsets
    assert holds_served({0: 682, 1: 493, 2: 713}, served)
    assert holds_served({0: 700, 1: 500, 2: 713}, served)


def test_it_waits_while_any_partition_is_behind_or_nothing_is_served() -> None:
    served = {"0": 682, "1": 493, "2": 713}
    assert not holds_served({0: 682, 1: 492, 2: 900}, served)
    assert not holds_served({0: 682, 2: 713}, served)  # partition 1 not folded at all
    assert not holds_served({0: 682, 1: 493, 2: 713}, None)
