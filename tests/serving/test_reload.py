"""Hot reload: new snapshots swap in, corrupt ones are refused, no request fails."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

from online_models.base import OnlineModel, UserHistory
from online_models.snapshot import SnapshotStore
from serving.app import create_app
from serving.metrics import ServingMetrics
from serving.settings import ServeSettings
from serving.state import ServingState
from tests.serving.client import TestClient
from tests.serving.conftest import settings_for

Trained = tuple[dict[str, OnlineModel], UserHistory, float]


def _write(store: SnapshotStore, trained: Trained, watermark_shift: float = 0.0) -> int:
    models, history, watermark = trained
    return store.write(
        models,
        history=history,
        offsets={},
        events_total=1,
        watermark=watermark + watermark_shift,
    ).version


def _wait_version(client: TestClient, version: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        seen = client.get("/v1/model").json()["version"]
        if seen == version:
            return seen
        time.sleep(0.05)
    return seen


def _corrupt(store: SnapshotStore, version: int) -> None:
    path = store.path_of(version) / "model-bpr.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_new_snapshot_swaps_in_and_corrupt_one_is_refused(
    client: TestClient, store: SnapshotStore, trained: Trained
) -> None:
    assert client.get("/v1/model").json()["version"] == 1
    v2 = _write(store, trained, watermark_shift=60.0)
    assert _wait_version(client, v2) == v2
    body = client.get("/v1/recommendations", params={"user_id": "u000001"}).json()
    assert body["snapshot_version"] == v2 and body["watermark"] == trained[2] + 60.0

    # A corrupt version published as LATEST: refused, v2 keeps serving. It is written
    # and corrupted in a side copy and only then published, so the server can never
    # load it in the moment between the write and the corruption.
    side = SnapshotStore(store.root.parent / "side")
    shutil.copytree(store.root, side.root, dirs_exist_ok=True)
    v3 = _write(side, trained)
    _corrupt(side, v3)
    shutil.copytree(side.path_of(v3), store.path_of(v3))
    latest = store.root / ".LATEST.test"
    latest.write_text(f"{v3}\n")
    os.replace(latest, store.root / "LATEST")
    reg = client.app.state.serving.metrics.registry  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not reg.get_sample_value(
        "liverec_serving_snapshot_reloads_total", {"outcome": "refused"}
    ):
        time.sleep(0.05)
    m = client.get("/v1/model").json()
    assert m["version"] == v2 and str(v3) in m["refused_versions"]
    assert "model-bpr.safetensors" in m["refused_versions"][str(v3)]
    assert client.get("/v1/recommendations", params={"user_id": "u000001"}).status_code == 200

    # A good version after the corrupt one is picked up again.
    v4 = _write(store, trained)
    assert _wait_version(client, v4) == v4


def test_no_request_fails_during_swaps(store: SnapshotStore, trained: Trained) -> None:
    statuses: list[int] = []
    stop = threading.Event()
    with TestClient(create_app(settings_for(store.root, reload_interval_s=0.01))) as client:

        def hammer() -> None:
            while not stop.is_set():
                r = client.get("/v1/recommendations", params={"user_id": "u000002", "k": 20})
                statuses.append(r.status_code)

        t = threading.Thread(target=hammer)
        t.start()
        try:
            versions = [_write(store, trained) for _ in range(6)]
            assert _wait_version(client, versions[-1]) == versions[-1]
        finally:
            stop.set()
            t.join()
    assert statuses and set(statuses) == {200}


def test_startup_falls_back_past_a_corrupt_latest(tmp_path: Path, trained: Trained) -> None:
    store = SnapshotStore(tmp_path / "s")
    _write(store, trained)
    v2 = _write(store, trained)
    _corrupt(store, v2)
    state = ServingState(ServeSettings(snapshots=store.root), ServingMetrics())
    assert state.load_initial() is True
    assert state.current is not None and state.current.version == 1
    # LATEST still names the corrupt v2: the watcher refuses it and keeps v1.
    assert state.check_reload() is False
    assert state.current.version == 1 and v2 in state.refused
