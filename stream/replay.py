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

import contextlib
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np
import orjson

from online_models.datasets import Dataset, InvalidRow, read_interactions
from stream.events import (
    DEFAULT_LIMITS,
    EVENT_WEIGHTS,
    SCHEMA_VERSION,
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
    QueueFull,
    Record,
    as_settings,
    make_producer,
    send_all,
)
from stream.settings import KafkaSettings

__all__ = ["ReplayResult", "Replayer", "encode_chunks", "encode_rows", "produce_events",
           "replay_dataset", "replay_file"]

log = logging.getLogger(__name__)

#: how long a replayed record may wait for the broker before it counts as failed: a
#: bulk load outlasts a broker restart (at the producers' default of 2 minutes, a
#: 139 s outage lost 856 events of a paced replay in a chaos test)
DELIVERY_TIMEOUT_MS = 30 * 60_000
#: seconds between two WARNINGs about failed sends during a replay
FAILURES_LOG_S = 10.0
#: invalid rows named in the log, each with its line and reason (all go to the DLQ)
INVALID_ROWS_SAID = 5
#: longest one send waits for room in the producer's queue before the replay checks
#: Ctrl-C and says it is waiting (it then tries again)
ROOM_WAIT_MS = 1_000
#: how long kafka-python's producer may take to reach the cluster when it is created
#: (a slow TLS/SASL handshake, a broker restarting): not the 1 s of a send's wait
BOOTSTRAP_WAIT_MS = 60_000


