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
from typing import Any, Literal

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
from stream.kafka import (
    KafkaClientError,
    Producer,
    Record,
    as_settings,
    make_producer,
    send_all,
)
from stream.settings import KafkaSettings

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
    """Sends rows to ``settings.topic`` with pacing; rejects to ``settings.dlq_topic``.

    Parameters
    ----------
    settings
        Cluster, topic, client, validation limits (a bootstrap string plus ``topic``
        is accepted too).
    topic
        Overrides ``settings.topic``.
    dlq_topic
        Dead-letter topic (default ``<topic>.dlq``).
    rate, speedup
        At most one of them: events per second, or a factor over event time.
    limits
        Validation limits (default ``settings.limits``).
    progress
        Show a tqdm progress bar.
    linger_ms, compression
        Producer batching (see :class:`stream.kafka.ProducerOptions`).
    """

    def __init__(
        self,
        settings: KafkaSettings | str,
        topic: str | None = None,
        *,
        dlq_topic: str | None = None,
        rate: float | None = None,
        speedup: float | None = None,
        limits: Limits | None = None,
        progress: bool = True,
        linger_ms: int = 20,
        compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4",
    ) -> None:
        if rate is not None and speedup is not None:
            raise ValueError("give at most one of rate and speedup")
        if (rate is not None and rate <= 0) or (speedup is not None and speedup <= 0):
            raise ValueError("rate and speedup must be positive")
        s = as_settings(settings)
        self.settings = s if topic is None else s.model_copy(update={"topic": topic})
        self.topic = self.settings.topic
        self.dlq_topic = dlq_topic or self.settings.dlq_topic
        self.rate = rate
        self.speedup = speedup
        self.limits = limits or (self.settings.limits if isinstance(settings, KafkaSettings)
                                 else DEFAULT_LIMITS)
        self.progress = progress
        self.linger_ms = linger_ms
        self.compression = compression

    def replay(self, dataset: Dataset, source: str = "") -> ReplayResult:
        """Send every row of ``dataset`` (and its invalid rows to the DLQ)."""
        from tqdm import tqdm

        result = ReplayResult(skipped=Counter(dataset.skipped))
        producer = make_producer(self.settings, client_id="liverec-replay",
                                 linger_ms=self.linger_ms, compression=self.compression,
                                 max_block_ms=60_000)
        failures: list[KafkaClientError] = []

        def on_delivery(err: KafkaClientError | None, rec: Record | None) -> None:
            if err is not None:
                failures.append(err)

        start = time.monotonic()
        send, topic, limits, paced = producer.send, self.topic, self.limits, self._paced
        try:
            for bad in dataset.invalid:
                self._dead_letter(producer, _invalid_to_reject(bad), source, bad.line,
                                  on_delivery)
                result.rejected["invalid_row"] += 1
            t0: float | None = None
            bar = tqdm(total=len(dataset), unit="ev", disable=not self.progress,
                       desc=f"replay -> {topic}", smoothing=0.05, mininterval=0.5)
            with bar:
                now = time.time()
                for n, row in enumerate(dataset):
                    if paced:
                        if t0 is None:
                            t0 = row.timestamp
                        self._pace(n, row.timestamp - t0, start)
                    if n & 4095 == 0:
                        now = time.time()
                        producer.poll(0)
                        if n:
                            bar.update(4096)
                    item = validate_dict(row._asdict(), now=now, limits=limits)
                    if type(item) is ClickEvent:
                        send(topic, encode(item), item.user_id.encode("utf-8"), None,
                             on_delivery)
                        result.sent += 1
                    else:
                        assert isinstance(item, Rejected)
                        self._dead_letter(producer, item, source, None, on_delivery)
                        result.rejected[item.reason] += 1
                bar.update(len(dataset) - bar.n)
            left = producer.flush(120.0)
            if left:
                failures.extend(KafkaClientError("not delivered") for _ in range(left))
        finally:
            producer.close(30.0)
            result.elapsed_s = time.monotonic() - start
        result.failed = len(failures)
        result.sent -= result.failed
        if failures:
            log.error("%d sends failed, first: %s", len(failures), failures[0])
        return result

    @property
    def _paced(self) -> bool:
        return self.rate is not None or self.speedup is not None

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

    def _dead_letter(self, producer: Producer, rej: Rejected, source: str, line: int | None,
                     on_delivery: Any) -> None:
        value, headers = dlq_payload(rej, topic=None, partition=None, offset=None,
                                     max_bytes=self.settings.dlq_max_bytes)
        headers.append(("source_file", source.encode("utf-8", "backslashreplace")))
        if line is not None:
            headers.append(("source_line", str(line).encode()))
        producer.send(self.dlq_topic, value, headers=headers, on_delivery=on_delivery)


def _invalid_to_reject(bad: InvalidRow) -> Rejected:
    raw = ",".join(bad.raw).encode("utf-8", "backslashreplace")
    return Rejected(raw, "invalid_row", f"line {bad.line}: {bad.reason}: {bad.detail}")


def replay_file(
    path: str | Path,
    settings: KafkaSettings | str,
    topic: str | None = None,
    *,
    preset: str | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    event_type_col: str | None = None,
    rate: float | None = None,
    speedup: float | None = None,
    progress: bool = True,
    limits: Limits | None = None,
) -> ReplayResult:
    """Read ``path`` (CSV, plain or gzip) in time order and replay it into ``topic``
    (default ``settings.topic``).

    Raises
    ------
    ValueError
        Unknown preset or missing columns (from the CSV reader).
    stream.kafka.KafkaClientError
        The producer could not be created.
    """
    dataset = read_interactions(
        path, preset, user_col=user_col, item_col=item_col, time_col=time_col,
        event_type_col=event_type_col,
    )
    return Replayer(settings, topic, rate=rate, speedup=speedup, progress=progress,
                    limits=limits).replay(dataset, source=str(path))


def replay_dataset(
    dataset: Dataset, settings: KafkaSettings | str, topic: str | None = None, **kwargs: Any
) -> ReplayResult:
    """Replay an in-memory :class:`~online_models.datasets.Dataset` (see :class:`Replayer`)."""
    return Replayer(settings, topic, **kwargs).replay(dataset, source=dataset.name)


def produce_events(
    settings: KafkaSettings | str, topic: str, events: Iterable[ClickEvent], **options: Any
) -> int:
    """Send ready-made events (keyed by user), wait for all acks; returns the count.

    ``options`` are :class:`stream.kafka.ProducerOptions` fields.

    Raises
    ------
    stream.kafka.KafkaClientError
        Some event was not acknowledged.
    """
    producer = make_producer(settings, **options)
    try:
        return send_all(producer, topic,
                        ((ev.user_id.encode("utf-8"), encode(ev)) for ev in events))
    finally:
        producer.close(30.0)
