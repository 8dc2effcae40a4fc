"""The pure-Python backend (``kafka-python``), chosen with ``LIVEREC_KAFKA_CLIENT=kafka-python``.

kafka-python 3 runs its network loop on an IO thread and calls rebalance listeners
there, where a blocking call such as ``KafkaConsumer.commit`` fails ("Cannot block
on net.run() from the IO thread itself"). The listener here is an
``AsyncConsumerRebalanceListener``: it runs the caller's hook, and a
:meth:`KafkaPythonConsumer.commit` made inside the hook is sent with the public
``commit_async`` and *awaited* by the listener before the rebalance goes on, so the
commit lands before the partitions move, as with librdkafka.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import kafka
from kafka import errors as kerr
from kafka.coordinator.assignors.range import RangePartitionAssignor

from stream.kafka.base import (
    ConsumerOptions,
    DeliveryCallback,
    Headers,
    KafkaClientError,
    Partition,
    ProducerOptions,
    QueueFull,
    RebalanceCallback,
    Record,
    RecordBatch,
)
from stream.settings import KafkaSettings

__all__ = ["KafkaPythonConsumer", "KafkaPythonProducer", "security_config", "servers"]

log = logging.getLogger(__name__)


def servers(settings: KafkaSettings) -> list[str]:
    if not settings.bootstrap:
        raise KafkaClientError("no Kafka bootstrap configured")
    return settings.bootstrap.split(",")


#: kafka-python's keyword for each of :meth:`KafkaSettings.security_values`' fields
_SECURITY_KEYS = {
    "sasl_mechanism": "sasl_mechanism", "sasl_username": "sasl_plain_username",
    "sasl_password": "sasl_plain_password", "ssl_cafile": "ssl_cafile",
    "ssl_certfile": "ssl_certfile", "ssl_keyfile": "ssl_keyfile",
    "ssl_key_password": "ssl_password",
}


def security_config(settings: KafkaSettings) -> dict[str, Any]:
    """kafka-python keyword arguments for the settings' security fields.

    >>> security_config(KafkaSettings(security_protocol="SSL", ssl_cafile="/ca.pem"))
    {'security_protocol': 'SSL', 'ssl_cafile': '/ca.pem', 'ssl_check_hostname': True}
    """
    conf: dict[str, Any] = {"security_protocol": settings.security_protocol}
    conf.update({_SECURITY_KEYS[k]: v for k, v in settings.security_values().items()})
    if settings.uses_ssl:
        conf["ssl_check_hostname"] = True
    return conf


def _wrap(exc: Exception, what: str) -> KafkaClientError:
    retriable = isinstance(exc, kerr.KafkaError) and bool(getattr(exc, "retriable", False))
    retriable = retriable or isinstance(exc, (kerr.KafkaTimeoutError, kerr.KafkaConnectionError,
                                              OSError))
    return KafkaClientError(f"{what}: {exc}", retriable=retriable)


_ERRORS = (kerr.KafkaError, OSError, AssertionError)


def _tp(part: Partition) -> kafka.TopicPartition:
    return kafka.TopicPartition(part[0], part[1])


def _parts(tps: Iterable[Any]) -> set[Partition]:
    return {(tp.topic, tp.partition) for tp in tps}


class _Listener(kafka.AsyncConsumerRebalanceListener):
    def __init__(self, owner: KafkaPythonConsumer, on_assign: RebalanceCallback | None,
                 on_revoke: RebalanceCallback | None) -> None:
        self.owner = owner
        self.on_assign = on_assign
        self.on_revoke = on_revoke

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.owner._in_hook(self.on_revoke, _parts(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.owner._in_hook(self.on_assign, _parts(assigned))

    async def on_partitions_lost(self, lost: Any) -> None:
        await self.owner._in_hook(self.on_revoke, _parts(lost))


class KafkaPythonConsumer:
    """:class:`stream.kafka.base.Consumer` on kafka-python.

    Parameters
    ----------
    settings
        Bootstrap and security.
    options
        Group, timeouts, offsets reset; see :class:`ConsumerOptions`.
    """

    def __init__(self, settings: KafkaSettings, options: ConsumerOptions) -> None:
        self.options = options
        try:
            self._c = kafka.KafkaConsumer(
                bootstrap_servers=servers(settings),
                group_id=options.group_id,
                client_id=options.client_id,
                enable_auto_commit=False,
                auto_offset_reset=options.auto_offset_reset,
                isolation_level=options.isolation_level,
                session_timeout_ms=options.session_timeout_ms,
                heartbeat_interval_ms=options.heartbeat_interval_ms,
                max_poll_interval_ms=max(options.max_poll_interval_ms,
                                         options.session_timeout_ms),
                max_poll_records=options.max_poll_records,
                fetch_max_wait_ms=options.fetch_max_wait_ms,
                # as the librdkafka client (see there)
                partition_assignment_strategy=(RangePartitionAssignor,),
                **security_config(settings),
            )
        except _ERRORS as exc:
            raise _wrap(exc, "creating the consumer") from exc
        self._hook_thread: int | None = None
        self._hook_commits: list[Any] = []

    async def _in_hook(self, hook: RebalanceCallback | None, parts: set[Partition]) -> None:
        """Run ``hook`` on the IO thread; commits it makes are awaited here."""
        if hook is None or not parts:
            return
        self._hook_thread, self._hook_commits = threading.get_ident(), []
        try:
            hook(parts)
        finally:
            self._hook_thread = None
        for fut in self._hook_commits:
            try:
                await fut
            except kerr.KafkaError as exc:
                log.error("commit inside the rebalance callback failed: %s", exc)
        self._hook_commits = []

    def _check_not_in_hook(self, what: str) -> None:
        if self._hook_thread == threading.get_ident():
            raise KafkaClientError(f"{what} cannot block inside a rebalance callback "
                                   "with kafka-python (commit and seek can)")

    # ------------------------------------------------------------------ group

    def subscribe(self, topics: Sequence[str], on_assign: RebalanceCallback | None = None,
                  on_revoke: RebalanceCallback | None = None) -> None:
        self._c.subscribe(list(topics), listener=_Listener(self, on_assign, on_revoke))
        # Then a metadata update, whatever the cache holds: the coordinator snapshots the
        # subscribed topics' partitions at each update, and a first join before one
        # assigns from an empty snapshot ("no partition metadata"), sees the partitions
        # arrive, and rebalances at once; under SASL_SSL that second join sometimes never
        # completed (the trainer sat without partitions until its watchdog rebuilt the
        # consumer).
        try:
            self._c.topics()
        except _ERRORS as exc:
            log.debug("metadata not refreshed after subscribing: %s", exc)

    def assign(self, parts: Iterable[Partition]) -> None:
        try:
            self._c.assign([_tp(p) for p in parts])
        except _ERRORS as exc:
            raise _wrap(exc, "assign") from exc

    def assignment(self) -> set[Partition]:
        return _parts(self._c.assignment())

    # ------------------------------------------------------------------ records

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        try:
            got = self._c.poll(timeout_ms=max(0, int(timeout_s * 1000)),
                               max_records=max(1, max_records))
        except _ERRORS as exc:
            raise _wrap(exc, "poll") from exc
        return [Record(r.topic, r.partition, r.offset, r.key, r.value,
                       tuple(r.headers or ()),
                       r.timestamp if r.timestamp is not None and r.timestamp >= 0 else None)
                for recs in got.values() for r in recs]

    def poll_batch(self, max_records: int, timeout_s: float) -> RecordBatch:
        try:
            got = self._c.poll(timeout_ms=max(0, int(timeout_s * 1000)),
                               max_records=max(1, max_records))
        except _ERRORS as exc:
            raise _wrap(exc, "poll") from exc
        recs = [r for rs in got.values() for r in rs]
        return RecordBatch([r.topic for r in recs], [r.partition for r in recs],
                           [r.offset for r in recs], [r.value for r in recs])

    # ------------------------------------------------------------------ offsets

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        if not offsets:
            return
        meta = {_tp(p): kafka.OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        if self._hook_thread == threading.get_ident():
            # Inside a rebalance hook on the IO thread: queue it; _in_hook awaits it
            # before the rebalance proceeds.
            self._hook_commits.append(self._c.commit_async(meta))
            return
        try:
            self._c.commit(meta)
        except _ERRORS as exc:
            raise _wrap(exc, "commit") from exc

    def committed(self, parts: Iterable[Partition], timeout_s: float = 10.0
                  ) -> dict[Partition, int | None]:
        self._check_not_in_hook("committed()")
        try:
            return {p: self._c.committed(_tp(p), timeout_ms=int(timeout_s * 1000))
                    for p in parts}
        except _ERRORS as exc:
            raise _wrap(exc, "committed") from exc

    def seek(self, part: Partition, offset: int) -> None:
        try:
            self._c.seek(_tp(part), offset)
        except (*_ERRORS, ValueError) as exc:  # ValueError: not assigned (any more)
            raise _wrap(exc, f"seek {part[0]}[{part[1]}]") from exc

    def pause(self, parts: Iterable[Partition]) -> None:
        try:
            self._c.pause(*[_tp(p) for p in parts])
        except (*_ERRORS, ValueError) as exc:
            raise _wrap(exc, "pause") from exc

    def position(self, part: Partition) -> int | None:
        self._check_not_in_hook("position()")
        try:
            pos = self._c.position(_tp(part), timeout_ms=5_000)
        except _ERRORS as exc:
            raise _wrap(exc, "position") from exc
        return None if pos is None else int(pos)

    def end_offsets(self, parts: Iterable[Partition], timeout_s: float = 10.0
                    ) -> dict[Partition, int]:
        self._check_not_in_hook("end_offsets()")
        tps = [_tp(p) for p in parts]
        if not tps:
            return {}
        try:
            got = self._c.end_offsets(tps, timeout_ms=int(timeout_s * 1000))
        except _ERRORS as exc:
            raise _wrap(exc, "end offsets") from exc
        return {(tp.topic, tp.partition): int(o) for tp, o in got.items()}

    def beginning_offsets(self, parts: Iterable[Partition], timeout_s: float = 10.0
                          ) -> dict[Partition, int]:
        self._check_not_in_hook("beginning_offsets()")
        tps = [_tp(p) for p in parts]
        if not tps:
            return {}
        try:
            got = self._c.beginning_offsets(tps, timeout_ms=int(timeout_s * 1000))
        except _ERRORS as exc:
            raise _wrap(exc, "beginning offsets") from exc
        return {(tp.topic, tp.partition): int(o) for tp, o in got.items()}

    def partitions_for(self, topic: str, timeout_s: float = 10.0) -> set[int]:
        self._check_not_in_hook("partitions_for()")
        try:
            return set(self._c.partitions_for_topic(topic) or ())
        except _ERRORS as exc:
            raise _wrap(exc, f"metadata of {topic}") from exc

    def close(self) -> None:
        try:
            self._c.close(autocommit=False)
        except _ERRORS as exc:
            log.debug("closing the consumer: %s", exc)


class KafkaPythonProducer:
    """:class:`stream.kafka.base.Producer` on kafka-python.

    Delivery callbacks are queued by the sender thread and run from :meth:`poll` and
    :meth:`flush` on the caller's thread, as librdkafka does. kafka-python treats a
    record the broker refuses as too large as fatal for an idempotent producer:
    every later send fails, so make a new producer after such an error.
    """

    def __init__(self, settings: KafkaSettings, options: ProducerOptions) -> None:
        self.options = options
        try:
            self._p = kafka.KafkaProducer(
                bootstrap_servers=servers(settings),
                client_id=options.client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=options.linger_ms,
                batch_size=64 * 1024,
                delivery_timeout_ms=options.delivery_timeout_ms,
                # kafka-python wants delivery > linger + request timeout.
                request_timeout_ms=max(1, min(30_000, (options.delivery_timeout_ms
                                                       - options.linger_ms) // 2)),
                max_block_ms=options.max_block_ms,
                # kafka-python probes the broker version when it is created: bound it
                # like a send (librdkafka never blocks there at all).
                bootstrap_timeout_ms=(max(1_000, options.max_block_ms)
                                      if options.bootstrap_timeout_ms is None
                                      else options.bootstrap_timeout_ms),
                max_request_size=options.max_request_bytes,
                compression_type=None if options.compression == "none"
                else options.compression,
                **security_config(settings),
            )
        except _ERRORS as exc:
            raise _wrap(exc, "creating the producer") from exc
        self._lock = threading.Lock()
        self._in_flight = 0
        self._done: deque[tuple[DeliveryCallback, KafkaClientError | None, Record | None]] = (
            deque())
        self.failed_total = 0
        self.last_error: KafkaClientError | None = None

    def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]
                  ) -> None:
        for i, (key, value) in enumerate(records):
            try:
                self.send(topic, value, key)  # each waits for room up to max_block_ms
            except QueueFull as exc:
                exc.queued = i
                raise

    def _reserve(self) -> None:
        """Take a place in the queue, waiting up to ``max_block_ms`` for one (as the
        librdkafka backend's send does); :class:`QueueFull` when none comes."""
        deadline = None
        while True:
            with self._lock:
                if self._in_flight < self.options.queue_max_messages:
                    self._in_flight += 1
                    return
                waiting = self._in_flight
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.options.max_block_ms / 1000.0
            if now >= deadline:
                raise QueueFull(f"producer queue full ({waiting} records waiting for "
                                "the broker)")
            self.poll()  # the delivery callbacks that are due
            time.sleep(min(0.005, deadline - now))

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Headers | None = None,
             on_delivery: DeliveryCallback | None = None) -> None:
        self._reserve()
        try:
            fut = self._p.send(topic, value=value, key=key,
                               headers=list(headers) if headers else None)
        except kerr.KafkaTimeoutError as exc:
            self._settled()
            raise QueueFull(f"send to {topic}: no room or no metadata within "
                            f"{self.options.max_block_ms} ms ({exc})") from exc
        except _ERRORS as exc:
            self._settled()
            raise _wrap(exc, f"send to {topic}") from exc

        def ok(md: Any) -> None:
            self._settled()
            if on_delivery is not None and self.options.report_successes:
                self._done.append((on_delivery, None, Record(
                    md.topic, md.partition, md.offset, key, value,
                    tuple(headers or ()), md.timestamp)))

        def failed(exc: Exception) -> None:
            error = _wrap(exc, f"delivery to {topic}")
            with self._lock:
                self.failed_total += 1
                self.last_error = error
            self._settled()
            if on_delivery is not None:
                self._done.append((on_delivery, error, None))

        fut.add_callback(ok)
        fut.add_errback(failed)

    def _settled(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def poll(self, timeout_s: float = 0.0) -> int:
        n = 0
        while self._done:
            cb, err, rec = self._done.popleft()
            cb(err, rec)
            n += 1
        return n

    def flush(self, timeout_s: float = 30.0) -> int:
        try:
            self._p.flush(timeout=timeout_s)
        except kerr.KafkaTimeoutError:
            log.warning("flush: records still undelivered after %.1fs", timeout_s)
        except kerr.KafkaError as exc:
            # After a fatal send error (a record too large for the topic) kafka-python's
            # flush raises for the aborted batches; their callbacks report each failure.
            log.warning("flush: %s", exc)
        self.poll()
        with self._lock:
            return self._in_flight

    def __len__(self) -> int:
        with self._lock:
            return self._in_flight

    def close(self, timeout_s: float = 30.0) -> None:
        left = self.flush(timeout_s)
        if left:
            log.error("closing the producer with %d undelivered records", left)
        try:
            self._p.close(timeout=max(0.0, timeout_s))
        except _ERRORS as exc:
            log.debug("closing the producer: %s", exc)
