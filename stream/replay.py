"""Replay a CSV of interactions into Kafka, in event-time order.

Rows come from :func:`online_models.datasets.read_interactions` (presets ``liverec``,
``movielens``, ``online-retail`` or named columns); each becomes a
:class:`~stream.events.ClickEvent` keyed by user. Event ids are derived from the
row, so replaying a file twice produces duplicates that consumers can drop.
Rows that cannot be read or do not validate go to ``<topic>.dlq`` (with reason
``invalid_row`` or the validation reason); rows a preset skips on purpose (e.g.
Online Retail returns) are counted as skipped.

Pacing: ``rate`` events per second, or ``speedup`` times event time, or (neither)
as fast as the producer goes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from online_models.datasets import Dataset, InvalidRow, read_interactions
from stream.events import (
    DEFAULT_LIMITS,
    ClickEvent,
    Limits,
    Rejected,
    dlq_payload,
    encode,
    validate_dict,
)
from stream.kafka import make_producer

__all__ = ["ReplayResult", "Replayer", "produce_events", "replay_dataset", "replay_file"]

log = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    """What a replay did: events sent, rows rejected (by reason) or skipped."""

    sent: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    failed: int = 0  # sends the broker did not acknowledge
    elapsed_s: float = 0.0

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def summary(self) -> str:
        rate = self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0
        parts = [f"sent {self.sent}", f"rejected {self.n_rejected}"]
        if self.rejected:
            parts.append("(" + ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items()))
                         + ")")
        parts.append(f"skipped {sum(self.skipped.values())}")
        if self.failed:
            parts.append(f"FAILED {self.failed}")
        parts.append(f"in {self.elapsed_s:.1f}s ({rate:,.0f} events/s)")
        return " ".join(parts)


class Replayer:
    """Sends rows to ``topic`` with pacing; rejects to ``dlq_topic``.

    Parameters
    ----------
    bootstrap, topic
        Where to send.
    dlq_topic
        Dead-letter topic (default ``<topic>.dlq``).
    rate, speedup
        At most one of them: events per second, or a factor over event time.
    limits
        Validation limits.
    progress
        Show a tqdm progress bar.
    producer_config
        Extra ``KafkaProducer`` settings.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        dlq_topic: str | None = None,
        rate: float | None = None,
        speedup: float | None = None,
        limits: Limits = DEFAULT_LIMITS,
        progress: bool = True,
        **producer_config: Any,
    ) -> None:
        if rate is not None and speedup is not None:
            raise ValueError("give at most one of rate and speedup")
        if (rate is not None and rate <= 0) or (speedup is not None and speedup <= 0):
            raise ValueError("rate and speedup must be positive")
        self.bootstrap = bootstrap
        self.topic = topic
        self.dlq_topic = dlq_topic or f"{topic}.dlq"
        self.rate = rate
        self.speedup = speedup
        self.limits = limits
        self.progress = progress
        self.producer_config = producer_config

    def replay(self, dataset: Dataset, source: str = "") -> ReplayResult:
        """Send every row of ``dataset`` (and its invalid rows to the DLQ)."""
        from tqdm import tqdm

        result = ReplayResult(skipped=Counter(dataset.skipped))
        producer = make_producer(self.bootstrap, client_id="liverec-replay",
                                 **self.producer_config)
        failures: list[BaseException] = []

        def failed(exc: BaseException) -> None:
            failures.append(exc)

        start = time.monotonic()
        try:
            for bad in dataset.invalid:
                self._dead_letter(producer, _invalid_to_reject(bad), source, bad.line)
                result.rejected["invalid_row"] += 1
            t0: float | None = None
            bar = tqdm(total=len(dataset), unit="ev", disable=not self.progress,
                       desc=f"replay -> {self.topic}", smoothing=0.05)
            with bar:
                for n, row in enumerate(dataset):
                    if t0 is None:
                        t0 = row.timestamp
                    self._pace(n, row.timestamp - t0, start)
                    item = validate_dict(row._asdict(), now=time.time(), limits=self.limits)
                    if isinstance(item, ClickEvent):
                        fut = producer.send(self.topic, key=item.user_id.encode("utf-8"),
                                            value=encode(item))
                        fut.add_errback(failed)
                        result.sent += 1
                    else:
                        self._dead_letter(producer, item, source, None)
                        result.rejected[item.reason] += 1
                    bar.update(1)
            producer.flush()
        finally:
            producer.close(timeout=30)
            result.elapsed_s = time.monotonic() - start
        result.failed = len(failures)
        result.sent -= result.failed
        if failures:
            log.error("%d sends failed, first: %r", len(failures), failures[0])
        return result

    def _pace(self, n: int, event_offset_s: float, start: float) -> None:
        if self.rate is not None:
            due = n / self.rate
        elif self.speedup is not None:
            due = event_offset_s / self.speedup
        else:
            return
        delay = due - (time.monotonic() - start)
        if delay > 0:
            time.sleep(delay)

    def _dead_letter(self, producer: Any, rej: Rejected, source: str, line: int | None) -> None:
        value, headers = dlq_payload(rej, topic=None, partition=None, offset=None)
        headers.append(("source_file", source.encode("utf-8", "backslashreplace")))
        if line is not None:
            headers.append(("source_line", str(line).encode()))
        producer.send(self.dlq_topic, value=value, headers=headers)


def _invalid_to_reject(bad: InvalidRow) -> Rejected:
    raw = ",".join(bad.raw).encode("utf-8", "backslashreplace")
    return Rejected(raw, "invalid_row", f"line {bad.line}: {bad.reason}: {bad.detail}")


def replay_file(
    path: str | Path,
    bootstrap: str,
    topic: str,
    *,
    preset: str | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    event_type_col: str | None = None,
    rate: float | None = None,
    speedup: float | None = None,
    progress: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> ReplayResult:
    """Read ``path`` (CSV, plain or gzip) in time order and replay it into ``topic``.

    Raises
    ------
    ValueError
        Unknown preset or missing columns (from the CSV reader).
    kafka.errors.KafkaError
        The producer could not reach the cluster.
    """
    dataset = read_interactions(
        path, preset, user_col=user_col, item_col=item_col, time_col=time_col,
        event_type_col=event_type_col,
    )
    return Replayer(bootstrap, topic, rate=rate, speedup=speedup, progress=progress,
                    limits=limits).replay(dataset, source=str(path))


def replay_dataset(
    dataset: Dataset, bootstrap: str, topic: str, **kwargs: Any
) -> ReplayResult:
    """Replay an in-memory :class:`~online_models.datasets.Dataset` (see :class:`Replayer`)."""
    return Replayer(bootstrap, topic, **kwargs).replay(dataset, source=dataset.name)


def produce_events(
    bootstrap: str, topic: str, events: Iterable[ClickEvent], **producer_config: Any
) -> int:
    """Send ready-made events (keyed by user), wait for all acks; returns the count."""
    producer = make_producer(bootstrap, **producer_config)
    try:
        futures = [producer.send(topic, key=ev.user_id.encode("utf-8"), value=encode(ev))
                   for ev in events]
        producer.flush()
        for fut in futures:
            fut.get(timeout=30)
        return len(futures)
    finally:
        producer.close(timeout=30)
