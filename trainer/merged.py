"""What scale-out trainers read of each other's snapshots.

Two reads, both by the trainer that folds the update topic (see :mod:`trainer.partitioned`):

* :func:`best_item_snapshot` -- the most advanced item snapshot any instance wrote
  under ``<snapshots>/items/``: a trainer that takes up folding adopts it instead of
  folding the update topic from its start;
* :func:`gather_partitions` -- every partition's latest user state, its own partitions
  live and the others from their owners' partition snapshots: the user half of the
  merged, servable model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from online_models.base import OnlineModel, UserHistory
from online_models.ownership import heartbeat_owner
from online_models.snapshot import Snapshot, SnapshotError, SnapshotStore
from trainer.partition_state import PartitionState, PartitionStore

__all__ = ["GatheredPartitions", "best_item_snapshot", "gather_partitions"]

log = logging.getLogger(__name__)


def best_item_snapshot(root: Path, updates: str, ahead_of: int = -1) -> Snapshot | None:
    """The most advanced item snapshot under ``root/items/`` of any instance (all are
    folds of one log) that has read more than ``ahead_of`` records of the update topic
    ``updates`` (manifests are compared before anything is loaded)."""
    ranked: list[tuple[int, SnapshotStore]] = []
    base = root / "items"
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        store = SnapshotStore(d)
        try:
            manifest = store.read_manifest()
        except (SnapshotError, OSError, ValueError) as exc:
            log.info("no readable item snapshot in %s: %s", d, exc)
            continue
        done = sum(int(o) for o in manifest.get("offsets", {}).get(updates, {}).values())
        if done > ahead_of:
            ranked.append((done, store))
    for _, store in sorted(ranked, key=lambda r: r[0], reverse=True):
        try:
            snap = store.load_latest_valid()
        except (SnapshotError, OSError) as exc:
            log.warning("item snapshots in %s unreadable: %s", store.root, exc)
            continue
        if snap is not None:
            return snap
    return None


@dataclass
class GatheredPartitions:
    """Every partition's user state, summed up for a merged snapshot."""

    histories: list[UserHistory] = field(default_factory=list)
    #: next offset of each partition with one
    offsets: dict[int, int] = field(default_factory=dict)
    #: per partition (str): events_total, offset, owner, snapshot_age_s
    partitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    events_total: int = 0
    watermark: float | None = None


def gather_partitions(
    n_partitions: int,
    live: Mapping[int, PartitionState],
    store: Callable[[int], PartitionStore],
    topic: str,
    models: Mapping[str, OnlineModel],
    fresh_state: Callable[[int], PartitionState],
    instance: str,
) -> GatheredPartitions:
    """Partitions ``0..n_partitions-1`` (and any higher one in ``live``): those in
    ``live`` as they are (their users' state is in ``models`` already), the others
    restored from their latest snapshot (``store(p)``) into ``models`` and a
    ``fresh_state(p)``; a partition with no snapshot counts no events and no owner. The
    owner of a partition with a snapshot is its heartbeat's (``partitions/<p>/OWNER``),
    else the snapshot's writer."""
    out = GatheredPartitions()
    owner: Any
    age: float | None
    for p in range(max(n_partitions, max(live, default=-1) + 1)):
        st = live.get(p)
        if st is not None:
            owner, age = instance, 0.0
        else:
            ps = store(p)
            snap = ps.load(topic)
            if snap is None:
                out.partitions[str(p)] = {"events_total": 0, "offset": None, "owner": None,
                                          "snapshot_age_s": None}
                continue
            st = fresh_state(p)
            st.restore(snap, topic, models, dedup_window_s=1.0, dedup_max_ids=1)
            # its owner now: the snapshot's writer may have handed it on since (a
            # take-over writes no snapshot until the partition moves)
            owner = heartbeat_owner(ps.store.root) or snap.extra_meta.get("instance")
            created = snap.manifest.get("created_at")
            age = (time.time() - datetime.fromisoformat(created).timestamp()
                   if isinstance(created, str) else None)
        out.histories.append(st.history)
        out.events_total += st.events_total
        if st.offset is not None:
            out.offsets[p] = st.offset
        if st.watermark is not None:
            out.watermark = st.watermark if out.watermark is None else \
                max(out.watermark, st.watermark)
        out.partitions[str(p)] = {"events_total": st.events_total, "offset": st.offset,
                                  "owner": owner, "snapshot_age_s": age}
    return out
