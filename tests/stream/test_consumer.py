"""MiniBatchConsumer against a real broker, with both Kafka clients: batching, DLQ,
groups, rebalances, crash recovery."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from stream.consumer import ConsumedBatch, MiniBatchConsumer
from stream.events import ClickEvent, Rejected, decode, encode
from stream.kafka import Record, end_offsets, make_consumer, make_producer, send_all
from stream.replay import produce_events
from stream.settings import KafkaSettings

pytestmark = pytest.mark.kafka

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def events(n: int, users: int = 37, prefix: str = "e") -> list[ClickEvent]:
    return [
        ClickEvent(f"{prefix}{i}", f"u{i % users}", f"i{i % 101}", "click",
                   T0 + timedelta(seconds=i))
        for i in range(n)
    ]


def at(settings: KafkaSettings, topic: str) -> KafkaSettings:
    return settings.model_copy(update={"topic": topic})


def read_topic(settings: KafkaSettings, topic: str, n: int, timeout_s: float = 30.0
               ) -> list[Record]:
    """The first ``n`` records of every partition of ``topic`` (no group)."""
    consumer = make_consumer(settings, client_id="test-reader")
    try:
        consumer.assign((topic, p) for p in sorted(consumer.partitions_for(topic)))
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            out.extend(consumer.poll(n - len(out), 0.5))
        return out
    finally:
        consumer.close()


def drain(consumer: MiniBatchConsumer, want: int, max_polls: int = 300) -> list[ConsumedBatch]:
    out: list[ConsumedBatch] = []
    got = 0
    for _ in range(max_polls):
        b = consumer.next_batch(timeout_ms=500)
        if not b.empty:
            out.append(b)
            got += len(b)
        if got >= want:
            break
    return out


def test_batches_respect_size_and_commit_only_on_request(kafka_settings, new_topic):
    topic = new_topic(partitions=2)
    produce_events(kafka_settings, topic, events(50))
    with MiniBatchConsumer(at(kafka_settings, topic), "g-size", batch_size=16) as c:
        batches = drain(c, 50)
        assert all(len(b) <= 16 for b in batches)
        assert sorted(e.event_id for b in batches for e in b.events) == sorted(
            f"e{i}" for i in range(50))
        assert all(v is None for v in c.committed().values())  # nothing committed implicitly
        last: dict[tuple[str, int], int] = {}
        for b in batches:
            last.update(b.offsets)
        c.commit(last)
        assert c.committed() == last
        assert sum(last.values()) == 50
        assert c.lag() == dict.fromkeys(last, 0)


def test_per_user_order_is_kept(kafka_settings, new_topic):
    topic = new_topic(partitions=4)
    produce_events(kafka_settings, topic, events(400, users=5))
    with MiniBatchConsumer(at(kafka_settings, topic), "g-order", batch_size=64) as c:
        got = [e for b in drain(c, 400) for e in b.events]
    assert len(got) == 400
    for u in range(5):
        ts = [e.timestamp for e in got if e.user_id == f"u{u}"]
        assert ts == sorted(ts)


def test_rejects_go_to_dlq_with_their_source(kafka_settings, new_topic):
    topic = new_topic(partitions=1)
    producer = make_producer(kafka_settings)
    good = events(3)
    raws = [encode(good[0]), b"not json", encode(good[1]), b"\xff", encode(good[2])]
    send_all(producer, topic, [(b"k", raw) for raw in raws])
    producer.close()
    with MiniBatchConsumer(at(kafka_settings, topic), "g-dlq", batch_size=100) as c:
        batch = drain(c, 5)
        assert [e.event_id for b in batch for e in b.events] == ["e0", "e1", "e2"]
        rejected = [r for b in batch for r in b.rejected]
        assert [(r.reason, off) for r, _, _, off in rejected] == [("not_json", 1),
                                                                  ("not_utf8", 3)]
        assert c.rejected_by_reason == {"not_json": 1, "not_utf8": 1}
    msgs = read_topic(kafka_settings, f"{topic}.dlq", 2)
    assert [m.value for m in msgs] == [b"not json", b"\xff"]
    h = dict(msgs[0].headers)
    assert h["reason"] == b"not_json"
    assert (h["source_topic"], h["source_offset"]) == (topic.encode(), b"1")
    assert h["truncated"] == b"0" and h["payload_bytes"] == b"8"


def test_dedupe_window_drops_replayed_ids(kafka_settings, new_topic):
    topic = new_topic(partitions=1)
    evs = events(20)
    produce_events(kafka_settings, topic, evs + evs[:10])
    with MiniBatchConsumer(at(kafka_settings, topic), "g-dup", dedupe_window=1000) as c:
        batches = drain(c, 30)
    assert sum(len(b.events) for b in batches) == 20
    assert sum(b.duplicates for b in batches) == 10


def test_two_members_share_four_partitions_exactly_once(kafka_settings, new_topic):
    topic = new_topic(partitions=4)
    n = 2_000
    produce_events(kafka_settings, topic, events(n, users=97))
    seen: list[list[str]] = [[], []]
    assigned: list[set[tuple[str, int]]] = [set(), set()]
    stop = threading.Event()
    done = threading.Event()
    lock = threading.Lock()

    def member(k: int) -> None:
        def handle(batch: ConsumedBatch) -> None:
            with lock:
                seen[k].extend(e.event_id for e in batch.events)
                if len(seen[0]) + len(seen[1]) >= n:
                    done.set()

        c = MiniBatchConsumer(at(kafka_settings, topic), "g-pair", batch_size=50,
                              on_assign=assigned[k].update, session_timeout_ms=10_000,
                              heartbeat_interval_ms=1_000)
        c.run(handle, stop=stop)

    threads = [threading.Thread(target=member, args=(k,), daemon=True) for k in (0, 1)]
    for t in threads:
        t.start()
    assert done.wait(120), f"only {len(seen[0]) + len(seen[1])} of {n} events arrived"
    stop.set()
    for t in threads:
        t.join(60)
    everything = seen[0] + seen[1]
    assert len(everything) == n and len(set(everything)) == n  # none lost, none twice
    assert assigned[0] | assigned[1] == {(topic, p) for p in range(4)}


def test_restart_after_crash_resumes_from_last_commit(kafka_settings, new_topic):
    topic = new_topic(partitions=2)
    produce_events(kafka_settings, topic, events(300))
    c1 = MiniBatchConsumer(at(kafka_settings, topic), "g-crash", batch_size=40)
    handled: list[str] = []
    committed: dict[tuple[str, int], int] = {}
    # Handle and commit three batches, then read one more that is never committed,
    # and "crash" (close without committing it).
    for _ in range(3):
        b = drain(c1, 1, max_polls=20)[0]
        handled.extend(e.event_id for e in b.events)
        c1.commit(b.offsets)
        committed.update(b.offsets)
    lost_in_crash = drain(c1, 1, max_polls=20)[0]
    assert lost_in_crash.events
    c1.close()

    with MiniBatchConsumer(at(kafka_settings, topic), "g-crash", batch_size=100) as c2:
        rest = [e.event_id for b in drain(c2, 300 - len(handled)) for e in b.events]
    assert len(handled) + len(rest) == 300
    assert set(handled).isdisjoint(rest)
    assert {e.event_id for e in lost_in_crash.events} <= set(rest)


def test_failing_handler_rereads_the_batch(kafka_settings, new_topic):
    topic = new_topic(partitions=1)
    produce_events(kafka_settings, topic, events(30))
    calls = {"n": 0}
    got: list[str] = []
    stop = threading.Event()

    def handle(batch: ConsumedBatch) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("transient failure")
        got.extend(e.event_id for e in batch.events)
        if len(got) >= 30:
            stop.set()

    c = MiniBatchConsumer(at(kafka_settings, topic), "g-fail", batch_size=100)
    c.run(handle, stop=stop)
    assert c.handler_errors_total == 1
    assert sorted(got) == sorted(f"e{i}" for i in range(30))
    assert end_offsets(kafka_settings, topic) == {0: 30}


def test_decode_of_produced_bytes_matches(kafka_settings, new_topic):
    topic = new_topic()
    ev = events(1)[0]
    produce_events(kafka_settings, topic, [ev])
    with MiniBatchConsumer(at(kafka_settings, topic), "g-one") as c:
        (b,) = drain(c, 1)
    assert b.events == [ev]
    empty = decode(b"")
    assert isinstance(empty, Rejected) and empty.reason == "empty"


def test_commit_inside_on_revoke_lands_before_the_partitions_move(kafka_settings, new_topic):
    """Issue 10 item 5: a second member joins; the revoking member commits inside
    ``on_revoke`` and that commit lands, so the new owner starts exactly where it
    stopped: nothing is read twice, nothing skipped."""
    topic = new_topic(partitions=4)
    n = 800
    produce_events(kafka_settings, topic, events(n, users=97))
    settings = at(kafka_settings, topic)
    handled: dict[tuple[str, int], int] = {}
    learned_a: list[str] = []
    revokes: list[set[tuple[str, int]]] = []

    def on_revoke(parts: set[tuple[str, int]]) -> None:
        revokes.append(parts)
        a.commit({p: off for p, off in handled.items() if p in parts})

    a = MiniBatchConsumer(settings, "g-revoke", batch_size=50, on_revoke=on_revoke)
    b: MiniBatchConsumer | None = None
    stop = threading.Event()
    thread: threading.Thread | None = None
    try:
        # A handles records of every partition (so each commit below has something in it)
        deadline = time.monotonic() + 60
        while (len(handled) < 4 or len(learned_a) < n // 4) and time.monotonic() < deadline:
            batch = a.next_batch(timeout_ms=500)
            learned_a.extend(e.event_id for e in batch.events)
            handled.update(batch.offsets)
        assert len(handled) == 4
        # (kafka-python often rebalances once right after its first join: count from here)
        revokes_before = len(revokes)

        b_parts: set[tuple[str, int]] = set()
        b = MiniBatchConsumer(settings, "g-revoke", batch_size=50, on_assign=b_parts.update)
        learned_b: list[str] = []

        def run_b() -> None:
            assert b is not None
            while not stop.is_set():
                learned_b.extend(e.event_id for e in b.next_batch(timeout_ms=200).events)

        thread = threading.Thread(target=run_b, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not (len(revokes) > revokes_before and b_parts) and time.monotonic() < deadline:
            batch = a.next_batch(timeout_ms=200)  # A keeps working until it is revoked
            learned_a.extend(e.event_id for e in batch.events)
            handled.update(batch.offsets)
        assert len(revokes) > revokes_before and b_parts, "no rebalance within 60 s"
        moved = sorted(b_parts)
        check = make_consumer(kafka_settings, group_id="g-revoke", client_id="check")
        try:
            landed = check.committed(moved)
        finally:
            check.close()
        assert landed == {p: handled.get(p) for p in moved}
        assert any(v is not None for v in landed.values())
        # B resumes the moved partitions from A's commit: no event learned twice.
        deadline = time.monotonic() + 30
        while len(set(learned_a) | set(learned_b)) < n and time.monotonic() < deadline:
            batch = a.next_batch(timeout_ms=200)
            learned_a.extend(e.event_id for e in batch.events)
        stop.set()
        thread.join(30)
        assert set(learned_a).isdisjoint(learned_b)
        assert len(learned_a) + len(learned_b) == n
    finally:
        stop.set()
        if thread is not None:
            thread.join(30)
        a.close()
        if b is not None:
            b.close()
