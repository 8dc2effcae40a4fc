"""The live tail's own state without a broker (its Kafka behaviour is in
test_live_kafka.py)."""

from __future__ import annotations

import math

from serving.live import LiveContext, LiveTail
from serving.metrics import ServingMetrics


def test_a_disconnected_tail_has_no_lag_figure() -> None:
    """The last measured lag stayed exported through a 4-minute outage and was drawn
    as the current one; unknown until the tail reconnects."""
    metrics = ServingMetrics()
    tail = LiveTail("127.0.0.1:9", "clicks", LiveContext(), metrics=metrics)
    tail.lag = 4
    metrics.live_lag.set(4)
    tail._disconnected(ConnectionError("broker gone"), 1.0)
    assert tail.state == "disconnected" and "broker gone" in tail.reason
    assert tail.lag is None
    value = metrics.registry.get_sample_value("liverec_serving_live_lag_messages")
    assert value is not None and math.isnan(value)
