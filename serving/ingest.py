"""The write path's sender: a bounded queue drained by one background thread.

``POST /v1/events`` never talks to Kafka on the request loop. It hands its records to
:meth:`Ingestor.submit`, which returns at once, and awaits their delivery for at most
``delivery_timeout_s``; the sender thread creates the producer (retrying with backoff
while Kafka is down, so a server started before Kafka connects once Kafka is up),
sends, and resolves each record's future from the producer's delivery callback.

The producer is anything with the small :class:`EventProducer` protocol (asynchronous
``send`` with a delivery callback, ``poll``, ``flush``, ``close``; the shape of
``stream.kafka.Producer`` in the client layer, so either backend fits);
``stream.kafka.make_producer`` builds one for either client library. A producer is
trusted only after ``probe`` (a metadata request) succeeds, since a client may
connect lazily and construct fine while Kafka is down.

Two refusals come back at once instead of waiting: the queue is full, or no producer
could be created yet (or the last deliveries failed; then one probe record per
``probe_interval_s`` is let through to find out when Kafka is back).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from serving.metrics import ServingMetrics

__all__ = [
    "Delivered",
    "DeliveryReport",
    "EventProducer",
    "IngestRefused",
    "Ingestor",
    "OnDelivery",
    "Record",
]

log = logging.getLogger(__name__)

#: the sender's wait for a new record while one awaits its delivery report, and idle
IN_FLIGHT_WAIT_S = 0.002
IDLE_WAIT_S = 0.05


class Delivered(Protocol):
    """Where Kafka stored a record (a :class:`DeliveryReport` or a client's record)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


class DeliveryReport(NamedTuple):
    """Where Kafka stored a record."""

    topic: str
    partition: int
    offset: int


#: ``on_delivery(error, report)``: exactly one of the two is None.
OnDelivery = Callable[[BaseException | None, Delivered | None], None]


class EventProducer(Protocol):
    """What the sender needs from a Kafka producer (both client libraries fit it)."""

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: OnDelivery | None = None,
    ) -> None:
        """Queue one record; never waits for the broker. ``on_delivery`` reports it."""
        ...

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks (a no-op for clients with their own I/O thread)."""
        ...

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for queued records; returns how many are still undelivered."""
        ...

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush and release the connection."""
        ...


class IngestRefused(Exception):
    """The sender refuses a record at once; ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class Record:
    """One message for the topic and the future its delivery resolves."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None
    deadline: float = 0.0
    future: concurrent.futures.Future[Delivered] = field(
        default_factory=concurrent.futures.Future
    )


class Ingestor:
    """Bounded queue + background sender thread + connection state.

    Parameters
    ----------
    factory
        Makes a connected :class:`EventProducer`; raising means "Kafka is not there
        yet" and is retried with backoff. None: ingestion is disabled.
    queue_max
        Records waiting for the sender before :meth:`submit` refuses (``queue_full``).
    delivery_timeout_s
        A record not acknowledged within this time fails with ``TimeoutError``; a
        record still queued at its deadline is never sent.
    metrics
        Where the queue depth goes (optional).
    connect_backoff_max_s, probe_interval_s
        Longest wait between connection attempts; how often a record is let through
        as a probe while the last delivery failed.
    probe
        Whether Kafka answers (e.g. a metadata request), asked every
        ``probe_interval_s`` while degraded and idle, so the state recovers without
        traffic (a replica out of rotation gets none).

    Attributes
    ----------
    state
        ``disabled``, ``connecting`` (no producer yet), ``connected`` or
        ``degraded`` (the last delivery failed, or a request's wait ran out and Kafka
        did not answer the probe that followed).
    reason
        Why the state is not ``connected`` (the last error), else ``""``.

    Examples
    --------
    >>> ing = Ingestor(None, queue_max=10, delivery_timeout_s=1.0)
    >>> ing.state
    'disabled'
    """

    def __init__(
        self,
        factory: Callable[[], EventProducer] | None,
        *,
        queue_max: int = 10_000,
        delivery_timeout_s: float = 5.0,
        metrics: ServingMetrics | None = None,
        connect_backoff_max_s: float = 5.0,
        probe_interval_s: float = 1.0,
        probe: Callable[[], bool] | None = None,
    ) -> None:
        self.factory = factory
        self.probe = probe
        self.delivery_timeout_s = delivery_timeout_s
        self.metrics = metrics
        self.connect_backoff_max_s = connect_backoff_max_s
        self.probe_interval_s = probe_interval_s
        self.state = "disabled" if factory is None else "connecting"
        self.reason = "no Kafka bootstrap configured" if factory is None else "not connected yet"
        self.connected_once = threading.Event()
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=queue_max)
        #: records sent whose delivery report has not been served yet
        self._inflight = 0
        self._producer: EventProducer | None = None
        self._last_probe = 0.0
        #: a request's wait ran out after this many seconds (None: none since the check)
        self._timed_out_s: float | None = None
        self._last_timeout_probe = -1e9
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liverec-ingest", daemon=True)

    # ------------------------------------------------------------------ request side
    def submit(self, records: Sequence[Record]) -> list[concurrent.futures.Future[Delivered]]:
        """Queue ``records`` (all or none); never blocks.

        Raises
        ------
        IngestRefused
            ``no_producer`` (ingestion disabled), ``kafka_unavailable`` (not
            connected, or degraded between probes) or ``queue_full``.
        """
        if self.state == "disabled":
            raise IngestRefused("no_producer", "this server has no Kafka bootstrap configured")
        if self.state == "connecting":
            raise IngestRefused("kafka_unavailable", f"Kafka is not reachable: {self.reason}")
        if self.state == "degraded":
            now = time.monotonic()
            if now - self._last_probe < self.probe_interval_s:
                raise IngestRefused("kafka_unavailable", f"Kafka is failing: {self.reason}")
            self._last_probe = now
        if self._queue.maxsize - self._queue.qsize() < len(records):
            raise IngestRefused("queue_full", "too many events are waiting for Kafka")
        deadline = time.monotonic() + self.delivery_timeout_s
        futures = []
        for rec in records:
            rec.deadline = deadline
            try:
                self._queue.put_nowait(rec)
            except queue.Full:  # raced with another submit; fail the rest, not block
                rec.future.set_exception(IngestRefused("queue_full", "queue filled up"))
            futures.append(rec.future)
        self._gauge()
        return futures

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.factory is not None:
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout)
            except Exception as exc:  # shutting down: say so, do not raise
                log.warning("closing the event producer failed: %s", exc)

    # ------------------------------------------------------------------ sender thread
    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                if self._producer is None:
                    if not self._connect():
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, self.connect_backoff_max_s)
                        continue
                    backoff = 0.2
                self._drain_once()
                self._check_after_timeout()
            except Exception:  # the sender must outlive anything a record does
                log.exception("ingest sender tick failed")
                self._stop.wait(0.1)

    def _connect(self) -> bool:
        assert self.factory is not None
        self._fail_expired()
        try:
            if self.probe is not None and not self.probe():
                raise ConnectionError("Kafka does not answer a metadata request")
            self._producer = self.factory()
        except Exception as exc:
            self._set_state("connecting", f"{type(exc).__name__}: {exc}")
            log.warning("no Kafka producer yet (%s); POST /v1/events answers 503", exc)
            return False
        self._set_state("connected", "")
        self.connected_once.set()
        log.info("Kafka producer connected; POST /v1/events is open")
        return True

    def _drain_once(self) -> None:
        producer = self._producer
        assert producer is not None
        # While a record awaits its delivery report, wait briefly: the report is served
        # by poll, and a request waits for it (a 50 ms wait made every lone write take
        # 50-100 ms, at the latency alert's threshold).
        busy = self._inflight > 0
        try:
            rec = self._queue.get(timeout=IN_FLIGHT_WAIT_S if busy else IDLE_WAIT_S)
        except queue.Empty:
            producer.poll(IN_FLIGHT_WAIT_S if busy else 0)
            self._maybe_probe()
            return
        self._gauge()
        if time.monotonic() >= rec.deadline or rec.future.done():
            # The request has already answered 503: never write what was refused.
            _fail(rec, TimeoutError("not sent within the delivery timeout"))
            return
        try:
            producer.send(rec.topic, rec.value, key=rec.key, headers=rec.headers,
                          on_delivery=self._callback(rec))
            self._inflight += 1
        except Exception as exc:
            self._failed(exc)
            _fail(rec, exc)
        producer.poll(0)

    def _callback(self, rec: Record) -> OnDelivery:
        def on_delivery(err: BaseException | None, report: Delivered | None) -> None:
            # served by poll or flush, on the sender thread (both clients)
            self._inflight -= 1
            if err is not None or report is None:
                self._failed(err or RuntimeError("no delivery report"))
                _fail(rec, err or RuntimeError("no delivery report"))
            else:
                if self.state != "connected":
                    self._set_state("connected", "")
                if not rec.future.done():
                    # cancelled meanwhile: the request has answered already
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        rec.future.set_result(report)

        return on_delivery

    def _check_after_timeout(self) -> None:
        """On the sender thread: probe once after a request's wait ran out (at most
        once per ``probe_interval_s``) and degrade when Kafka does not answer."""
        seconds = self._timed_out_s
        if seconds is None or self.state != "connected" or self.probe is None:
            self._timed_out_s = None
            return
        now = time.monotonic()
        if now - self._last_timeout_probe < self.probe_interval_s:
            return  # the request stays noted; probed once the interval is over
        self._timed_out_s, self._last_timeout_probe = None, now
        if not self._kafka_answers() and self.state == "connected":
            self._set_state("degraded", f"no acknowledgement within {seconds:g} s, and "
                                        "Kafka does not answer a metadata request")

    def _maybe_probe(self) -> None:
        if self.state != "degraded" or self.probe is None:
            return
        now = time.monotonic()
        if now - self._last_probe < self.probe_interval_s:
            return
        self._last_probe = now
        if self._kafka_answers() and self.state == "degraded":
            self._set_state("connected", "")

    def _kafka_answers(self) -> bool:
        """The probe's answer; a probe that raises is a no (not a crash)."""
        assert self.probe is not None
        try:
            return bool(self.probe())
        except Exception as exc:
            log.debug("Kafka probe failed: %s", exc)
            return False

    def delivery_timed_out(self, seconds: float) -> None:
        """A request's records went unacknowledged for ``seconds``: the sender thread
        asks Kafka for metadata at once and, when it gets no answer, counts Kafka as
        unavailable (``/readyz`` said "connected" for 20-30 s into an outage, until the
        client's own delivery timeout). A Kafka that answers is slow or this server is
        overloaded: nothing changes (degrading then refused nearly every write of a
        burst and made readiness flap)."""
        self._timed_out_s = seconds

    def _failed(self, exc: BaseException) -> None:
        self._set_state("degraded", f"{type(exc).__name__}: {exc}")

    def _fail_expired(self) -> None:
        while True:
            try:
                rec = self._queue.get_nowait()
            except queue.Empty:
                break
            _fail(rec, IngestRefused("kafka_unavailable", "Kafka is not reachable"))
        self._gauge()

    def _set_state(self, state: str, reason: str) -> None:
        if state != self.state:
            (log.info if state == "connected" else log.warning)(
                "event producer %s -> %s %s", self.state, state, reason
            )
        self.state, self.reason = state, reason

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.ingest_queue.set(self._queue.qsize())


def _fail(rec: Record, exc: BaseException) -> None:
    if not rec.future.done():
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # resolved meanwhile
            rec.future.set_exception(exc)
