"""A replay tells its failed sends while it runs (rate-limited), not only in its summary;
and it gives records as long as a broker restart takes to be delivered."""

from __future__ import annotations

import logging
from types import SimpleNamespace

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
