"""A transactional producer: publish outputs and commit input offsets atomically.

Exactly-once "consume, process, produce" (Kafka's KIP-98 / KIP-447): records sent
between :meth:`TransactionalProducer.begin` and :meth:`TransactionalProducer.commit`
become visible to ``read_committed`` readers together with the consumer group's
input offsets, or not at all. A new incarnation with the same ``transactional_id``
fences the old one (its open transaction is aborted when :meth:`init` runs), and
the group's generation fences a member that lost its partitions in a rebalance.

Only the confluent backend (librdkafka) implements it; asking for it with
``client="kafka-python"`` raises :class:`~stream.kafka.base.KafkaClientError`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import confluent_kafka as ck

from stream.kafka.base import KafkaClientError, Partition, QueueFull
from stream.kafka.confluent import PARTITIONER, ConfluentConsumer, _base_config
from stream.settings import KafkaSettings

__all__ = ["TransactionFailed", "TransactionalProducer"]

log = logging.getLogger(__name__)


class TransactionFailed(KafkaClientError):
    """A transaction could not be committed; ``fatal``: the producer is unusable."""

    def __init__(self, message: str, *, fatal: bool) -> None:
        super().__init__(message, retriable=False)
        self.fatal = fatal


class TransactionalProducer:
    """Sends records inside transactions that also commit a consumer's offsets.

    Parameters
    ----------
    settings
        Bootstrap and security (``client`` must be ``confluent``).
    transactional_id
        Stable per logical producer (per trainer instance): a restart with the same
        id aborts what the previous incarnation left open.
    timeout_ms
        ``transaction.timeout.ms``: how long the broker waits before aborting a
        transaction whose producer went silent (a SIGKILLed trainer that does not
        come back), which is also how long readers may wait behind it.
    """

    #: how long retriable errors of a transaction step are retried
    RETRY_S = 30.0

    def __init__(self, settings: KafkaSettings, transactional_id: str, *,
                 client_id: str = "liverec-transactional", timeout_ms: int = 10_000,
                 linger_ms: int = 5, compression: str = "lz4") -> None:
        if settings.client != "confluent":
            raise KafkaClientError(
                f"exactly-once transactions need the confluent client (librdkafka); "
                f"client={settings.client!r} does not support them here")
        conf: dict[str, Any] = _base_config(settings, client_id)
        conf.update({
            "acks": "all",
            "enable.idempotence": True,
            "transactional.id": transactional_id,
            "partitioner": PARTITIONER,  # as every producer of liverec's (confluent.py)
            "transaction.timeout.ms": timeout_ms,
            "linger.ms": linger_ms,
            "compression.type": compression,
            "message.max.bytes": 16 * 1024 * 1024,
        })
        try:
            self._p = ck.Producer(conf)
        except ck.KafkaException as exc:
            raise KafkaClientError(f"creating the transactional producer: {exc}") from exc
        self.transactional_id = transactional_id
        self.in_transaction = False
        self.bytes_sent = 0
        #: a commit running on a thread (:meth:`commit_in_background`) and its error
        self._committing: threading.Thread | None = None
        self._commit_error: BaseException | None = None

    def init(self, timeout_s: float = 60.0) -> None:
        """Register with the coordinator, fencing (and aborting) older incarnations."""
        self._call("init_transactions", self._p.init_transactions, timeout_s)

    def begin(self) -> None:
        """Open a transaction (after the one committing in the background, if any:
        its error is raised here)."""
        self.wait_committed()
        self._call("begin_transaction", self._p.begin_transaction)
        self.in_transaction = True

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             partition: int | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one record of the open transaction (waits for queue room)."""
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._p.produce(topic, value, key, **kwargs)
                self.bytes_sent += len(value)
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    raise QueueFull("transactional producer queue full") from None
                self._p.poll(0.05)

    def commit(self, offsets: Mapping[Partition, int], consumer: ConfluentConsumer,
               timeout_s: float = 60.0) -> None:
        """Add ``offsets`` (next offsets) for ``consumer``'s group, then commit."""
        tps = [ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        self._commit(tps, consumer.group_metadata() if tps else None, timeout_s)

    def _commit(self, tps: list[ck.TopicPartition], group_metadata: Any,
                timeout_s: float) -> None:
        if tps:
            self._call("send_offsets_to_transaction", self._p.send_offsets_to_transaction,
                       tps, group_metadata, timeout_s)
        self._call("commit_transaction", self._p.commit_transaction, timeout_s)
        self.in_transaction = False

    def commit_in_background(self, offsets: Mapping[Partition, int],
                             consumer: ConfluentConsumer, timeout_s: float = 60.0) -> None:
        """:meth:`commit` on a thread, so the caller can go on (poll, learn) while the
        broker commits; :meth:`wait_committed` (also run by :meth:`begin`,
        :meth:`abort` and :meth:`close`) waits for it and raises what it raised.

        The group's metadata is taken now, on the caller's thread: the offsets commit
        under the generation that owned them when the records were read.
        """
        self.wait_committed()
        tps = [ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        meta = consumer.group_metadata() if tps else None

        def run() -> None:
            try:
                self._commit(tps, meta, timeout_s)
            except BaseException as exc:  # handed to the caller by wait_committed
                self._commit_error = exc

        self._committing = threading.Thread(target=run, name="liverec-txn-commit",
                                            daemon=True)
        self._committing.start()

    @property
    def committing(self) -> bool:
        """Whether a background commit has not been waited for yet."""
        return self._committing is not None

    def wait_committed(self) -> None:
        """Wait for the background commit, if any; raise its error (the transaction
        is still open then: :meth:`abort` it)."""
        thread, self._committing = self._committing, None
        if thread is None:
            return
        thread.join()
        err, self._commit_error = self._commit_error, None
        if err is not None:
            raise err

    def abort(self, timeout_s: float = 30.0) -> None:
        """Abort the open transaction (nothing of it becomes visible)."""
        try:
            self.wait_committed()
        except Exception as exc:  # the commit failed: the transaction is aborted below
            log.warning("the background commit failed before the abort: %s", exc)
        if not self.in_transaction:
            return
        try:
            self._p.abort_transaction(timeout_s)
        except ck.KafkaException as exc:
            log.error("aborting the transaction failed: %s", exc)
        self.in_transaction = False

    def close(self, timeout_s: float = 10.0) -> None:
        """Abort what is open and flush; never raises (a fenced or failed producer has
        nothing left to deliver, and its error was raised where it happened)."""
        self.abort()
        try:
            self._p.flush(timeout_s)
        except ck.KafkaException as exc:
            log.warning("closing the transactional producer: %s", exc)

    def _call(self, what: str, fn: Any, *args: Any) -> None:
        """``fn(*args)``, retrying retriable errors (a coordinator still loading after a
        broker start, say) for up to ``RETRY_S`` seconds."""
        deadline = time.monotonic() + self.RETRY_S
        attempt = 0
        while True:
            try:
                fn(*args)
                return
            except ck.KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if (isinstance(err, ck.KafkaError) and err.retriable()
                        and time.monotonic() < deadline):
                    attempt += 1
                    log.warning("%s: %s (retrying)", what, err.str())
                    time.sleep(min(2.0, 0.2 * attempt))
                    continue
                fatal = bool(isinstance(err, ck.KafkaError) and err.fatal())
                detail = err.str() if isinstance(err, ck.KafkaError) else str(exc)
                raise TransactionFailed(f"{what}: {detail}", fatal=fatal) from exc