@dataclass
class ReplayResult:
    """What a replay did: events sent, rows rejected (by reason) or skipped."""

    sent: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    failed: int = 0  # sends the broker did not acknowledge ...
    dlq_failed: int = 0  # ... of which dead-letter copies of rejected rows
    elapsed_s: float = 0.0
    #: stopped early by Ctrl-C (what was sent until then was still delivered)
    interrupted: bool = False

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
        if self.skipped:
            parts.append("(" + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
                         + ")")
        if self.failed:
            parts.append(f"FAILED {self.failed}" + (
                f" ({self.dlq_failed} of them dead-letter copies)" if self.dlq_failed else ""))
        parts.append(f"in {self.elapsed_s:.1f}s ({rate:,.0f} events/s)")
        return ("interrupted: " if self.interrupted else "") + " ".join(parts)


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[threading.Event]:
    """An event Ctrl-C (SIGINT) sets instead of raising, so that a replay stops between
    two sends, with an exact count; a second Ctrl-C sets it again and raises as usual.
    Off the main thread (no signal handlers there) the event is never set."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("Ctrl-C: stopping after the current send, then delivering what was "
                    "sent (Ctrl-C again to abandon it)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _deliver(producer: Producer, budget_s: float, stop: threading.Event) -> int:
    """Flush ``producer`` for up to ``budget_s`` (10 s once ``stop`` is set); the records
    still undelivered."""
    deadline = time.monotonic() + budget_s
    while True:
        if stop.is_set():
            deadline = min(deadline, time.monotonic() + 10.0)
        left = producer.flush(max(0.0, min(0.5, deadline - time.monotonic())))
        if not left or time.monotonic() >= deadline:
            return int(left)


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
        Producer batching (see :class:`stream.kafka.ProducerOptions`); no compression
        by default, so that both clients can read the topic.
    queue_max_messages
        Records the producer holds for the broker. While they fill it (the broker is
        down or slow), the replay waits for room, with a WARNING every
        :data:`FAILURES_LOG_S` and Ctrl-C still stopping it; a record waits up to
        :data:`DELIVERY_TIMEOUT_MS`, then counts as failed.
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
        compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] | None = None,
        queue_max_messages: int = 100_000,
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
        self.queue_max_messages = queue_max_messages
        self._reset_said()
        #: dead-letter copies the broker did not take (in this replay)
        self._dlq_failed = 0
        # No compression by default: kafka-python can read lz4/snappy/zstd topics only
        # with extra packages, and any reader must be able to read what replay writes.
        self.compression = compression or "none"

    def replay(self, dataset: Dataset, source: str = "") -> ReplayResult:
        """Send every row of ``dataset`` (and its invalid rows to the DLQ)."""
        from tqdm import tqdm

        result = ReplayResult(skipped=Counter(dataset.skipped))
        self._dlq_failed = 0
        producer = make_producer(self.settings, client_id="liverec-replay",
                                 linger_ms=self.linger_ms, compression=self.compression,
                                 max_block_ms=ROOM_WAIT_MS, report_successes=False,
                                 delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
                                 queue_max_messages=self.queue_max_messages,
                                 bootstrap_timeout_ms=BOOTSTRAP_WAIT_MS)
        self._reset_said()
        start = time.monotonic()
        topic = self.topic
        try:
            bar = tqdm(total=len(dataset), unit="ev", disable=not self.progress,
                       desc=f"replay -> {topic}", smoothing=0.05, mininterval=0.5)
            with _deferred_interrupt() as ctrl_c, bar:
                if self._send_invalid(producer, dataset, result, source, ctrl_c):
                    t0 = float(dataset.timestamps[0]) if len(dataset) else 0.0
                    result.sent = self._send_all(dataset, producer, bar, result, source, t0,
                                                 start, ctrl_c)
                result.interrupted = ctrl_c.is_set()
                left = _deliver(producer, 120.0, ctrl_c)
        finally:
            producer.close(30.0)
            result.elapsed_s = time.monotonic() - start
        # Rejects' DLQ copies count too: a failure is any record the broker did not take;
        # only the events' own failures come off the events sent.
        result.failed = producer.failed_total + left
        result.dlq_failed = min(self._dlq_failed, result.failed)
        result.sent = max(0, result.sent - (result.failed - result.dlq_failed))
        if result.failed:
            log.error("%d sends failed, last: %s", result.failed, producer.last_error)
        return result

    def _send_invalid(self, producer: Producer, dataset: Dataset, result: ReplayResult,
                      source: str, stop: threading.Event) -> bool:
        """The rows that could not be read, to the DLQ (the first few named in the log);
        False when ``stop`` was set meanwhile (the rest are not counted: not handled)."""
        for n, bad in enumerate(dataset.invalid):
            if not self._dead_letter(producer, _invalid_to_reject(bad), source, bad.line,
                                     stop):
                return False
            result.rejected["invalid_row"] += 1
            if n < INVALID_ROWS_SAID:
                log.warning("%s line %d: %s: %s (to %s)", source or "row", bad.line,
                            bad.reason, bad.detail, self.dlq_topic)
        if len(dataset.invalid) > INVALID_ROWS_SAID:
            log.warning("... and %d more invalid rows: their reasons are in %s (headers "
                        "reason, detail)", len(dataset.invalid) - INVALID_ROWS_SAID,
                        self.dlq_topic)
        return not stop.is_set()

    def _send_all(self, dataset: Dataset, producer: Producer, bar: Any,
                  result: ReplayResult, source: str, t0: float, start: float,
                  stop: threading.Event) -> int:
        """Send the rows (paced, or in chunks as fast as the producer goes) until done or
        ``stop`` is set (Ctrl-C: checked between rows, or chunks); the events sent."""
        topic = self.topic
        sent = 0
        if self._paced:
            for n, ts, key, item in encode_rows(dataset, self.limits):
                if n & 4095 == 0:
                    producer.poll(0)
                    self._say_failures(producer)
                if n & 63 == 0:  # a paced replay moves slowly: show it
                    bar.update(n - bar.n)
                if self._pace(n, ts - t0, start, stop):
                    return sent
                if type(item) is bytes:
                    if not self._send(producer, stop, topic, item, key):
                        return sent
                    sent += 1
                else:
                    assert isinstance(item, Rejected)
                    if not self._dead_letter(producer, item, source, None, stop):
                        return sent
                    result.rejected[item.reason] += 1
        else:  # as fast as the producer goes: chunks, batch produce
            for end, records, rejects in encode_chunks(dataset, self.limits):
                if stop.is_set():
                    return sent
                queued = self._send_many(producer, stop, topic, records)
                sent += queued
                if queued < len(records):
                    return sent
                for rej in rejects:
                    if not self._dead_letter(producer, rej, source, None, stop):
                        return sent
                    result.rejected[rej.reason] += 1
                producer.poll(0)
                self._say_failures(producer)
                bar.update(end - bar.n)
        bar.update(len(dataset) - bar.n)
        return sent

    def _reset_said(self) -> None:
        """Nothing said yet about this replay's failed sends or full queue."""
        #: when the producer's queue was first found full in the current wait (None:
        #: not waiting), and when that was last said
        self._full_since: float | None = None
        self._full_said_at = 0.0
        #: failed sends already said, and when (:meth:`_say_failures`)
        self._failed_said, self._failed_said_at = 0, 0.0

    def _say_failures(self, producer: Producer) -> None:
        """A WARNING, at most every :data:`FAILURES_LOG_S`, while sends fail: a long replay
        told its losses only in its summary, at the end."""
        failed = producer.failed_total
        now = time.monotonic()
        if failed > self._failed_said and now - self._failed_said_at >= FAILURES_LOG_S:
            log.warning("%d sends failed so far (%d since the last report; last: %s): "
                        "the broker did not take them", failed, failed - self._failed_said,
                        producer.last_error)
            self._failed_said, self._failed_said_at = failed, now

    def _send(self, producer: Producer, stop: threading.Event, topic: str,
              value: bytes, key: bytes | None, **more: Any) -> bool:
        """``producer.send``, waiting while its queue is full; False when ``stop`` was
        set while waiting (the record was not sent)."""
        while True:
            try:
                producer.send(topic, value, key, **more)
            except QueueFull as exc:
                if not self._wait_for_room(producer, stop, exc):
                    return False
                continue
            self._room_again()
            return True

    def _send_many(self, producer: Producer, stop: threading.Event, topic: str,
                   records: Sequence[tuple[bytes | None, bytes | None]]) -> int:
        """``producer.send_many``, waiting while its queue is full; how many records
        were queued (all, unless ``stop`` was set while waiting)."""
        done = 0
        while True:
            try:
                producer.send_many(topic, records[done:] if done else records)
            except QueueFull as exc:
                done += exc.queued  # the first ones are queued: in order, once
                if not self._wait_for_room(producer, stop, exc):
                    return done
                continue
            self._room_again()
            return len(records)

    def _wait_for_room(self, producer: Producer, stop: threading.Event,
                       exc: QueueFull) -> bool:
        """After a send the full queue refused: say so (at most every
        :data:`FAILURES_LOG_S`), serve delivery reports a moment; False once ``stop``
        is set. The replay waits for the broker instead of ending: a record that
        waits :data:`DELIVERY_TIMEOUT_MS` fails, which makes room too."""
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
        if now - self._full_said_at >= FAILURES_LOG_S:
            log.warning("the producer's queue has been full for %.0f s (%s): the broker at "
                        "%s takes records slower than the replay sends them, or none; "
                        "waiting for room. A record fails after %d minutes waiting "
                        "(Ctrl-C stops the replay with a summary)",
                        now - self._full_since + ROOM_WAIT_MS / 1000, exc,
                        self.settings.bootstrap, DELIVERY_TIMEOUT_MS // 60_000)
            self._full_said_at = now
        self._say_failures(producer)
        producer.poll(0)
        return not stop.wait(0.1)

    def _room_again(self) -> None:
        if self._full_since is not None:
            log.warning("the producer's queue has room again, after %.0f s full",
                        time.monotonic() - self._full_since + ROOM_WAIT_MS / 1000)
            self._full_since, self._full_said_at = None, 0.0

    @property
    def _paced(self) -> bool:
        return self.rate is not None or self.speedup is not None

    def _pace(self, n: int, event_offset_s: float, start: float,
              stop: threading.Event) -> bool:
        """Wait until row ``n`` is due; True when ``stop`` was set (before or meanwhile)."""
        if self.rate is not None:
            due = n / self.rate
        elif self.speedup is not None:
            due = event_offset_s / self.speedup
        else:
            return stop.is_set()
        delay = due - (time.monotonic() - start)
        return stop.wait(delay) if delay > 0 else stop.is_set()

    def _dead_letter(self, producer: Producer, rej: Rejected, source: str,
                     line: int | None, stop: threading.Event) -> bool:
        """Queue ``rej``'s dead-letter copy; False when ``stop`` was set while the
        producer's queue was full (not queued)."""
        value, headers = dlq_payload(rej, topic=None, partition=None, offset=None,
                                     max_bytes=self.settings.dlq_max_bytes)
        headers.append(("source_file", source.encode("utf-8", "backslashreplace")))
        if line is not None:
            headers.append(("source_line", str(line).encode()))
        return self._send(producer, stop, self.dlq_topic, value, None, headers=headers,
                          on_delivery=self._dlq_delivered)

    def _dlq_delivered(self, error: KafkaClientError | None, record: Record | None) -> None:
        if error is not None:
            self._dlq_failed += 1


def encode_rows(dataset: Dataset, limits: Limits = DEFAULT_LIMITS, *,
                now: float | None = None) -> Iterator[tuple[int, float, bytes, bytes | Rejected]]:
    """``(index, timestamp, key, value or reject)`` for every row of ``dataset``.

    The value is exactly ``encode(validate_dict(row))``. Rows whose columns pass
    cheap checks that imply validity (known event type, timestamp in range,
    printable ids of allowed length) are serialised straight from the columns;
    any other row goes through :func:`~stream.events.validate_dict`, which gives
    the verdict and the reason.

    >>> ds = Dataset.from_records([{"user_id": "u1", "item_id": "i1", "timestamp": 1.7e9,
    ...                             "event_type": "click", "event_id": "e1"}])
    >>> [(n, key, value[:30]) for n, _, key, value in encode_rows(ds, now=1.7e9)]
    [(0, b'u1', b'{"schema":1,"event_id":"e1","u')]
    """
    cols = _Columns(dataset, limits, now)
    for n, row in enumerate(cols.rows(0, len(dataset))):
        yield n, row[5], *cols.encode(*row)


def encode_chunks(dataset: Dataset, limits: Limits = DEFAULT_LIMITS, *,
                  now: float | None = None, size: int = 4096,
                  ) -> Iterator[tuple[int, list[tuple[bytes, bytes]], list[Rejected]]]:
    """:func:`encode_rows` a chunk of ``size`` rows at a time, for unpaced sending:
    ``(end row, (key, value) records in row order, rejects)`` per chunk.

    A chunk whose rows all pass the cheap checks is encoded by one comprehension
    (no per-row generator step); any other chunk row by row, as :func:`encode_rows`.

    >>> ds = Dataset.from_records([{"user_id": "u1", "item_id": "i1", "timestamp": 1.7e9,
    ...                             "event_type": "click", "event_id": "e1"}])
    >>> [(end, records[0][1][:30], rejects) for end, records, rejects
    ...  in encode_chunks(ds, now=1.7e9)]
    [(1, b'{"schema":1,"event_id":"e1","u', [])]
    """
    cols = _Columns(dataset, limits, now)
    dumps = orjson.dumps
    schema = SCHEMA_VERSION
    for lo in range(0, len(dataset), size):
        hi = min(len(dataset), lo + size)
        if all(cols.good[lo:hi]):
            users = cols.users[lo:hi]
            cells = zip(cols.event_ids[lo:hi], users, cols.items[lo:hi], cols.types[lo:hi],
                        cols.iso[lo:hi], cols.sessions[lo:hi], strict=True)
            values = [
                dumps({"schema": schema, "event_id": e, "user_id": u, "item_id": i,
                       "event_type": t, "timestamp": iso})
                if sid is None else
                dumps({"schema": schema, "event_id": e, "user_id": u, "item_id": i,
                       "event_type": t, "timestamp": iso, "session_id": sid})
                for e, u, i, t, iso, sid in cells
            ]
            yield hi, list(zip([u.encode("utf-8") for u in users], values, strict=True)), []
            continue
        records: list[tuple[bytes, bytes]] = []
        rejects: list[Rejected] = []
        for row in cols.rows(lo, hi):
            key, item = cols.encode(*row)
            if isinstance(item, Rejected):
                rejects.append(item)
            else:
                records.append((key, item))
        yield hi, records, rejects


class _Columns:
    """A dataset's columns with the cheap validity verdict and ISO times of each row."""

    def __init__(self, dataset: Dataset, limits: Limits, now: float | None) -> None:
        self.limits = limits
        self.now = time.time() if now is None else now
        lo, hi = self.now - limits.max_past_s, self.now + limits.max_future_s
        stamps = np.asarray(dataset.timestamps, dtype=np.float64)
        types = frozenset(EVENT_WEIGHTS)
        good = (stamps >= lo) & (stamps <= hi)
        good &= np.fromiter((t in types for t in dataset.event_types), bool, len(stamps))
        for column in (dataset.event_ids, dataset.users, dataset.items):
            good &= _ids_ok(column, limits.max_id_chars)
        if any(sid is not None for sid in dataset.session_ids):
            good &= _ids_ok(dataset.session_ids, limits.max_id_chars, optional=True)
        self.good: list[bool] = good.tolist()
        self.event_ids, self.users, self.items = dataset.event_ids, dataset.users, dataset.items
        self.types, self.sessions = dataset.event_types, dataset.session_ids
        self.stamps: list[float] = stamps.tolist()
        self.iso = iso_times(stamps, lo, hi)

    def rows(self, lo: int, hi: int) -> Iterator[tuple[bool, str, str, str, str, float, str,
                                                    str | None]]:
        return zip(self.good[lo:hi], self.event_ids[lo:hi], self.users[lo:hi],
                   self.items[lo:hi], self.types[lo:hi], self.stamps[lo:hi], self.iso[lo:hi],
                   self.sessions[lo:hi], strict=True)

    def encode(self, ok: bool, eid: str, uid: str, iid: str, etype: str, ts: float, iso: str,
               sid: str | None) -> tuple[bytes, bytes | Rejected]:
        """One row's key and value (or reject): from the columns when it passed the
        cheap checks, else ``validate_dict``'s verdict."""
        if ok:
            obj = {"schema": SCHEMA_VERSION, "event_id": eid, "user_id": uid, "item_id": iid,
                   "event_type": etype, "timestamp": iso}
            if sid is not None:
                obj["session_id"] = sid
            return uid.encode("utf-8"), orjson.dumps(obj)
        row = {"event_id": eid, "user_id": uid, "item_id": iid, "event_type": etype,
               "timestamp": ts, "session_id": sid}
        item = validate_dict(row, now=self.now, limits=self.limits)
        if isinstance(item, ClickEvent):
            return item.user_id.encode("utf-8"), encode(item)
        return b"", item


def _ids_ok(column: Sequence[object], max_chars: int, *, optional: bool = False
            ) -> np.ndarray:
    """Per value: a printable ``str`` of ``1..max_chars`` characters (or None when
    ``optional``). Checks the whole column at C speed first; row by row only if some
    value fails."""
    n = len(column)
    try:
        values = [v for v in column if v is not None] if optional else column
        if (values and "".join(values).isprintable()  # type: ignore[arg-type]
                and min(map(len, values)) >= 1 and max(map(len, values)) <= max_chars):  # type: ignore[arg-type]
            return np.ones(n, bool)
        if not values:
            return np.ones(n, bool)
    except TypeError:
        pass  # some value is not a str

    def one(v: object) -> bool:
        if v is None:
            return optional
        return type(v) is str and 0 < len(v) <= max_chars and v.isprintable()

    return np.fromiter(map(one, column), bool, n)


def iso_times(stamps: np.ndarray, lo: float = 0.0, hi: float = 253_402_300_799.0
              ) -> list[str]:
    """``datetime.fromtimestamp(t, UTC).isoformat()`` of every stamp, vectorised
    (the same microsecond rounding); stamps outside ``[lo, hi]`` give ``""``.

    >>> for iso in iso_times(np.array([0.0, 1.5, 1_700_000_000.000001])):
    ...     print(iso)
    1970-01-01T00:00:00+00:00
    1970-01-01T00:00:01.500000+00:00
    2023-11-14T22:13:20.000001+00:00
    """
    ts = np.where((stamps >= max(lo, 0.0)) & (stamps <= hi), stamps, 0.0)
    secs = np.floor(ts)
    us = np.round((ts - secs) * 1e6).astype(np.int64)  # half-even, as datetime does
    carry = us >= 1_000_000
    secs, us = secs + carry, np.where(carry, us - 1_000_000, us)
    days = np.datetime_as_string(secs.astype(np.int64).astype("datetime64[s]"), unit="s")
    out = [f"{d}.{u:06d}+00:00" if u else f"{d}+00:00"
           for d, u in zip(days.tolist(), us.tolist(), strict=True)]
    outside = np.flatnonzero(ts != stamps)
    for i in outside.tolist():
        out[i] = ""
    return out


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
    event_types: Mapping[str, str] | None = None,
    rate: float | None = None,
    speedup: float | None = None,
    progress: bool = True,
    limits: Limits | None = None,
    limit: int | None = None,
) -> ReplayResult:
    """Read ``path`` (CSV, plain or gzip) in time order and replay it into ``topic``
    (default ``settings.topic``): its first ``limit`` valid events when given (the
    file's invalid rows go to the dead-letter topic all the same).

    Raises
    ------
    ValueError
        Unknown preset or missing columns (from the CSV reader).
    stream.kafka.KafkaClientError
        The producer could not be created.
    """
    dataset = read_interactions(
        path, preset, user_col=user_col, item_col=item_col, time_col=time_col,
        event_type_col=event_type_col, event_types=event_types,
    )
    if limit is not None:
        dataset = dataset[:limit]
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
