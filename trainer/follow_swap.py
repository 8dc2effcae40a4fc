"""Which version of each followed model the trainer uses (``liverec train --follow``).

:class:`~trainer.follow.Followed` loads new versions of the models another trainer
learns; :class:`FollowedInUse` decides when one is swapped into the trainer's models:
only once the trainer has passed every event that version learned (until then it
waits, and a newer one replaces it), so the prequential evaluation never tests a
followed model on events it has already learned. It also keeps what the trainer's
snapshots say of them: the version in use and its copied state.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from online_models import registry
from online_models.base import ModelState, OnlineModel
from trainer.follow import FollowedModel
from trainer.metrics import TrainerMetrics

__all__ = ["FollowedInUse"]

log = logging.getLogger(__name__)


class FollowedInUse:
    """The followed models' versions in use, swapped into ``models`` in place.

    Parameters
    ----------
    models
        The trainer's models (name -> model): a swap replaces the entry and binds the
        blends again (:func:`online_models.registry.bind`).
    follow
        The names of the followed models.
    metrics
        ``followed_version`` / ``followed_age`` per followed model.
    on_swap
        Told of each model swapped in (the evaluator replaces its copy).
    """

    def __init__(self, models: dict[str, OnlineModel], follow: Mapping[str, Path],
                 metrics: TrainerMetrics,
                 on_swap: Callable[[str, OnlineModel], None]) -> None:
        self.models = models
        self.follow = follow
        self.metrics = metrics
        self.on_swap = on_swap
        #: per followed model, the version in use (its object and its state copied for
        #: snapshots; always the object in ``models``: only :meth:`swap_in` changes either)
        self.in_use: dict[str, FollowedModel] = {}
        #: versions loaded but ahead of the trainer (see :meth:`take`)
        self.pending: dict[str, FollowedModel] = {}
        self._waited: set[str] = set()  # models whose wait was logged at INFO
        for name in follow:
            metrics.followed_version.labels(model=name).set(-1)
            metrics.followed_age.labels(model=name).set(-1)

    def keep_restored(self, recorded: Mapping[str, Any]) -> None:
        """A followed model restored from the trainer's snapshot is the version that
        snapshot recorded (``extra_meta["followed"]``): in use (metrics, later
        snapshots) until a newer one comes."""
        for name, rec in recorded.items():
            model = self.models.get(name)
            if name not in self.follow or model is None:
                continue
            offsets = {t: {int(p): int(o) for p, o in parts.items()}
                       for t, parts in rec.get("offsets", {}).items()}
            self.swap_in(FollowedModel.copy_of(name, model, Path(rec["root"]),
                                               int(rec["version"]), float("nan"), offsets,
                                               rec.get("watermark")))

    def take(self, new: list[FollowedModel], topic: str,
             offsets: Mapping[tuple[str, int], int], watermark: float | None) -> None:
        """Swap new versions in once the trainer (at ``offsets`` on ``topic``, event
        time ``watermark``) has passed every event they learned; the hybrid and
        re-ranker blend them and the evaluator scores them from the next batch on."""
        arrived = {f.name for f in new}
        self.pending.update((f.name, f) for f in new)
        for name, f in list(self.pending.items()):
            if f.learned_before(topic, offsets, watermark):
                del self.pending[name]
                self.swap_in(f)
            elif name in arrived:
                log.log(logging.DEBUG if name in self._waited else logging.INFO,
                        "followed %s: version %d of %s waits until this trainer has passed "
                        "the events it learned (%s)%s", name, f.version, f.root,
                        f.offsets.get(topic) or f"event time {f.watermark}",
                        "" if name in self._waited else "; later waits are logged at DEBUG")
                self._waited.add(name)

    def swap_in(self, f: FollowedModel) -> None:
        old = self.models[f.name]
        self.models[f.name] = f.model
        try:
            registry.bind(self.models)
        except ValueError as exc:
            self.models[f.name] = old
            registry.bind(self.models)
            log.error("followed %s, version %d of %s, not used: %s", f.name, f.version,
                      f.root, exc)
            return
        self.on_swap(f.name, f.model)
        first = f.name not in self.in_use
        self.in_use[f.name] = f
        self.metrics.followed_version.labels(model=f.name).set(f.version)
        self.metrics.followed_age.labels(model=f.name).set_function(
            functools.partial(_age, f.created))
        log.log(logging.INFO if first else logging.DEBUG,
                "followed %s: version %d of %s in use%s", f.name, f.version, f.root,
                "; later versions are logged at DEBUG (liverec_trainer_followed_snapshot_"
                "version)" if first else "")

    def captured(self) -> dict[str, tuple[ModelState, dict[str, Any]]]:
        """The copied state of each version in use (a snapshot reuses it)."""
        return {n: f.captured for n, f in self.in_use.items()}

    def meta(self) -> dict[str, Any]:
        """What a snapshot records of the versions in use (``extra_meta["followed"]``)."""
        return {n: {"root": str(f.root), "version": f.version,
                    "offsets": _nest_str(f.offsets), "watermark": f.watermark}
                for n, f in self.in_use.items()}


def _age(created: float) -> float:
    """Seconds since ``created`` (epoch), -1 when unknown (NaN)."""
    return time.time() - created if created == created else -1.0


def _nest_str(offsets: Mapping[str, Mapping[int, int]]) -> dict[str, dict[str, int]]:
    """``{topic: {partition: offset}}`` with str partitions (JSON object keys)."""
    return {t: {str(p): o for p, o in parts.items()} for t, parts in offsets.items()}
