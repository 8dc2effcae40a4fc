"""The scale-out loop's phase clock: each phase gets its own time, nested ones apart."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter

from trainer.metrics import PhaseClock


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_an_inner_phase_is_taken_out_of_the_outer_one() -> None:
    registry = CollectorRegistry()
    clock = PhaseClock(Counter("t_loop_seconds", "test", ["phase"], registry=registry))
    with clock("learn"):
        _spin(0.05)
        with clock("transaction"):
            time.sleep(0.1)  # a wait: wall time, no CPU
        _spin(0.05)
    with clock("learn"):
        _spin(0.02)
    assert 0.1 <= clock.wall["transaction"] < 0.2
    assert clock.cpu["transaction"] < 0.02
    assert 0.12 <= clock.wall["learn"] < 0.2  # 0.12 s spun, the sleep not counted
    assert 0.12 <= clock.cpu["learn"] < 0.2
    assert registry.get_sample_value("t_loop_seconds_total", {"phase": "learn"}) == \
        clock.wall["learn"]
    assert sorted(clock.line().split(", ")) == ["learn 0.1/0.1", "transaction 0.1/0.0"]
