"""The client layer (stream.kafka): both backends behave the same on the real broker."""

from __future__ import annotations

import time
import uuid

import pytest

from stream.kafka import (
    Consumer,
    KafkaClientError,
    Producer,
    QueueFull,
    Record,
    cluster_id,
    cluster_ready,
    create_topics,
    delete_topics,
    deliver,
    end_offsets,
    make_consumer,
    make_producer,
    send_all,
)
from stream.settings import KafkaSettings


def _poll_until(consumer: Consumer, n: int, timeout_s: float = 30.0) -> list[Record]:
    out: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out.extend(consumer.poll(n - len(out), 0.5))
    return out


@pytest.mark.kafka
def test_records_round_trip_with_keys_headers_and_offsets(kafka_settings, new_topic):
    topic = new_topic(partitions=2)
    producer = make_producer(kafka_settings)
    assert isinstance(producer, Producer)
    try:
        sent = deliver(producer, topic, b"v0", key=b"k0", headers=[("h", b"1")])
        assert (sent.topic, sent.offset, sent.key, sent.value) == (topic, 0, b"k0", b"v0")
        assert send_all(producer, topic, [(b"k0", f"v{i}".encode()) for i in range(1, 50)]) == 49
    finally:
        producer.close()
    part = (topic, sent.partition)
    assert end_offsets(kafka_settings, topic)[sent.partition] == 50  # same key, same partition

    consumer = make_consumer(kafka_settings, client_id="t-reader")
    assert isinstance(consumer, Consumer)
    try:
        assert consumer.partitions_for(topic) == {0, 1}
        assert consumer.partitions_for(f"missing-{uuid.uuid4().hex}") == set()
        consumer.assign([part])
        assert consumer.assignment() == {part}
        got = _poll_until(consumer, 50)
        assert [r.value for r in got] == [f"v{i}".encode() for i in range(50)]
        assert [r.offset for r in got] == list(range(50))
        assert got[0].headers == (("h", b"1"),) and got[1].headers == ()
        assert got[0].key == b"k0" and got[0].timestamp_ms is not None
        assert consumer.position(part) == 50
        assert consumer.end_offsets([part]) == {part: 50}
        assert consumer.beginning_offsets([part]) == {part: 0}
        consumer.seek(part, 45)
        assert [r.offset for r in _poll_until(consumer, 5)] == [45, 46, 47, 48, 49]
        consumer.seek(part, 10)
        batch = consumer.poll_batch(5, 10.0)  # the same records as columns
        while len(batch) == 0:
            batch = consumer.poll_batch(5, 1.0)
        assert batch.offsets == list(range(10, 10 + len(batch)))
        assert batch.values == [f"v{i}".encode() for i in batch.offsets]
        assert batch.next_offsets() == {part: 10 + len(batch)}
    finally:
        consumer.close()


@pytest.mark.kafka
def test_commit_and_committed_are_next_offsets(kafka_settings, new_topic):
    topic = new_topic(partitions=1)
    producer = make_producer(kafka_settings)
    send_all(producer, topic, [(None, b"x")] * 10)
    producer.close()
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = make_consumer(kafka_settings, group_id=group)
    part = (topic, 0)
    try:
        assigned: list[set[tuple[str, int]]] = []
        consumer.subscribe([topic], on_assign=assigned.append)
        records = _poll_until(consumer, 10)
        assert len(records) == 10 and assigned and part in assigned[-1]
        assert consumer.committed([part]) == {part: None}
        consumer.commit({part: records[6].offset + 1})
        assert consumer.committed([part]) == {part: 7}
    finally:
        consumer.close()
    again = make_consumer(kafka_settings, group_id=group)
    try:
        again.subscribe([topic])
        assert [r.offset for r in _poll_until(again, 3)] == [7, 8, 9]
    finally:
        again.close()


