"""The reader process of the trainer's ``--source process`` against a real broker:
what it reads equals the in-process decode; assignments with generations, rewinds
and dropped partitions; it stops on command and when its parent's pipe closes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stream.child_reader import ChildReader
from stream.events import DEFAULT_LIMITS, EVENT_WEIGHTS, decode
from stream.kafka import make_consumer, make_producer, send_all
from stream.kafka.base import ConsumerOptions
from stream.reader_child import Frame
from stream.replay import produce_events
from stream.settings import KafkaSettings
from tests.trainer.helpers import BAD_MESSAGES, synthetic_events

pytestmark = pytest.mark.kafka


def _frames(reader: ChildReader, records: int, gen: int, timeout_s: float = 30.0
            ) -> list[Frame]:
    """Frames of generation ``gen`` until they hold ``records`` records."""
    got: list[Frame] = []
    waited = 0.0
    while sum(f.records for f in got) < records:
        frame = reader.read(0.5)
        if frame is None:
            waited += 0.5
            assert waited < timeout_s, f"{sum(f.records for f in got)} of {records} records"
        elif frame.gen == gen:
            got.append(frame)
    return got


def _reader(bootstrap: str, topic: str) -> ChildReader:
    return ChildReader(KafkaSettings(bootstrap=bootstrap, topic=topic), f"g-{topic}",
                       batch_size=64, max_wait_s=0.2, limits=DEFAULT_LIMITS,
                       weights=EVENT_WEIGHTS)


def test_reads_assigned_partitions_as_the_in_process_decode_would(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=2)
    events = synthetic_events(500, seed=3)
    produce_events(kafka_bootstrap, topic, events)
    producer = make_producer(kafka_bootstrap)
    try:
        send_all(producer, topic, [(b"bad", raw) for raw, _ in BAD_MESSAGES])
    finally:
        producer.close()
    reader = _reader(kafka_bootstrap, topic)
    try:
        reader.assign(1, {0: 0, 1: 0})
        frames = _frames(reader, len(events) + len(BAD_MESSAGES), gen=1)
        by_id = {e.event_id: e for e in events}
        seen = set()
        for f in frames:
            cols = f.columns
            assert len(cols) + len(f.rejects) == f.records
            for k, eid in enumerate(cols.event_ids):
                ev = by_id[eid]
                assert (cols.users[k], cols.items[k], cols.sessions[k]) == (
                    ev.user_id, ev.item_id, ev.session_id)
                assert cols.timestamps[k] == pytest.approx(ev.ts)
                assert cols.weights[k] == pytest.approx(EVENT_WEIGHTS[ev.event_type])
                seen.add(eid)
        assert seen == set(by_id)
        rejects = [r for f in frames for *_, r in f.rejects]
        # The same verdicts, and the raw bytes for the dead-letter topic.
        assert sorted((r.raw, r.reason) for r in rejects) == sorted(
            (raw, decode(raw).reason) for raw, _ in BAD_MESSAGES)  # type: ignore[union-attr]
        ends = {p: max(f.next[p] for f in frames if p in f.next) for p in (0, 1)}
        assert sum(ends.values()) == len(events) + len(BAD_MESSAGES)

        # Rewind partition 0 to its start; partition 1 goes on from its end.
        reader.assign(2, {0: 0, 1: ends[1]})
        again = _frames(reader, ends[0], gen=2)
        assert again[0].first == {0: 0}
        assert all(set(f.next) == {0} for f in again)

        # Drop partition 0: new records there are not read, those on 1 are.
        reader.assign(3, {1: ends[1]})
        more = synthetic_events(200, seed=4)
        produce_events(kafka_bootstrap, topic, more)
        later: list[Frame] = []
        while (frame := reader.read(2.0)) is not None:
            if frame.gen == 3:
                later.append(frame)
        assert all(set(f.next) == {1} and f.first[1] >= ends[1] for f in later)
        # Keyed by user, some of the 200 went to each partition.
        assert 0 < sum(f.records for f in later) < len(more)
    finally:
        reader.stop()
    assert reader.proc.returncode == 0


def test_stops_when_the_parents_pipe_closes(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=1)
    reader = _reader(kafka_bootstrap, topic)
    reader.assign(1, {0: 0})
    reader._in.close()  # what a SIGKILLed parent leaves behind
    assert reader.proc.wait(10) == 0


def test_starts_at_the_groups_commit(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """An offset of null: the reader looks up the group's commit (the fallback when
    the parent could not)."""
    topic = new_topic(partitions=1)
    produce_events(kafka_bootstrap, topic, synthetic_events(300, seed=5))
    group = make_consumer(KafkaSettings(bootstrap=kafka_bootstrap, topic=topic),
                          ConsumerOptions(group_id=f"g-{topic}"))
    try:
        group.commit({(topic, 0): 120})
    finally:
        group.close()
    reader = _reader(kafka_bootstrap, topic)
    try:
        reader.assign(1, {0: None})
        assert _frames(reader, 1, gen=1)[0].first == {0: 120}
    finally:
        reader.stop()
