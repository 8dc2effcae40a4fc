"""The scale-out loop's phase clock: each phase gets its own time, nested ones apart.

The clocks are fakes advanced by the test (the phase clock reads ``time.perf_counter``
and ``time.thread_time``), so the figures are exact and no machine's speed matters."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter

import trainer.metrics
from trainer.metrics import PhaseClock


class FakeClocks:
    """A wall clock and a CPU clock that move only when told."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 7.0

    def work(self, seconds: float) -> None:
        """Busy time: both clocks move."""
        self.wall += seconds
        self.cpu += seconds

    def wait(self, seconds: float) -> None:
        """A wait (I/O, the broker): wall time only."""
        self.wall += seconds


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> FakeClocks:
    fake = FakeClocks()
    monkeypatch.setattr(trainer.metrics.time, "perf_counter", lambda: fake.wall)
    monkeypatch.setattr(trainer.metrics.time, "thread_time", lambda: fake.cpu)
    return fake


def test_an_inner_phase_is_taken_out_of_the_outer_one(clocks: FakeClocks) -> None:
    registry = CollectorRegistry()
    clock = PhaseClock(Counter("t_loop_seconds", "test", ["phase"], registry=registry))
    with clock("learn"):
        clocks.work(0.5)
        with clock("transaction"):
            clocks.work(0.25)  # a little CPU ...
            clocks.wait(1.0)  # ... and a wait
        clocks.work(0.5)
    with clock("learn"):
        clocks.work(0.25)
    assert clock.wall["transaction"] == pytest.approx(1.25)
    assert clock.cpu["transaction"] == pytest.approx(0.25)
    assert clock.wall["learn"] == pytest.approx(1.25)  # the transaction is not counted
    assert clock.cpu["learn"] == pytest.approx(1.25)
    assert registry.get_sample_value("t_loop_seconds_total", {"phase": "learn"}) == \
        pytest.approx(1.25)
    assert registry.get_sample_value("t_loop_seconds_total", {"phase": "transaction"}) == \
        pytest.approx(1.25)
    assert sorted(clock.line().split(", ")) == ["learn 1.2/1.2", "transaction 1.2/0.2"]


def test_a_phase_that_raises_is_still_timed(clocks: FakeClocks) -> None:
    clock = PhaseClock(Counter("t2_loop_seconds", "test", ["phase"],
                               registry=CollectorRegistry()))
    with pytest.raises(RuntimeError), clock("poll"):
        clocks.wait(2.0)
        raise RuntimeError("broker gone")
    assert clock.wall["poll"] == pytest.approx(2.0) and clock.cpu["poll"] == 0.0
