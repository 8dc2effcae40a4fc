"""A scale-out partition's user state under the user bound (no Kafka)."""

from __future__ import annotations

from pathlib import Path

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
