"""Every metric the trainer and the server export passes ``promtool check metrics``:
Prometheus's own lint of names, types and units (``_total`` on counters and only
there, base units, snake case).

promtool lints the samples it sees, so each labelled metric first gets one child
(label values ``x``), as it would in a running process.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from serving.metrics import ServingMetrics
from trainer.metrics import TrainerMetrics


def _touch_every_metric(owner: object) -> int:
    """Give every metric attribute of ``owner`` one sample; returns how many."""
    n = 0
    for value in vars(owner).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        labelnames = value._labelnames  # prometheus_client keeps them only here
        metric = value.labels(*["x"] * len(labelnames)) if labelnames else value
        if isinstance(value, Counter):
            metric.inc()
        elif isinstance(value, Gauge):
            metric.set(1)
        elif isinstance(value, Histogram):
            metric.observe(0.1)
        n += 1
    return n


@pytest.mark.parametrize("app", ["trainer", "serving"])
def test_promtool_finds_nothing_to_lint_in_the_exported_metrics(app: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool absent (make test installs prometheus via scripts/system-deps.sh)")
    registry = CollectorRegistry()
    owner = (TrainerMetrics(["itemknn"], "clicks", registry=registry) if app == "trainer"
             else ServingMetrics(registry=registry))
    assert _touch_every_metric(owner) >= 10
    text = generate_latest(registry)
    assert text.count(b"# TYPE liverec_") >= 10
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         timeout=60)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        out.stdout.decode() + out.stderr.decode())
