"""The reject log's rate limit and the dead-letter breaker, on a fake clock."""

from __future__ import annotations

import logging

import pytest

from stream.dlq_guard import DeadLetterBreaker, RejectLog, ensure_dead_letter_topic
from stream.events import Rejected
from stream.settings import KafkaSettings


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _rejects(n: int, reason: str = "not_json") -> list[tuple[Rejected, str, int, int]]:
    return [(Rejected(b"x", reason, f"bad {i}"), "clicks", 0, i) for i in range(n)]


def test_reject_lines_are_capped_per_window_and_the_rest_summarised(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RejectLog(logging.getLogger("t.rejects"), burst=3, window_s=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.rejects"):
        log.rejects(_rejects(5))
        log.rejects(_rejects(2, "too_large"))
        assert len(caplog.records) == 3  # the burst; four held back
        clock.t = 61.0
        log.rejects(_rejects(1))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5
    assert lines[3].startswith("4 more rejects in the 60 s from")
    assert "not_json=2, too_large=2" in lines[3]
    assert lines[4].startswith("reject not_json at clicks[0]@0")  # a new window's burst


def test_the_breaker_opens_doubles_and_resets() -> None:
    clock = Clock()
    b = DeadLetterBreaker(cooldown_s=30.0, max_cooldown_s=100.0, clock=clock)
    assert not b.is_open()
    assert b.opened("unknown topic") == 30.0
    assert b.is_open() and b.last_error == "unknown topic"
    clock.t = 30.0
    assert not b.is_open()  # the cool-down is over: the next batch tries again
    assert b.opened("unknown topic") == 60.0  # failed again: twice as long
    assert b.opened("unknown topic") == 100.0  # bounded
    b.skipped = 7
    assert b.closed() == 7 and not b.is_open()
    assert b.opened("x") == 30.0  # back to the first cool-down


def test_a_window_is_summarised_when_it_ends_not_at_the_next_reject(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RejectLog(logging.getLogger("t.tick"), burst=1, window_s=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.tick"):
        log.rejects(_rejects(3))
        clock.t = 30.0
        log.tick()  # the window is not over: nothing yet
        assert len(caplog.records) == 1
        clock.t = 7200.0  # a quiet two hours later, a poll
        log.tick()
    summary = caplog.records[-1].getMessage()
    assert summary.startswith("2 more rejects in the 60 s from")  # not "the last 60 s"
    assert "not_json=2" in summary



def test_an_unreachable_cluster_is_a_warning_not_an_error(
        caplog: pytest.LogCaptureFixture) -> None:
    settings = KafkaSettings(bootstrap="127.0.0.1:1", topic="clicks")
    with caplog.at_level(logging.WARNING, logger="stream.dlq_guard"):
        assert not ensure_dead_letter_topic(settings, timeout_s=1.0)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("cannot make sure the dead-letter topic clicks.dlq exists")
    assert "rejects will be skipped" in line and "create it (one partition)" in line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stream.dlq_guard"):  # a scale-out trainer's
        assert not ensure_dead_letter_topic(settings, timeout_s=1.0,
                                            consequence="the first reject stops it")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "the first reject stops it" in line and "skipped" not in line
