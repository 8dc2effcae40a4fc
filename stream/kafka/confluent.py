"""The librdkafka backend (``confluent-kafka``), the default.

librdkafka fetches and sends in its own threads; the Python side only moves whole
batches (``consume(num_messages, timeout)``) and serves callbacks. Rebalance
callbacks run inside :meth:`ConfluentConsumer.poll` on the calling thread, so a
synchronous commit in ``on_revoke`` simply works.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient, NewTopic

from stream.consume_errors import records_only
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
from stream.logfilter import RepeatFilter
from stream.settings import KafkaSettings

__all__ = ["ConfluentConsumer", "ConfluentProducer", "admin_create_topics",
           "admin_delete_topics", "cluster_id", "security_config"]

log = logging.getLogger(__name__)
#: librdkafka's partitioner for keyed records: murmur2, as kafka-python and the Java
#: client hash keys (a null key goes to a random partition, as with theirs)
PARTITIONER = "murmur2_random"
_rdlog = logging.getLogger("stream.kafka.librdkafka")


class _StartupRetries(logging.Filter):
    """Drops librdkafka's lines about a coordinator still loading (a broker's normal
    first seconds; librdkafka retries by itself) unless the logger is at DEBUG.

    >>> rec = logging.LogRecord("x", logging.WARNING, "", 0, "GETPID [p] Failed to "
    ...     "acquire idempotence PID: Broker: Coordinator load in progress: retrying",
    ...     None, None)
    >>> _StartupRetries().filter(rec)
    False
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return ("Coordinator load in progress" not in record.getMessage()
                or _rdlog.isEnabledFor(logging.DEBUG))


_rdlog.addFilter(_StartupRetries())
_rdlog.addFilter(RepeatFilter())  # a broker outage: one line a minute per kind, not dozens a second
_INVALID = ck.OFFSET_INVALID


#: librdkafka's name for each of :meth:`KafkaSettings.security_values`' fields
_SECURITY_KEYS = {
    "sasl_mechanism": "sasl.mechanisms", "sasl_username": "sasl.username",
    "sasl_password": "sasl.password", "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location", "ssl_keyfile": "ssl.key.location",
    "ssl_key_password": "ssl.key.password",
}


def security_config(settings: KafkaSettings) -> dict[str, Any]:
    """librdkafka properties for the settings' security fields.

    >>> security_config(KafkaSettings(security_protocol="SASL_SSL", sasl_username="u",
    ...                               sasl_password="p"))["sasl.mechanisms"]
    'SCRAM-SHA-512'
    """
    conf: dict[str, Any] = {"security.protocol": settings.security_protocol.lower()}
    conf.update({_SECURITY_KEYS[k]: v for k, v in settings.security_values().items()})
    return conf


