"""Serving a scale-out location: partitions without a live trainer are reported."""

from __future__ import annotations

import time
from pathlib import Path

from online_models.ownership import unowned_partitions, write_heartbeat
from online_models.snapshot import SnapshotStore
from serving.app import create_app
from tests.serving.client import TestClient
from tests.serving.conftest import settings_for


def test_unowned_partitions_by_heartbeat_age(tmp_path: Path) -> None:
    assert unowned_partitions(tmp_path, 60.0) == {}  # not a scale-out location
    now = time.time()
    write_heartbeat(tmp_path, 0, "a", now=now - 5)
    write_heartbeat(tmp_path, 1, "b", now=now - 500)
    got = unowned_partitions(tmp_path, 60.0, known=[0, 1, 2], now=now)
    assert set(got) == {1, 2}
    assert got[2] is None and got[1] is not None and 499 < got[1] < 501


def test_readyz_and_metric_report_an_unowned_partition(store: SnapshotStore) -> None:
    root = store.root
    write_heartbeat(root, 0, "a")
    write_heartbeat(root, 1, "b", now=time.time() - 3600)
    with TestClient(create_app(settings_for(root, partition_owner_timeout_s=30.0))) as c:
        body = c.get("/readyz").json()
        parts = body["dependencies"]["partitions"] if "dependencies" in body else None
        assert parts is not None, body
        assert parts["state"] == "unowned" and list(parts["unowned"]) == ["1"]
        assert body["ready"] is True  # reported, still serving
        metrics = c.get("/metrics").text
        assert "liverec_serving_partitions_unowned 1.0" in metrics
        assert 'liverec_serving_degraded{reason="partition_unowned"} 1.0' in metrics
        assert "scale_out" in c.get("/v1/model").json()
        assert body["status"] == "degraded"
        write_heartbeat(root, 1, "b")  # its trainer is back
        body = c.get("/readyz").json()
        assert body["dependencies"]["partitions"]["state"] == "owned"
        assert body["status"] == "ready", body  # every partition owned is no degradation
