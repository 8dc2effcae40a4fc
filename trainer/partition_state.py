"""User-side state of one input partition, and its snapshots.

In scale-out mode (:mod:`trainer.partitioned`) everything keyed by user lives per
input partition, so it moves with the partition when the group rebalances:

* :class:`PartitionState` -- the partition's user history, de-duplication window,
  flood-guard counts, event count, next offset, and its users (whose model-side
  state, e.g. item-kNN windows, lives in the models and is exported by
  :meth:`~online_models.deltas.SharesItemState.user_state`);
* :class:`PartitionStore` -- its snapshots under ``<snapshots>/partitions/<p>/``
  (an ordinary :class:`~online_models.snapshot.SnapshotStore` with no models; the
  user state is in the extra arrays). :meth:`PartitionStore.load` picks the kept
  version with the *highest offset*, not the newest: a trainer that lost the
  partition without noticing (a zombie) cannot roll it back by writing late;
* :func:`merge_histories` -- one history out of disjoint partitions' histories.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from online_models.base import (
    OnlineModel,
    UserHistory,
    concat_packed,
    pack_strings,
    unpack_strings,
)
from online_models.snapshot import Snapshot, SnapshotError, SnapshotStore
from trainer.dedup import DedupWindow
from trainer.flood import FloodGuard, FloodSettings

__all__ = ["PartitionState", "PartitionStore", "merge_histories"]

log = logging.getLogger(__name__)

_MODEL = "model."


@dataclass
class PartitionState:
    """What a trainer knows of one input partition's users (see the module docstring)."""

    partition: int
    history: UserHistory
    dedup: DedupWindow
    flood: FloodGuard
    users: set[str] = field(default_factory=set)
    events_total: int = 0
    #: next offset whose record is not yet learned (None: nothing read yet)
    offset: int | None = None
    watermark: float | None = None
    #: records below this offset are in the item state already (learned by the
    #: previous owner after its last partition snapshot): learn them user-side only
    replay_until: int | None = None
    #: offset of the last snapshot written or restored
    snapshot_offset: int | None = None

    @classmethod
    def fresh(cls, partition: int, *, history_items: int, dedup_window_s: float,
              dedup_max_ids: int, flood: FloodSettings,
              history_max_users: int | None = None) -> PartitionState:
        st = cls(partition, UserHistory(max_items=history_items),
                 DedupWindow(dedup_window_s, dedup_max_ids), FloodGuard(flood))
        st.bound_users(history_max_users)
        return st

    def bound_users(self, max_users: int | None) -> None:
        """Hold at most ``max_users`` of this partition's users (the least recently
        active beyond it are dropped: see :meth:`learned`)."""
        self.history.evicted = []
        self.history.limit_users(max_users)

    def learned(self, users: list[str], items: list[str]) -> list[str]:
        """Count a learned batch's events into the users' histories; returns the users
        dropped for the bound, now gone from this partition (the caller forgets them
        in the models)."""
        self.history.extend(users, items)
        self.users.update(users)
        gone = self.history.take_evicted()
        self.users.difference_update(gone)
        return gone

    def arrays(self, models: Mapping[str, OnlineModel]) -> dict[str, np.ndarray]:
        """Extra arrays of this partition's snapshot (history goes separately)."""
        users = sorted(self.users)
        data, offsets = pack_strings(users)
        out: dict[str, np.ndarray] = {"users.data": data, "users.offsets": offsets,
                                      **self.dedup.to_arrays(), **self.flood.to_arrays()}
        for name, model in models.items():
            for key, arr in model.user_state(users).items():  # type: ignore[attr-defined]
                out[f"{_MODEL}{name}.{key}"] = arr
        return out

    def restore(self, snap: Snapshot, topic: str, models: Mapping[str, OnlineModel],
                *, dedup_window_s: float, dedup_max_ids: int) -> None:
        """Take over a partition snapshot, loading its users' state into ``models``."""
        a = snap.extra_arrays
        bound = self.history.max_users  # the setting rules, not the snapshot's
        self.history = snap.history
        self.bound_users(bound)
        self.dedup = DedupWindow.from_arrays(a, window_s=dedup_window_s, max_ids=dedup_max_ids)
        self.flood.load_arrays(a)
        self.users = set(unpack_strings(a["users.data"], a["users.offsets"]))
        self.events_total = snap.events_total
        self.watermark = snap.watermark
        self.offset = snap.offsets.get(topic, {}).get(self.partition)
        self.snapshot_offset = self.offset
        for name, model in models.items():
            prefix = f"{_MODEL}{name}."
            sub = {k[len(prefix):]: v for k, v in a.items() if k.startswith(prefix)}
            if sub:
                model.load_user_state(sub)  # type: ignore[attr-defined]


