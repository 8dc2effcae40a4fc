"""A scale-out partition's user state under the user bound (no Kafka)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from online_models import registry
from online_models.base import Batch
from trainer.flood import FloodSettings
from trainer.partition_state import PartitionState, PartitionStore


def _fresh(bound: int | None) -> PartitionState:
    return PartitionState.fresh(3, history_items=20, dedup_window_s=3600.0,
                                dedup_max_ids=1000, flood=FloodSettings(),
                                history_max_users=bound)


def test_a_partition_drops_its_least_recent_users_beyond_the_bound(tmp_path: Path) -> None:
    st = _fresh(3)
    assert st.learned(["a", "b", "c"], ["x", "y", "z"]) == []
    # "a" comes back (most recent again); "d" and "e" push out "b" and "c".
    gone = st.learned(["a", "d", "e"], ["y", "x", "x"])
    assert gone == ["b", "c"]
    assert st.users == {"a", "d", "e"} == set(st.history._items)
    # Users dropped and seen again in the same batch are not reported gone: here every
    # newcomer pushes out the oldest, and only "f" stays out.
    assert st.learned(["f", "a", "d", "e"], ["x", "z", "z", "z"]) == ["f"]
    assert st.users == {"a", "d", "e"}

    # Its snapshot restores under the trainer's bound, not the one it was written with.
    model = registry.create("itemknn")
    model.learn_local(Batch.from_columns(["a", "d", "e"], ["x", "y", "z"]))  # type: ignore[attr-defined]
    st.offset = 7
    PartitionStore(tmp_path, 3, keep=2).write(st, "clicks", {"itemknn": model}, {})
    snap = PartitionStore(tmp_path, 3, keep=2).load("clicks")
    assert snap is not None
    back = _fresh(2)
    back.restore(snap, "clicks", {"itemknn": registry.create("itemknn")},
                 dedup_window_s=3600.0, dedup_max_ids=1000)
    assert back.history.max_users == 2 and len(back.history) == 2
    assert back.learned(["g"], ["x"]) == ["a", "d"]  # "a" at the restore, "d" for "g"
    assert back.users == {"e", "g"}


def test_a_snapshot_being_written_is_skipped_without_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The merge writer reads other owners' partition snapshots while they write: the
    # next version's number is reserved by an empty directory until it is complete.
    st = _fresh(None)
    st.learned(["a"], ["x"])
    st.offset = 5
    store = PartitionStore(tmp_path, 3, keep=2)
    store.write(st, "clicks", {}, {})
    store.store.path_of(2).mkdir()
    with caplog.at_level(logging.WARNING, logger="trainer.partition_state"):
        snap = store.load("clicks")
    assert snap is not None and snap.version == 1
    assert caplog.records == []
    # A published version that lost its manifest is still reported.
    (store.store.path_of(2) / "junk").write_text("x")
    with caplog.at_level(logging.WARNING, logger="trainer.partition_state"):
        assert store.load("clicks") is not None
    assert "snapshot 2 unreadable" in caplog.text