@pytest.mark.kafka
def test_a_lone_member_is_assigned_in_one_rebalance(kafka_settings, new_topic):
    """A member subscribing alone to an existing topic gets its partitions once and
    keeps them: kafka-python 3.0 joined before its first metadata update, saw the
    partitions arrive, and rebalanced again at once (under SASL_SSL that second join
    could hang until the trainer's watchdog rebuilt the consumer)."""
    topic = new_topic(partitions=2)
    consumer = make_consumer(kafka_settings, group_id=f"g-{uuid.uuid4().hex[:8]}")
    calls: list[tuple[str, set[tuple[str, int]]]] = []
    try:
        consumer.subscribe([topic], on_assign=lambda p: calls.append(("assign", p)),
                           on_revoke=lambda p: calls.append(("revoke", p)))
        deadline = time.monotonic() + 30
        while not calls and time.monotonic() < deadline:
            consumer.poll(10, 0.2)
        settle = time.monotonic() + 3  # a second rebalance came within a poll or two
        while time.monotonic() < settle:
            consumer.poll(10, 0.2)
        before_close = [c for c in calls if c[1]]
    finally:
        consumer.close()
    assert before_close == [("assign", {(topic, 0), (topic, 1)})]


@pytest.mark.kafka
def test_send_many_keeps_each_keys_order_and_partition(kafka_settings, new_topic):
    one, many = new_topic(partitions=4), new_topic(partitions=4)
    records = [(f"k{i % 37}".encode(), f"v{i}".encode()) for i in range(3_000)]
    # A queue smaller than the records: send_many waits for room chunk by chunk.
    producer = make_producer(kafka_settings, queue_max_messages=500, max_block_ms=30_000)
    try:
        for key, value in records[:200]:
            producer.send(one, value, key)
        producer.send_many(many, records)
        assert producer.flush(60) == 0 and producer.failed_total == 0
    finally:
        producer.close()
    assert sum(end_offsets(kafka_settings, many).values()) == len(records)

    def by_key(topic: str, n: int) -> dict[bytes | None, tuple[int, list[bytes | None]]]:
        consumer = make_consumer(kafka_settings, client_id="t-many")
        try:
            consumer.assign([(topic, p) for p in range(4)])
            got = _poll_until(consumer, n)
        finally:
            consumer.close()
        assert len(got) == n
        seen: dict[bytes | None, tuple[int, list[bytes | None]]] = {}
        for r in got:
            part, values = seen.setdefault(r.key, (r.partition, []))
            assert part == r.partition  # one key, one partition
            values.append(r.value)
        return seen

    batched, single = by_key(many, len(records)), by_key(one, 200)
    for key, (part, values) in batched.items():
        assert values == [v for k, v in records if k == key]  # the key's order
        if key in single:
            assert single[key][0] == part  # the partition send() picks


@pytest.mark.kafka
def test_full_local_queue_raises_queue_full_without_waiting_long(kafka_settings, new_topic):
    topic = new_topic(partitions=1)
    # A long linger keeps records in the local queue: the 11th does not fit.
    producer = make_producer(kafka_settings, queue_max_messages=10, linger_ms=30_000,
                             max_block_ms=200)
    try:
        for i in range(10):
            producer.send(topic, b"x", key=str(i).encode())
        t0 = time.monotonic()
        with pytest.raises(QueueFull, match="queue full"):
            producer.send(topic, b"y")
        assert time.monotonic() - t0 < 10
        assert producer.flush(30) == 0  # the ten queued ones are delivered
    finally:
        producer.close(5)
    assert end_offsets(kafka_settings, topic) == {0: 10}


@pytest.mark.kafka
def test_a_full_queue_waits_for_room_up_to_max_block_ms(kafka_settings, new_topic):
    # The ten queued records go out after the 200 ms linger: the 11th send waits for
    # that room instead of failing at once (kafka-python refused it immediately).
    topic = new_topic(partitions=1)
    producer = make_producer(kafka_settings, queue_max_messages=10, linger_ms=200,
                             max_block_ms=30_000)
    try:
        for i in range(11):
            producer.send(topic, b"x", key=str(i).encode())
        assert producer.flush(30) == 0 and producer.failed_total == 0
    finally:
        producer.close(5)
    assert end_offsets(kafka_settings, topic) == {0: 11}


