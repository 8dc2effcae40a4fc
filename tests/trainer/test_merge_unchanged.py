"""The folding trainer writes no merged snapshot identical to its last one (no Kafka:
the fold has no consumer, so the update topic reads as caught up)."""

from __future__ import annotations

from pathlib import Path

from online_models import registry
from online_models.ownership import write_heartbeat
from online_models.snapshot import SnapshotStore
from trainer.flood import FloodSettings
from trainer.folding import UpdateFold
from trainer.item_side import ItemSide
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings
from trainer.user_side import UserSide


def test_a_merge_is_written_only_when_something_moved(tmp_path: Path) -> None:
    s = TrainerSettings(snapshots=tmp_path, models="popularity", scale_out=True,
                        instance_id="a")
    models = {"popularity": registry.create("popularity")}
    metrics = TrainerMetrics(["popularity"], "clicks")
    users = UserSide(s, models, metrics, tmp_path, "clicks", "a", FloodSettings())
    side = ItemSide(s, models, UpdateFold(models, "clicks.updates", "clicks", metrics, 0.0),
                    metrics, tmp_path, "a", users.fresh_state)
    side.folding, side.n_input = True, 2
    st = users.fresh_state(1)
    st.offset = 0
    parts = {1: st}
    merged = SnapshotStore(tmp_path)

    def checkpoint(force: bool = False) -> None:
        side.last_merge = 0.0  # merge_every_s has passed
        side.checkpoint(parts, force)

    checkpoint()
    checkpoint()  # idle: nothing new
    assert merged.versions() == [1]
    st.offset = 5  # this trainer learned
    checkpoint()
    write_heartbeat(tmp_path, 0, "b")  # another member took partition 0
    checkpoint()
    checkpoint(force=True)  # shutdown: always
    assert merged.versions() == [1, 2, 3, 4]
    # Another member's first partition snapshot: its version directory reserved (empty),
    # then the finished files: the merge follows each step, and no more once it is done.
    first = SnapshotStore(tmp_path / "partitions" / "00000").path_of(1)
    first.mkdir(parents=True)
    checkpoint()
    (first / "manifest.json").write_text("{}")
    checkpoint()
    checkpoint()
    assert merged.versions()[-2:] == [5, 6] and len(merged.versions()) <= 6
