"""Which owner the merged snapshot names for a partition (no Kafka)."""

from __future__ import annotations

from pathlib import Path

from online_models.ownership import write_heartbeat
from trainer.flood import FloodSettings
from trainer.merged import gather_partitions
from trainer.partition_state import PartitionState, PartitionStore


def _fresh(p: int) -> PartitionState:
    return PartitionState.fresh(p, history_items=20, dedup_window_s=3600.0,
                                dedup_max_ids=1000, flood=FloodSettings())


def test_a_partition_handed_on_without_a_new_snapshot_names_its_new_owner(
        tmp_path: Path) -> None:
    for p, writer in ((0, "a"), (1, "a")):
        st = _fresh(p)
        st.learned(["u"], ["x"])
        st.offset = 7
        PartitionStore(tmp_path, p, keep=2).write(st, "clicks", {}, {"instance": writer})
    # partition 1 went to b on a rebalance; nothing new arrived, so b wrote no snapshot
    write_heartbeat(tmp_path, 1, "b")
    got = gather_partitions(3, {}, lambda p: PartitionStore(tmp_path, p, 2), "clicks", {},
                            _fresh, "c")
    assert got.partitions["0"]["owner"] == "a"  # no heartbeat: the snapshot's writer
    assert got.partitions["1"]["owner"] == "b"
    assert got.partitions["2"]["owner"] is None  # never snapshotted
