"""The ``item_features`` topic: item content, compacted, keyed by item id.

One record per item: key = the item id (UTF-8), value = JSON ``{"text": "..."}``
(free text, tokenised by :func:`online_models.content.tokenize`) or ``{"tokens":
[...]}`` (ready-made tokens such as ``genre:comedy``). A newer record for the same key
replaces the item's content; a tombstone (no value) clears it. The topic is created
with ``cleanup.policy=compact``, so it keeps the latest content of every item for
ever and a reader that starts from the beginning sees the whole catalogue.

Writers: :func:`publish_item_features` (``liverec features publish``). Readers:
:class:`ItemFeaturesTail`, a background thread that reads every partition from the
beginning (no consumer group, nothing committed) and buffers updates until the
owner applies them (:meth:`ItemFeaturesTail.drain`) in its own thread, so item
features never change under a model while it learns or scores.

>>> key, value = encode_item_features("m1", "Toy Story (1995)")
>>> decode_item_features(key, value)
('m1', 'Toy Story (1995)')
>>> decode_item_features(*encode_item_features("m2", ["genre:comedy"]))
('m2', ['genre:comedy'])
>>> decode_item_features(b"m3", None), decode_item_features(b"m4", b"not json")
(('m3', []), None)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence

import orjson

from stream.kafka import (
    Consumer,
    ConsumerOptions,
    Partition,
    Record,
    as_settings,
    create_topics,
    make_consumer,
    make_producer,
    run_with_backoff,
    send_all,
)
from stream.settings import KafkaSettings

__all__ = [
    "ItemFeaturesTail",
    "decode_item_features",
    "encode_item_features",
    "item_features_topic",
    "publish_item_features",
]

log = logging.getLogger(__name__)

#: what a record carries: free text or ready-made tokens
Content = str | list[str]


def item_features_topic(click_topic: str) -> str:
    """The item-features topic that goes with a click topic.

    >>> item_features_topic("clicks")
    'clicks.item_features'
    """
    return f"{click_topic}.item_features"


def encode_item_features(item: str, content: str | Sequence[str]) -> tuple[bytes, bytes]:
    """``(key, value)`` of one item's content record."""
    body = {"text": content} if isinstance(content, str) else {"tokens": list(content)}
    return item.encode("utf-8"), orjson.dumps(body)


def decode_item_features(key: bytes | None, value: bytes | None) -> tuple[str, Content] | None:
    """``(item, text or tokens)`` of a record; a tombstone gives empty tokens.

    None for a record that is not one (no key, bad JSON, neither ``text`` nor
    ``tokens``): it is skipped, as a reader must not stop on one bad record.
    """
    if not key:
        return None
    try:
        item = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if value is None:
        return item, []
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    text, tokens = body.get("text"), body.get("tokens")
    if isinstance(text, str):
        return item, text
    if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        return item, tokens
    return None


def publish_item_features(
    settings: KafkaSettings | str,
    texts: Mapping[str, str | Sequence[str]],
    topic: str,
    *,
    partitions: int = 1,
    timeout_s: float = 120.0,
) -> int:
    """Write every item's content to ``topic`` (created compacted if missing).

    Returns the number of records acknowledged. Raises
    :class:`~stream.kafka.KafkaClientError` when some were not.
    """
    s = as_settings(settings)
    create_topics(s, {topic: partitions}, configs={"cleanup.policy": "compact"})
    producer = make_producer(s, client_id="liverec-features")
    try:
        return send_all(
            producer, topic,
            (encode_item_features(item, content) for item, content in texts.items()),
            timeout_s=timeout_s,
        )
    finally:
        producer.close()


class ItemFeaturesTail:
    """Background reader of an item-features topic, from the beginning of every partition.

    Updates are buffered (the latest content per item wins) until :meth:`drain`.
    Errors are logged and retried with backoff; the thread never dies of them, and
    it waits for a topic that does not exist yet.

    Attributes
    ----------
    caught_up
        Set once every partition has been read to the end offset it had when the
        reader was assigned (the whole catalogue published before the start).
    records
        Records read so far (bad ones included).
    """

    def __init__(self, settings: KafkaSettings | str, topic: str, *,
                 client_id: str = "liverec-features-tail") -> None:
        self.settings = as_settings(settings)
        self.topic = topic
        self.client_id = client_id
        self.caught_up = threading.Event()
        self.records = 0
        self.skipped = 0
        self._pending: dict[str, Content] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liverec-features-tail",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def drain(self) -> dict[str, Content]:
        """Updates read since the last call (item -> content), and forget them."""
        with self._lock:
            out, self._pending = self._pending, {}
        return out

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _run(self) -> None:
        run_with_backoff(self._stop, self._tail, lambda exc, wait: log.warning(
            "item-features reader error (%s); retrying in %.1fs", exc, wait))

    def _tail(self) -> None:
        consumer = make_consumer(self.settings, ConsumerOptions(
            client_id=self.client_id, fetch_max_wait_ms=100))
        try:
            parts: set[int] = set()
            while not parts and not self._stop.is_set():
                parts = consumer.partitions_for(self.topic)
                if not parts:
                    self._stop.wait(1.0)
            if self._stop.is_set():
                return
            tps = [(self.topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            begin = consumer.beginning_offsets(tps)
            end = dict(consumer.end_offsets(tps))
            for tp in tps:
                consumer.seek(tp, begin[tp])
            todo = [tp for tp in tps if end[tp] > begin[tp]]
            while not self._stop.is_set():
                self._apply(consumer.poll(2000, 0.2))
                if not self.caught_up.is_set() and self._reached(consumer, todo, end):
                    self.caught_up.set()
        finally:
            consumer.close()

    @staticmethod
    def _reached(consumer: Consumer, tps: Iterable[Partition], end: Mapping[Partition, int]
                 ) -> bool:
        for tp in tps:
            pos = consumer.position(tp)
            if pos is None or pos < end[tp]:
                return False
        return True

    def _apply(self, records: Iterable[Record]) -> None:
        updates: dict[str, Content] = {}
        for rec in records:
            self.records += 1
            got = decode_item_features(rec.key, rec.value)
            if got is None:
                self.skipped += 1
                continue
            updates[got[0]] = got[1]
        if updates:
            with self._lock:
                self._pending.update(updates)
