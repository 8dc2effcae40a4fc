"""A replay tells its failed sends while it runs (rate-limited), not only in its summary;
and it gives records as long as a broker restart takes to be delivered."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import orjson
import pytest

from online_models.datasets import Dataset
from online_models.synthetic import generate_events
from stream import replay
from stream.replay import Replayer


def test_failed_sends_are_reported_while_the_replay_runs(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    r = Replayer("localhost:1", "t")
    r._failed_said, r._failed_said_at = 0, 0.0
    clock = iter([100.0, 101.0, 105.0, 112.0])
    monkeypatch.setattr(replay.time, "monotonic", lambda: next(clock))
    producer = SimpleNamespace(failed_total=0, last_error=None)
    with caplog.at_level(logging.WARNING, logger="stream.replay"):
        r._say_failures(producer)  # nothing failed: quiet
        producer.failed_total, producer.last_error = 40, "Local: Message timed out"
        r._say_failures(producer)  # said at once
        producer.failed_total = 90
        r._say_failures(producer)  # 4 s later: held back
        r._say_failures(producer)  # 11 s later: said
    said = [rec.getMessage() for rec in caplog.records]
    assert said == [
        "40 sends failed so far (40 since the last report; last: Local: Message timed "
        "out): the broker did not take them",
        "90 sends failed so far (50 since the last report; last: Local: Message timed "
        "out): the broker did not take them"]


def test_a_replay_waits_longer_than_a_broker_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    given: dict[str, object] = {}

    def make_producer(settings: object, **options: object) -> None:
        given.update(options)
        raise RuntimeError("stop here")

    monkeypatch.setattr(replay, "make_producer", make_producer)
    events = Dataset.from_records(generate_events(10, 3, 5, seed=1), name="s")
    with pytest.raises(RuntimeError, match="stop here"):
        Replayer("localhost:1", "t", progress=False).replay(events)
    assert given["delivery_timeout_ms"] == replay.DELIVERY_TIMEOUT_MS >= 10 * 60_000
    # a send waits 1 s for room (then Ctrl-C is checked), but reaching the cluster at
    # the start may take a slow handshake (kafka-python tied the two)
    assert given["max_block_ms"] == 1_000 and given["bootstrap_timeout_ms"] >= 60_000


class _FullOnce:
    """A producer whose queue refuses the records from ``full_at`` on ``times`` times
    (send_many queues the ones before it, as the clients do), then takes all."""

    def __init__(self, full_at: int, times: int) -> None:
        self.full_at, self.times = full_at, times
        self.queued: list[bytes | None] = []
        self.failed_total, self.last_error = 0, None

    def send_many(self, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
        for i, (_, value) in enumerate(records):
            if self.times and len(self.queued) == self.full_at:
                self.times -= 1
                raise replay.QueueFull("producer queue full (3 records waiting)", queued=i)
            self.queued.append(value)

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             **more: object) -> None:
        self.send_many(topic, [(key, value)])

    def poll(self, timeout_s: float = 0.0) -> int:
        return 0


def test_a_full_queue_is_waited_out_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    """The replay used to stop with `producer queue full` a minute into an outage. Now
    it waits for room (saying so), then goes on exactly where it was: nothing twice,
    nothing skipped, the order kept."""
    import threading

    r = Replayer("localhost:1", "t")
    producer = _FullOnce(full_at=3, times=4)
    records = [(b"k", str(i).encode()) for i in range(8)]
    with caplog.at_level(logging.WARNING, logger="stream.replay"):
        queued = r._send_many(producer, threading.Event(), "t", records)  # type: ignore[arg-type]
        assert r._send(producer, threading.Event(), "t", b"8", b"k")  # type: ignore[arg-type]
    assert queued == 8
    assert producer.queued == [str(i).encode() for i in range(9)]
    said = [rec.getMessage() for rec in caplog.records]
    assert len(said) == 2, said  # one WARNING per 10 s of waiting, one when it ends
    assert "queue has been full for" in said[0] and "Ctrl-C stops" in said[0]
    assert "has room again" in said[1]


def test_ctrl_c_while_the_queue_is_full_stops_with_an_exact_count() -> None:
    import threading

    r = Replayer("localhost:1", "t")
    stop = threading.Event()
    stop.set()  # Ctrl-C came while the replay waited
    producer = _FullOnce(full_at=5, times=1_000)
    assert r._send_many(producer, stop, "t", [(b"k", b"x")] * 9) == 5  # type: ignore[arg-type]
    assert not r._send(producer, stop, "t", b"y", b"k")  # type: ignore[arg-type]
    assert len(producer.queued) == 5


@pytest.mark.kafka
@pytest.mark.parametrize("rate", [None, 2_000.0])  # as fast as it goes (send_many); paced
def test_a_replay_outlasts_a_queue_that_stays_full(kafka_settings, new_topic, rate,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A real broker that takes records only every 1.5 s (the linger) into a queue of
    10: sends are refused for longer than a send waits, as in an outage; the replay
    waits and delivers every event once, each user's in order."""
    from stream.kafka import end_offsets
    from tests.stream.test_consumer import read_topic

    topic = new_topic(partitions=2)
    events = Dataset.from_records(generate_events(40, 5, 20, seed=3), name="s")
    r = Replayer(kafka_settings, topic, rate=rate, progress=False, linger_ms=1_500,
                 queue_max_messages=10)
    with caplog.at_level(logging.WARNING, logger="stream.replay"):
        result = r.replay(events)
    assert (result.sent, result.failed) == (40, 0)
    assert sum(end_offsets(kafka_settings, topic).values()) == 40
    assert any("queue has been full for" in rec.getMessage() for rec in caplog.records)
    got = read_topic(kafka_settings, topic, 40)
    by_user: dict[bytes | None, list[float]] = {}
    for rec in got:
        by_user.setdefault(rec.key, []).append(orjson.loads(rec.value or b"{}")["timestamp"])
    assert sum(map(len, by_user.values())) == 40
    assert all(ts == sorted(ts) for ts in by_user.values())


def test_ctrl_c_while_the_queue_is_full_stops_dead_letter_copies_too() -> None:
    """The dead-letter copies of rejected rows went on after Ctrl-C, each waiting a
    second for room, and every one counted as rejected though none was queued."""
    import threading

    from online_models.interactions import InvalidRow

    sent: list[str] = []

    class Full:  # a queue that takes nothing
        failed_total, last_error = 0, None

        def send(self, topic: str, *args: object, **kwargs: object) -> None:
            sent.append(topic)
            raise replay.QueueFull("producer queue full (10 records waiting)")

        def poll(self, timeout_s: float = 0.0) -> int:
            return 0

    bad = [InvalidRow(line=i + 2, reason="bad_timestamp", detail="ts 'x'", raw=("u", "i", "x"))
           for i in range(30)]
    dataset = SimpleNamespace(invalid=bad)
    result = replay.ReplayResult()
    stop = threading.Event()
    stop.set()  # Ctrl-C came: the first refused copy ends it
    r = Replayer("localhost:1", "t")
    assert not r._send_invalid(Full(), dataset, result, "f.csv", stop)  # type: ignore[arg-type]
    assert sent == ["t.dlq"] and sum(result.rejected.values()) == 0