class PartitionStore:
    """Snapshots of one partition's user-side state (see the module docstring)."""

    def __init__(self, root: Path, partition: int, keep: int) -> None:
        self.partition = partition
        self.store = SnapshotStore(root / "partitions" / f"{partition:05d}", keep=keep)

    def write(self, state: PartitionState, topic: str, models: Mapping[str, OnlineModel],
              meta: Mapping[str, Any]) -> None:
        self.store.write(
            {}, history=state.history,
            offsets={topic: {state.partition: state.offset or 0}},
            events_total=state.events_total, watermark=state.watermark,
            extra_arrays=state.arrays(models),
            extra_meta={"partition": state.partition, **meta},
        )
        state.snapshot_offset = state.offset

    def load(self, topic: str) -> Snapshot | None:
        """The valid kept version with the highest offset (ties: the newest)."""
        best: tuple[int, int] | None = None
        for v in self.store.versions():
            try:
                m = self.store.read_manifest(v)
            except (SnapshotError, OSError, ValueError) as exc:
                if _being_written(self.store.path_of(v)):
                    # the owner's write in progress: its number reserved by an empty
                    # directory until the finished one is renamed into place
                    log.debug("partition %d snapshot %d is being written", self.partition, v)
                else:
                    log.warning("partition %d snapshot %d unreadable: %s", self.partition,
                                v, exc)
                continue
            off = int(m.get("offsets", {}).get(topic, {}).get(str(self.partition), -1))
            if best is None or (off, v) > best:
                best = (off, v)
        candidates = sorted(self.store.versions(), reverse=True)
        if best is not None:
            candidates.remove(best[1])
            candidates.insert(0, best[1])
        for v in candidates:
            try:
                return self.store.load(v)
            except SnapshotError as exc:
                log.warning("refusing partition %d snapshot %d: %s", self.partition, v, exc)
        return None


def _being_written(path: Path) -> bool:
    """A version directory that is still empty and recent: a writer reserved its number
    and has not renamed the finished snapshot into place yet (see
    :meth:`~online_models.snapshot.SnapshotStore.write_captured`). One empty for longer
    than :attr:`~online_models.snapshot.SnapshotStore.STALE_TMP_S` was left by a
    writer that died (its store removes it then)."""
    try:
        return (not any(path.iterdir())
                and time.time() - path.stat().st_mtime < SnapshotStore.STALE_TMP_S)
    except OSError:
        return False


def merge_histories(histories: Iterable[UserHistory], max_items: int) -> UserHistory:
    """One history of disjoint users' histories (partitions never share a user)."""
    parts = [h.to_arrays("h") for h in histories]
    if not parts:
        return UserHistory(max_items=max_items)
    merged: dict[str, np.ndarray] = {}
    for what in ("users", "items"):
        merged[f"h.{what}.data"], merged[f"h.{what}.offsets"] = concat_packed(
            [(p[f"h.{what}.data"], p[f"h.{what}.offsets"]) for p in parts])
    merged["h.lengths"] = np.concatenate([p["h.lengths"] for p in parts])
    return UserHistory.from_arrays(merged, "h", max_items=max_items)