def _base_config(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    if not settings.bootstrap:
        raise KafkaClientError("no Kafka bootstrap configured")
    conf = {"bootstrap.servers": settings.bootstrap, "client.id": client_id,
            "logger": _rdlog, "error_cb": _log_error}
    conf.update(security_config(settings))
    return conf


_errlog = logging.getLogger("stream.kafka.confluent.errors")
_errlog.addFilter(RepeatFilter())


def _log_error(err: ck.KafkaError) -> None:
    # Broker-down and similar transient errors: librdkafka retries by itself.
    level = logging.ERROR if err.fatal() else logging.WARNING
    if err.code() in (ck.KafkaError._TRANSPORT, ck.KafkaError._ALL_BROKERS_DOWN):
        level = logging.INFO
    _errlog.log(level, "librdkafka: %s", err)


def _wrap(exc: ck.KafkaException, what: str) -> KafkaClientError:
    err = exc.args[0] if exc.args else None
    if isinstance(err, ck.KafkaError):
        return KafkaClientError(f"{what}: {err.str()}", retriable=bool(err.retriable()))
    return KafkaClientError(f"{what}: {exc}", retriable=True)


def _tp(part: Partition, offset: int = _INVALID) -> ck.TopicPartition:
    return ck.TopicPartition(part[0], part[1], offset)


def _parts(tps: Iterable[ck.TopicPartition]) -> set[Partition]:
    return {(tp.topic, tp.partition) for tp in tps}


def _record(msg: ck.Message) -> Record:
    ts_type, ts = msg.timestamp()
    headers = msg.headers()
    return Record(msg.topic(), msg.partition(), msg.offset(),  # type: ignore[arg-type]
                  msg.key(), msg.value(),
                  tuple(headers) if headers else (),  # type: ignore[arg-type]
                  ts if ts_type != ck.TIMESTAMP_NOT_AVAILABLE else None)


class ConfluentConsumer:
    """:class:`stream.kafka.base.Consumer` on librdkafka.

    Parameters
    ----------
    settings
        Bootstrap and security.
    options
        Group, timeouts, offsets reset; see :class:`ConsumerOptions`.
    """

    def __init__(self, settings: KafkaSettings, options: ConsumerOptions) -> None:
        self.options = options
        conf = _base_config(settings, options.client_id)
        conf.update({
            # librdkafka needs a group id even for assign(); nothing is committed
            # under this one.
            "group.id": options.group_id or f"{options.client_id}-nogroup",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": options.auto_offset_reset,
            "isolation.level": options.isolation_level,
            "session.timeout.ms": options.session_timeout_ms,
            "heartbeat.interval.ms": options.heartbeat_interval_ms,
            "max.poll.interval.ms": max(options.max_poll_interval_ms,
                                        options.session_timeout_ms),
            "fetch.wait.max.ms": options.fetch_max_wait_ms,
            "enable.partition.eof": False,
            # Range, as both clients' defaults pick: the last member gets the fewest
            # partitions, which the scale-out trainer relies on (trainer.partitioned).
            "partition.assignment.strategy": "range",
        })
        try:
            self._c = ck.Consumer(conf)
        except ck.KafkaException as exc:
            raise _wrap(exc, "creating the consumer") from exc
        self._in_callback = False
        self._callback_seeks: dict[Partition, int] = {}
        #: group assignments received, an empty one included (``on_assign`` is not
        #: called for those): a member that lost its partitions in a rebalance tells
        #: by this that the rebalance's assignment has come
        self.assignments = 0

    # ------------------------------------------------------------------ group

    def subscribe(self, topics: Sequence[str], on_assign: RebalanceCallback | None = None,
                  on_revoke: RebalanceCallback | None = None) -> None:
        def assigned(consumer: ck.Consumer, tps: list[ck.TopicPartition]) -> None:
            # Assign first so that the hook sees the new assignment; seeks asked for
            # inside the hook become start offsets of a second assign (a seek on a
            # partition whose fetcher has not started yet is refused).
            consumer.assign(tps)
            self.assignments += 1
            if on_assign is None or not tps:
                return
            self._in_callback, self._callback_seeks = True, {}
            try:
                on_assign(_parts(tps))
            finally:
                self._in_callback = False
            if self._callback_seeks:
                consumer.assign([_tp((tp.topic, tp.partition), self._callback_seeks.get(
                    (tp.topic, tp.partition), _INVALID)) for tp in tps])

        def revoked(consumer: ck.Consumer, tps: list[ck.TopicPartition]) -> None:
            try:
                if on_revoke is not None and tps:
                    on_revoke(_parts(tps))
            finally:
                consumer.unassign()

        try:
            self._c.subscribe(list(topics), on_assign=assigned, on_revoke=revoked,
                              on_lost=revoked)
        except ck.KafkaException as exc:
            raise _wrap(exc, "subscribe") from exc

    def assign(self, parts: Iterable[Partition]) -> None:
        try:
            self._c.assign([_tp(p) for p in parts])
        except ck.KafkaException as exc:
            raise _wrap(exc, "assign") from exc

    def assignment(self) -> set[Partition]:
        return _parts(self._c.assignment())

    def assign_at(self, offsets: Mapping[Partition, int]) -> None:
        """Read exactly these partitions, each from its given offset (one assign: seeks
        right after :meth:`assign` would restart partitions not yet fetching)."""
        try:
            self._c.assign([_tp(p, o) for p, o in offsets.items()])
        except ck.KafkaException as exc:
            raise _wrap(exc, "assign") from exc

    def group_metadata(self) -> Any:
        """The group's metadata (generation, member): what a transaction commits
        offsets under (:mod:`stream.kafka.transactional`)."""
        return self._c.consumer_group_metadata()

    # ------------------------------------------------------------------ records

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        try:
            msgs = self._c.consume(num_messages=max(1, max_records), timeout=max(0.0, timeout_s))
        except ck.KafkaException as exc:
            raise _wrap(exc, "consume") from exc
        return [_record(m) for m in records_only(msgs, log, KafkaClientError)]

    def poll_batch(self, max_records: int, timeout_s: float) -> RecordBatch:
        try:
            msgs = self._c.consume(num_messages=max(1, max_records), timeout=max(0.0, timeout_s))
        except ck.KafkaException as exc:
            raise _wrap(exc, "consume") from exc
        if any(m.error() is not None for m in msgs):
            msgs = records_only(msgs, log, KafkaClientError)
        return RecordBatch([m.topic() for m in msgs],  # type: ignore[misc]
                           [m.partition() for m in msgs],  # type: ignore[misc]
                           [m.offset() for m in msgs],  # type: ignore[misc]
                           [m.value() for m in msgs])

    # ------------------------------------------------------------------ offsets

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        if not offsets:
            return
        try:
            result = self._c.commit(offsets=[_tp(p, o) for p, o in offsets.items()],
                                    asynchronous=False)
        except ck.KafkaException as exc:
            raise _wrap(exc, "commit") from exc
        failed = [tp for tp in result or () if tp.error is not None]
        if failed:
            raise KafkaClientError(
                "commit failed for " + ", ".join(
                    f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in failed),
                retriable=all(bool(tp.error and tp.error.retriable()) for tp in failed))

    def committed(self, parts: Iterable[Partition], timeout_s: float = 10.0
                  ) -> dict[Partition, int | None]:
        tps = [_tp(p) for p in parts]
        if not tps:
            return {}
        try:
            got = self._c.committed(tps, timeout=timeout_s)
        except ck.KafkaException as exc:
            raise _wrap(exc, "committed") from exc
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None
                for tp in got}

    def seek(self, part: Partition, offset: int) -> None:
        if self._in_callback:
            self._callback_seeks[part] = offset
            return
        try:
            self._c.seek(_tp(part, offset))
        except ck.KafkaException as exc:
            if exc.args[0].code() != ck.KafkaError._STATE:
                raise _wrap(exc, f"seek {part[0]}[{part[1]}]") from exc
            # Just assigned, fetcher not started: a seek is refused, so start it there
            # by assigning again with that offset (the others keep their positions).
            self._reassign_at(part, offset)

    def _reassign_at(self, part: Partition, offset: int) -> None:
        tps = []
        for tp in self._c.assignment():
            here = (tp.topic, tp.partition)
            if here == part:
                tps.append(_tp(here, offset))
                continue
            try:
                (pos,) = self._c.position([_tp(here)])
                tps.append(_tp(here, pos.offset))
            except ck.KafkaException:
                tps.append(_tp(here))
        try:
            self._c.assign(tps)
        except ck.KafkaException as exc:
            raise _wrap(exc, f"seek {part[0]}[{part[1]}]") from exc

    def pause(self, parts: Iterable[Partition]) -> None:
        # Inside on_assign this comes after the hook's assign(), so it holds (a pause
        # before librdkafka's own assign would be undone by it), and a second assign
        # keeps it.
        try:
            self._c.pause([_tp(p) for p in parts])
        except ck.KafkaException as exc:
            raise _wrap(exc, "pause") from exc

    def position(self, part: Partition) -> int | None:
        try:
            (tp,) = self._c.position([_tp(part)])
        except ck.KafkaException as exc:
            raise _wrap(exc, "position") from exc
        return tp.offset if tp.offset >= 0 else None

    def end_offsets(self, parts: Iterable[Partition], timeout_s: float = 10.0
                    ) -> dict[Partition, int]:
        return {p: self._watermarks(p, timeout_s)[1] for p in parts}

    def beginning_offsets(self, parts: Iterable[Partition], timeout_s: float = 10.0
                          ) -> dict[Partition, int]:
        return {p: self._watermarks(p, timeout_s)[0] for p in parts}

    def _watermarks(self, part: Partition, timeout_s: float) -> tuple[int, int]:
        try:
            low, high = self._c.get_watermark_offsets(_tp(part), timeout=timeout_s,
                                                      cached=False)
        except ck.KafkaException as exc:
            raise _wrap(exc, f"watermarks of {part[0]}[{part[1]}]") from exc
        return int(low), int(high)

    def partitions_for(self, topic: str, timeout_s: float = 10.0) -> set[int]:
        try:
            md = self._c.list_topics(topic, timeout=timeout_s)
        except ck.KafkaException as exc:
            raise _wrap(exc, f"metadata of {topic}") from exc
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            return set()
        return set(t.partitions)

    def close(self) -> None:
        try:
            self._c.close()
        except (ck.KafkaException, RuntimeError) as exc:
            log.debug("closing the consumer: %s", exc)


