"""The trainer's gauges and status line (:class:`TrainerStatus`).

Every ``status_every_s`` (and at shutdown) :class:`~trainer.service.Trainer` sets its
gauges -- model sizes, evaluation figures, data drift, watermark and lag -- adds the
source thread's counters to the metrics, and logs :meth:`TrainerStatus.status_line`.
"""

from __future__ import annotations

import logging
import threading
import time

from online_models.base import OnlineModel, UserHistory
from online_models.drift import DataDriftTracker
from stream.settings import KafkaSettings
from trainer.checkpoint import Checkpointer
from trainer.evaluation import TrainerEvaluation
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings
from trainer.source import BatchSource

__all__ = ["TrainerStatus"]

# Log lines keep the trainer's one logger name (every log line shows it).
log = logging.getLogger("trainer.service")

#: the status line says Kafka has not answered once it has been silent this long
KAFKA_SILENCE_SAID_S = 30.0


class TrainerStatus:
    """Gauges and the status line: a part of :class:`~trainer.service.Trainer` (see
    the module docstring), which sets the state named here."""

    settings: TrainerSettings
    kafka: KafkaSettings
    metrics: TrainerMetrics
    stop_event: threading.Event
    models: dict[str, OnlineModel]
    history: UserHistory
    evaluation: TrainerEvaluation
    data_drift: DataDriftTracker
    source: BatchSource | None
    events_learned: int
    events_total: int
    duplicates: int
    rejected: int
    capped: dict[str, int]
    watermark: float | None
    snapshot_version: int | None
    checkpointer: Checkpointer
    _rate: float
    #: (monotonic time, events learned) at the last status line: its rate's start
    _line_mark: tuple[float, int] | None = None
    _seen: dict[str, int]

    def _update_gauges(self) -> None:
        m = self.metrics
        try:
            for name, model in self.models.items():
                m.users_known.labels(model=name).set(model.n_users)
                m.items_known.labels(model=name).set(model.n_items)
            self.evaluation.update_gauges()
            m.users_tracked.set(len(self.history))
            for dist, vals in self.data_drift.values().items():
                if vals["psi"] is not None:
                    m.data_drift_psi.labels(distribution=dist).set(vals["psi"])
                if vals["js"] is not None:
                    m.data_drift_js.labels(distribution=dist).set(vals["js"])
            m.events_total.set(self.events_total)
            if self.watermark is not None:
                m.watermark.set(self.watermark)
                m.event_time_lag.set(time.time() - self.watermark)
            if self.source is not None:
                src = self.source
                m.export_lag({p: n for p, n in dict(src.lag).items() if p in src.assigned})
                m.kafka_contact_age.set(src.kafka_contact_age())
                for key, counter, now in (
                    ("dlq", m.dlq_failures, src.dlq_failures),
                    ("consume", m.loop_errors.labels(stage="consume"), src.errors),
                    ("commit", m.loop_errors.labels(stage="commit"), src.commit_errors),
                    ("commits", m.offset_commits, src.commits_total),
                ):
                    if now > self._seen.get(key, 0):
                        counter.inc(now - self._seen.get(key, 0))
                        self._seen[key] = now
        except Exception:
            m.loop_errors.labels(stage="metrics").inc()
            log.exception("updating gauges failed")

    def _line_rate(self) -> float:
        """Events learned per second since the last status line (the gauge's 1-second
        window read 0 in a line written after a burst that ended a second before)."""
        now, mark = time.monotonic(), self._line_mark
        self._line_mark = (now, self.events_learned)
        if mark is None or now <= mark[0]:
            return self._rate
        return (self.events_learned - mark[1]) / (now - mark[0])

    def status_line(self) -> str:
        # Without partitions nothing is learned: say so, and where it is waiting (a
        # bootstrap nobody answers on looks like a quiet topic otherwise).
        parts = len(self.source.assigned) if self.source is not None else 0
        waiting = "" if parts or self.stop_event.is_set() else (
            f" (waiting to join group {self.settings.group} at {self.kafka.bootstrap})")
        if waiting and self.source is not None and self.source.topic_missing:
            waiting = (f" (topic {self.kafka.topic} does not exist at {self.kafka.bootstrap}, "
                       "or this principal may not read it: waiting for it)")
        silent = self.source.kafka_contact_age() if self.source is not None else 0.0
        if silent >= KAFKA_SILENCE_SAID_S and not self.stop_event.is_set():
            waiting += f" (no answer from Kafka at {self.kafka.bootstrap} for {silent:.0f} s)"
        return (
            f"partitions={parts}{waiting} "
            f"events learned={self.events_learned} total={self.events_total} "
            f"dup={self.duplicates} rejected={self.rejected} "
            f"capped={sum(self.capped.values())} rate={self._line_rate():.0f}/s "
            f"users={len(self.history)} {self.evaluation.hr_line()} "
            f"snapshot={self.snapshot_version}{self.checkpointer.failing()}"
        )
