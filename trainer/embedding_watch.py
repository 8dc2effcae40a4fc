"""How far the factor models' item embeddings moved: a drift figure for dashboards.

Each comparison copies every embedding table on the learner's thread, so the trainer
compares at its first durable snapshot at least ``every_s`` after the last comparison:
a fixed interval keeps the figure comparable while the snapshot cadence follows the
load (``liverec_trainer_embedding_drift_cosine_distance``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np

from online_models.base import OnlineModel
from online_models.drift import embedding_drift
from trainer.metrics import TrainerMetrics

__all__ = ["EmbeddingDriftWatch"]

log = logging.getLogger(__name__)


class EmbeddingDriftWatch:
    """Compares each model's ``item_vectors()`` with the copy of the last comparison."""

    def __init__(self, every_s: float, metrics: TrainerMetrics) -> None:
        self.every_s = every_s
        self.metrics = metrics
        self._prev: dict[str, tuple[list[str | None], np.ndarray]] = {}
        #: when the embeddings were last compared (monotonic; None: not yet)
        self.compared_at: float | None = None

    def remember(self, models: Mapping[str, OnlineModel]) -> None:
        """Take ``models``' embeddings as the reference (a restored snapshot's)."""
        for name, m in models.items():
            vec = m.item_vectors()
            if vec is not None:
                self._prev[name] = (list(m.items.ids), np.array(vec, copy=True))
                self.compared_at = time.monotonic()

    def compare(self, models: Mapping[str, OnlineModel]) -> None:
        """Compare with the reference and make the current embeddings it, unless the
        last comparison is more recent than ``every_s``."""
        now = time.monotonic()
        if self.compared_at is not None and now - self.compared_at < self.every_s:
            return
        self.compared_at = now
        for name, model in models.items():
            try:
                vec = model.item_vectors()
                if vec is None:
                    continue
                cur = (list(model.items.ids), np.array(vec, copy=True))
                prev = self._prev.get(name)
                if prev is not None:
                    d = embedding_drift(prev[0], prev[1], cur[0], cur[1])
                    if d is not None:
                        self.metrics.embedding_drift.labels(model=name).set(d)
                self._prev[name] = cur
            except Exception:
                self.metrics.loop_errors.labels(stage="metrics").inc()
                log.exception("embedding drift of %s failed", name)