class ConfluentProducer:
    """:class:`stream.kafka.base.Producer` on librdkafka (``send`` never blocks on the
    network; a full queue waits at most ``max_block_ms`` for room)."""

    def __init__(self, settings: KafkaSettings, options: ProducerOptions) -> None:
        self.options = options
        conf = _base_config(settings, options.client_id)
        conf.update({
            "acks": "all",
            "enable.idempotence": True,
            # The Java client's and kafka-python's key hash: a key lands in the same
            # partition whichever client sent it (librdkafka's default is CRC32).
            "partitioner": PARTITIONER,
            "linger.ms": options.linger_ms,
            "delivery.timeout.ms": options.delivery_timeout_ms,
            "queue.buffering.max.messages": options.queue_max_messages,
            "compression.type": options.compression,
            "message.max.bytes": options.max_request_bytes,
            # Reports of sends without their own callback: count the failures.
            "on_delivery": self._count_failure,
            "delivery.report.only.error": not options.report_successes,
        })
        try:
            self._p = ck.Producer(conf)
        except ck.KafkaException as exc:
            raise _wrap(exc, "creating the producer") from exc
        self.failed_total = 0
        self.last_error: KafkaClientError | None = None
        self._cb_of: DeliveryCallback | None = None
        self._cb: Any = None

    def _count_failure(self, err: ck.KafkaError | None, msg: ck.Message) -> None:
        if err is not None:
            self.failed_total += 1
            self.last_error = KafkaClientError(err.str(), retriable=bool(err.retriable()))

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Headers | None = None,
             on_delivery: DeliveryCallback | None = None) -> None:
        if on_delivery is None:
            cb = self._count_failure
        elif on_delivery is self._cb_of:
            cb = self._cb  # the same callback as last time: reuse its wrapper
        else:
            cb = self._cb = _delivery(on_delivery, self._count_failure)
            self._cb_of = on_delivery
        deadline = None
        while True:
            try:
                if headers:
                    self._p.produce(topic, value, key, headers=list(headers),
                                    on_delivery=cb)
                else:
                    self._p.produce(topic, value, key, on_delivery=cb)
                return
            except BufferError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.options.max_block_ms / 1000.0
                if now >= deadline:
                    raise QueueFull(
                        f"producer queue full ({len(self._p)} records waiting for "
                        f"the broker)") from None
                self._p.poll(min(0.05, deadline - now))
            except ck.KafkaException as exc:
                raise _wrap(exc, f"send to {topic}") from exc

    def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]
                  ) -> None:
        # librdkafka's batch produce, in chunks that fit the queue's free room: a chunk
        # refused half-way by a full queue could queue a key's later record before
        # its earlier one.
        cap = self.options.queue_max_messages
        pos, deadline = 0, None
        while pos < len(records):
            room = cap - len(self._p)
            if room <= 0:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.options.max_block_ms / 1000.0
                if now >= deadline:
                    raise QueueFull(f"producer queue full ({len(self._p)} records waiting "
                                    "for the broker)", queued=pos)
                self._p.poll(min(0.05, deadline - now))
                continue
            deadline = None
            chunk = [{"key": k, "value": v} for k, v in records[pos:pos + room]]
            try:
                queued = self._p.produce_batch(topic, chunk, on_delivery=self._count_failure)
            except ck.KafkaException as exc:
                raise _wrap(exc, f"send to {topic}") from exc
            if queued < len(chunk):
                # Refused locally (too large, unknown topic...): counted as failed.
                for m in chunk:
                    err = m.get("_error")
                    if err is not None:
                        self.failed_total += 1
                        self.last_error = KafkaClientError(str(err), retriable=False)
            pos += len(chunk)

    def poll(self, timeout_s: float = 0.0) -> int:
        return int(self._p.poll(timeout_s))

    def flush(self, timeout_s: float = 30.0) -> int:
        return int(self._p.flush(timeout_s))

    def __len__(self) -> int:
        return len(self._p)

    def close(self, timeout_s: float = 30.0) -> None:
        left = self.flush(timeout_s)
        if left:
            log.error("closing the producer with %d undelivered records", left)


