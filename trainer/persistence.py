"""The trainer's state in and out of snapshots (:class:`TrainerPersistence`).

On start :class:`~trainer.service.Trainer` restores the newest valid snapshot
(models, user history, offsets, de-duplication window, drift and flood state; a model
the snapshot lacks starts fresh). While it runs it copies its state for a snapshot
(the learner's only pause), hands the copy to the :class:`~trainer.checkpoint.Checkpointer`
(a background write, or a synchronous one before a revoke and at shutdown) and, once
the snapshot is durable, commits its offsets. When to snapshot is the loop's decision
(``Trainer._snapshot_gap``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from online_models import registry
from online_models.base import OnlineModel, UserHistory
from online_models.drift import ConceptDriftMonitor, DataDriftTracker
from online_models.snapshot import CapturedState, capture
from stream.consumer import Partition
from stream.settings import KafkaSettings
from trainer.adaptation import DriftAdaptation
from trainer.checkpoint import Checkpointer, Written
from trainer.dedup import DedupWindow
from trainer.embedding_watch import EmbeddingDriftWatch
from trainer.evaluation import TrainerEvaluation
from trainer.flood import FloodGuard
from trainer.follow_swap import FollowedInUse
from trainer.lost_snapshot import LostSnapshotGuard, MissingSnapshotError
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings
from trainer.source import BatchSource

__all__ = ["TrainerPersistence"]

# Log lines keep the trainer's one logger name (every log line shows it).
log = logging.getLogger("trainer.service")


class TrainerPersistence:
    """Restore, capture, checkpoint and commit: a part of
    :class:`~trainer.service.Trainer` (see the module docstring), which sets the
    state named here."""

    settings: TrainerSettings
    kafka: KafkaSettings
    metrics: TrainerMetrics
    checkpointer: Checkpointer
    names: list[str]
    models: dict[str, OnlineModel]
    history: UserHistory
    offsets: dict[Partition, int]
    events_total: int
    watermark: float | None
    dedup: DedupWindow
    data_drift: DataDriftTracker
    flood: FloodGuard
    monitors: dict[str, ConceptDriftMonitor]
    adaptation: DriftAdaptation
    embedding_watch: EmbeddingDriftWatch
    evaluation: TrainerEvaluation
    followed_versions: FollowedInUse
    source: BatchSource | None
    snapshot_version: int | None
    _snap_offsets: dict[Partition, int]
    _snap_events_total: int
    _restored_followed: dict[str, Any]
    _capture_s: float
    _learning: bool
    _lost: LostSnapshotGuard | None

    # ------------------------------------------------------------------ restore

    def _fresh(self, name: str) -> OnlineModel:
        return registry.create(name, **self.settings.model_params.get(name, {}))

    def _restore(self) -> None:
        snap = self.checkpointer.restore()
        if snap is None:
            store = self.checkpointer.store
            refused = len(store.refusals)
            if store.unknown_models:
                # Intact snapshots this install cannot read: starting would replace them
                # (and retention delete them), commits or not.
                raise MissingSnapshotError(
                    f"every snapshot in {store.root} was refused "
                    f"({refused} version(s)), and they hold model(s) this install cannot "
                    f"build: {', '.join(sorted(store.unknown_models))}. Install "
                    "the plugin package(s) that provide them (`liverec models list` shows "
                    "what is installed) and start again; to start afresh instead, move "
                    "the snapshot directory away.")
            if refused:
                log.warning("none of the %d snapshot version(s) in %s could be loaded (see "
                            "above): starting from scratch, unless its consumer group "
                            "committed offsets", refused, store.root)
            else:
                log.info("no valid snapshot in %s: starting from scratch",
                         store.root)
            self.models = {name: self._fresh(name) for name in self.names}
            registry.bind(self.models)
            return
        for name in self.names:
            if name in snap.models:
                self.models[name] = snap.models[name]
            else:
                log.warning("model %s is not in snapshot %d: starting it fresh", name,
                            snap.version)
                self.models[name] = self._fresh(name)
        registry.bind(self.models)
        self.history = snap.history
        self.events_total = snap.events_total
        self.watermark = snap.watermark
        self.offsets = {
            (t, p): o for t, parts in snap.offsets.items() for p, o in parts.items()
        }
        self._snap_offsets = dict(self.offsets)
        self._snap_events_total = self.events_total
        self.snapshot_version = snap.version
        self.dedup = DedupWindow.from_arrays(
            snap.extra_arrays, window_s=self.settings.dedup_window_s,
            max_ids=self.settings.dedup_max_ids,
        )
        self.data_drift.load_arrays(snap.extra_arrays)
        self.flood.load_arrays(snap.extra_arrays)
        meta = snap.extra_meta
        self._restored_followed = dict(meta.get("followed", {}))
        for name, st in meta.get("drift", {}).items():
            mon = self.monitors.get(name)
            if mon is not None:
                mon.alarms.update(st.get("alarms", {}))
                mon.last_alarm_time = st.get("last_alarm_time")
        self.adaptation.load_meta(meta.get("adapt", {}), self.models)
        for name in self.adaptation.active:
            self.metrics.drift_adapting.labels(model=name).set(1)
        self.embedding_watch.remember(self.models)
        self.metrics.events_total.set(self.events_total)
        log.info("restored snapshot %d: events_total=%d, offsets=%s, models=%s",
                 snap.version, self.events_total, snap.offsets, sorted(snap.models))

    # ------------------------------------------------------------------ snapshot + commit

    def _capture(self) -> CapturedState:
        return capture(
            self.models,
            history=self.history,
            offsets=_nest(self.offsets),
            events_total=self.events_total,
            watermark=self.watermark,
            metrics=self._metric_summary(),
            extra_arrays={**self.dedup.to_arrays(), **self.data_drift.to_arrays(),
                          **self.flood.to_arrays()},
            extra_meta=self._extra_meta(),
            reuse=self.followed_versions.captured(),
        )

    def checkpoint(self, reason: str = "periodic", wait: bool = False) -> Written | None:
        """Snapshot if anything moved (``wait``: synchronously). Never raises.

        Returns the durable snapshot when ``wait`` (the last one if nothing moved);
        a background write reports through :meth:`_finish_checkpoint`.
        """
        if wait:
            self._finish_checkpoint(wait=True)
        if self._lost is not None and not self._lost.allows_write(5.0 if wait else 0.0):
            self.checkpointer.last_attempt_wall = time.time()
            return None  # nothing durable before the group is known not to have moved on
        changed = (self.offsets != self._snap_offsets
                   or self.events_total != self._snap_events_total)
        if not changed:
            self.checkpointer.last_attempt_wall = time.time()
            return self.checkpointer.last
        if not wait and self.checkpointer.busy:
            return None  # the previous write is still going: try at the next period
        offsets = dict(self.offsets)
        try:
            t0 = time.perf_counter()
            cap = self._capture()
            self._capture_s = time.perf_counter() - t0
        except Exception:
            self.metrics.snapshot_errors.inc()
            self.metrics.loop_errors.labels(stage="snapshot").inc()
            self.checkpointer.last_attempt_wall = time.time()
            log.exception("capturing the state for a snapshot (%s) failed", reason)
            return None
        if not wait:
            self.checkpointer.submit(cap, offsets, self.events_total)
            return None
        written = self.checkpointer.write(cap, offsets, self.events_total)
        if written is not None:
            self._durable(written, commit=reason != "revoke")
        return written

    def _finish_checkpoint(self, wait: bool = False) -> None:
        written = self.checkpointer.done(wait=wait)
        if written is not None:
            self._durable(written, commit=True)

    def _durable(self, written: Written, commit: bool) -> None:
        self._snap_offsets = written.offsets
        self._snap_events_total = written.events_total
        self.snapshot_version = written.info.version
        if commit and self.source is not None and self._learning:
            self.source.commit(written.offsets)
        self.embedding_watch.compare(self.models)

    def _metric_summary(self) -> dict[str, Any]:
        return {**self.evaluation.summary(), "data_drift": self.data_drift.values()}

    def _extra_meta(self) -> dict[str, Any]:
        return {
            "trainer": {"group": self.settings.group, "topic": self.kafka.topic},
            "dedup": {"window_s": self.dedup.window_s, "max_ids": self.dedup.max_ids},
            "drift": {n: mon.state() for n, mon in self.monitors.items()},
            "adapt": self.adaptation.to_meta(),
            # models another trainer learns (--follow): the version each snapshot carries
            "followed": self.followed_versions.meta(),
        }


def _nest(offsets: Mapping[Partition, int]) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    for (t, p), o in offsets.items():
        out.setdefault(t, {})[p] = o
    return out