@pytest.mark.kafka
def test_a_refused_record_reaches_the_delivery_callback(kafka_settings, kafka_bootstrap):
    topic = f"small-{uuid.uuid4().hex[:12]}"
    create_topics(kafka_settings, {topic: 1}, configs={"max.message.bytes": "1000"})
    producer = make_producer(kafka_settings, delivery_timeout_ms=10_000)
    outcomes: list[KafkaClientError | None] = []
    try:
        producer.send(topic, b"x" * 5_000, on_delivery=lambda err, rec: outcomes.append(err))
        assert producer.flush(30) == 0
        producer.poll(0)
        assert len(outcomes) == 1 and isinstance(outcomes[0], KafkaClientError)
        assert "too large" in str(outcomes[0]).lower().replace("toolarge", "too large")
        with pytest.raises(KafkaClientError):
            deliver(producer, topic, b"x" * 5_000, timeout_s=20)
    finally:
        producer.close(5)
        delete_topics(kafka_bootstrap, [topic])


@pytest.mark.kafka
def test_admin_and_readiness(kafka_settings):
    assert cluster_ready(kafka_settings)
    cid = cluster_id(kafka_settings)
    assert cid and cid == cluster_id(kafka_settings.bootstrap)  # a str works too
    name = f"adm-{uuid.uuid4().hex[:12]}"
    try:
        assert create_topics(kafka_settings, {name: 3}) == [name]
        assert create_topics(kafka_settings, [name]) == []  # exists: left alone
        assert end_offsets(kafka_settings, name) == {0: 0, 1: 0, 2: 0}
    finally:
        delete_topics(kafka_settings, [name, "never-existed-" + name])


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_nothing_listening_is_not_ready(client):
    settings = KafkaSettings(bootstrap="127.0.0.1:1", client=client)
    assert not cluster_ready(settings, timeout_ms=1_000)
    assert cluster_id(settings, timeout_ms=1_000) is None


def test_security_settings_map_to_both_clients(tmp_path):
    from stream.kafka.confluent import security_config as rd
    from stream.kafka.kafkapython import security_config as kp

    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    s = KafkaSettings(bootstrap="b:1", security_protocol="SASL_SSL",
                      sasl_mechanism="SCRAM-SHA-256", sasl_username="trainer",
                      sasl_password=f"@{secret}", ssl_cafile=tmp_path / "ca.pem")
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())
    assert rd(s) == {"security.protocol": "sasl_ssl", "sasl.mechanisms": "SCRAM-SHA-256",
                     "sasl.username": "trainer", "sasl.password": "s3cret",
                     "ssl.ca.location": str(tmp_path / "ca.pem")}
    assert kp(s) == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                     "sasl_plain_username": "trainer", "sasl_plain_password": "s3cret",
                     "ssl_cafile": str(tmp_path / "ca.pem"), "ssl_check_hostname": True}
    assert rd(KafkaSettings()) == {"security.protocol": "plaintext"}


@pytest.mark.kafka
def test_both_clients_send_a_key_to_the_same_partition(kafka_bootstrap, new_topic):
    # One user's events stay in one partition whichever client sent them (replay with
    # one, the server's POST with the other; a compacted topic's update replaces the
    # record it should). librdkafka's own default hashes keys differently (CRC32).
    topic = new_topic(partitions=4)
    keys = [f"user-{i}".encode() for i in range(40)]
    where: dict[str, dict[bytes, int]] = {}
    for client in ("confluent", "kafka-python"):
        producer = make_producer(KafkaSettings(bootstrap=kafka_bootstrap, client=client))
        try:
            where[client] = {k: deliver(producer, topic, b"v", key=k).partition for k in keys}
        finally:
            producer.close()
    assert len(set(where["confluent"].values())) == 4  # the keys do spread
    assert where["confluent"] == where["kafka-python"]