def _delivery(cb: DeliveryCallback, count: Any) -> Any:
    def on_delivery(err: ck.KafkaError | None, msg: ck.Message) -> None:
        if err is None:
            cb(None, _record(msg))
        else:
            count(err, msg)
            cb(KafkaClientError(err.str(), retriable=bool(err.retriable())), None)

    return on_delivery


# ---------------------------------------------------------------------- admin


def _admin(settings: KafkaSettings, timeout_s: float) -> AdminClient:
    conf = _base_config(settings, "liverec-admin")
    conf["socket.timeout.ms"] = max(10, int(timeout_s * 1000))
    return AdminClient(conf)


def admin_create_topics(settings: KafkaSettings, wanted: Mapping[str, int], *,
                        replication_factor: int, configs: Mapping[str, str],
                        timeout_s: float) -> list[str]:
    admin = _admin(settings, timeout_s)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except ck.KafkaException as exc:
        raise _wrap(exc, "list topics") from exc
    todo = {n: p for n, p in wanted.items() if n not in existing}
    if not todo:
        return []
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=p, replication_factor=replication_factor,
                  config=dict(configs)) for n, p in todo.items()],
        operation_timeout=timeout_s, request_timeout=timeout_s)
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
        except ck.KafkaException as exc:
            if exc.args[0].code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                raise _wrap(exc, f"create topic {name}") from exc
            log.debug("topic %s already exists", name)
    _wait_for_leaders(admin, todo, timeout_s)
    return sorted(todo)


def _wait_for_leaders(admin: AdminClient, topics: Mapping[str, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        md = admin.list_topics(timeout=timeout_s)
        ready = all(
            (t := md.topics.get(name)) is not None and t.error is None
            and len(t.partitions) >= n and all(p.leader >= 0 for p in t.partitions.values())
            for name, n in topics.items())
        if ready:
            return
        if time.monotonic() >= deadline:
            raise KafkaClientError(f"topics {sorted(topics)} have no leaders after "
                                   f"{timeout_s:.0f}s", retriable=True)
        time.sleep(0.1)


def admin_delete_topics(settings: KafkaSettings, names: Sequence[str], *,
                        timeout_s: float) -> None:
    admin = _admin(settings, timeout_s)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except ck.KafkaException as exc:
        raise _wrap(exc, "list topics") from exc
    names = [n for n in names if n in existing]
    if not names:
        return
    futures = admin.delete_topics(names, operation_timeout=timeout_s,
                                  request_timeout=timeout_s)
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
        except ck.KafkaException as exc:
            if exc.args[0].code() != ck.KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise _wrap(exc, f"delete topic {name}") from exc


def cluster_id(settings: KafkaSettings, timeout_s: float) -> str | None:
    """The cluster id from a metadata request; None when nothing answers in time."""
    admin = _admin(settings, timeout_s)
    try:
        md = admin.list_topics(timeout=timeout_s)
    except ck.KafkaException as exc:
        log.debug("no metadata from %s yet: %s", settings.bootstrap, exc)
        return None
    return str(md.cluster_id or "")
