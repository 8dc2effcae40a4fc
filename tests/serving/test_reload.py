"""Hot reload: new snapshots swap in, corrupt ones are refused, no request fails."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

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
    # Wait for the refusal itself: the reload thread counts it in the metric a moment
    # before it records the version in refused_versions (a /v1/model read between the
    # two saw no refusal yet).
    deadline = time.monotonic() + 30
    m = client.get("/v1/model").json()
    while time.monotonic() < deadline and str(v3) not in m["refused_versions"]:
        time.sleep(0.05)
        m = client.get("/v1/model").json()
    reg = client.app.state.serving.metrics.registry  # type: ignore[attr-defined]
    assert (reg.get_sample_value("liverec_serving_snapshot_reloads_total",
                                 {"outcome": "refused"}) or 0) >= 1
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


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _half_copy(store: SnapshotStore, version: int) -> tuple[Path, bytes]:
    """Truncate ``version``'s bpr file as a copy caught half-way leaves it; returns the
    file and its complete bytes."""
    path = store.path_of(version) / "model-bpr.safetensors"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path, whole


def _refused_count(state: ServingState) -> float:
    return state.metrics.registry.get_sample_value(
        "liverec_serving_snapshot_reloads_total", {"outcome": "refused"}) or 0.0


def test_a_refused_version_is_tried_again_once_its_files_are_complete(
    store: SnapshotStore, trained: Trained
) -> None:
    """Operator review: v36 published with a half-copied file was refused and never
    tried again after the copy completed; /readyz said nothing."""
    clock = _Clock()
    state = ServingState(settings_for(store.root), ServingMetrics(), clock=clock)
    assert state.load_initial() and state.current is not None
    v2 = _write(store, trained)
    path, whole = _half_copy(store, v2)

    assert state.check_reload() is False
    assert state.current.version == 1 and v2 in state.refused
    assert _refused_count(state) == 1
    ready, deps = state.dependencies()
    assert ready  # still serving version 1: a replica that can answer stays in rotation
    snap = deps["snapshot"]
    assert snap["state"] == "refused" and snap["version"] == 1 and snap["latest"] == v2
    assert f"snapshot {v2}" in str(snap["reason"]) and "checksum" in str(snap["reason"])
    assert state.metrics.registry.get_sample_value(
        "liverec_serving_degraded", {"reason": "snapshot_refused"}) == 1.0

    # Nothing changed and no time passed: not tried again every tick.
    for _ in range(5):
        assert state.check_reload() is False
    assert _refused_count(state) == 1

    # The copy completes: tried again at once (once the files stopped changing),
    # with no time passing at all.
    path.write_bytes(whole)
    loaded = False
    for _ in range(2):
        loaded = state.check_reload() or loaded
    assert loaded and state.current.version == v2
    assert v2 not in state.refused
    ready, deps = state.dependencies()
    assert ready and deps["snapshot"] == {"state": "loaded", "version": v2}
    assert state.metrics.registry.get_sample_value(
        "liverec_serving_degraded", {"reason": "snapshot_refused"}) == 0.0


def test_a_refused_version_is_retried_with_a_doubling_delay(
    store: SnapshotStore, trained: Trained
) -> None:
    """Files unchanged (fixed in place with the same size and mtime, as a restored
    backup might be): the retry timer alone brings the version in."""
    clock = _Clock()
    state = ServingState(settings_for(store.root), ServingMetrics(), clock=clock)
    assert state.load_initial()
    v2 = _write(store, trained)
    path = store.path_of(v2) / "model-bpr.safetensors"
    whole, st = path.read_bytes(), path.stat()
    broken = bytearray(whole)
    broken[len(broken) // 2] ^= 0xFF
    path.write_bytes(bytes(broken))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    assert state.check_reload() is False and _refused_count(state) == 1
    first = state.refused.retry_in(v2)
    assert first is not None and 1.0 <= first <= 60.0
    clock.now += first - 0.5
    assert state.check_reload() is False and _refused_count(state) == 1
    clock.now += 0.5
    assert state.check_reload() is False and _refused_count(state) == 2
    assert state.refused.retry_in(v2) == 2 * first  # doubled
    r = state.refused.refusal(v2)
    assert r is not None and r.attempts == 2
    # Many more failed attempts: the delay stops growing at its cap.
    for _ in range(20):
        clock.now += state.refused.retry_in(v2) or 0.0
        state.check_reload()
    cap = state.refused.retry_in(v2)
    assert cap is not None and 60.0 <= cap <= 3600.0
    assert _refused_count(state) == 22
    assert state.current is not None and state.current.version == 1

    path.write_bytes(whole)  # repaired in place: same size, same mtime
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert state.check_reload() is False  # not due yet
    clock.now += cap
    assert state.check_reload() is True
    assert state.current.version == v2 and not state.refused


def test_readyz_reports_a_refused_latest_and_stays_ready(
    store: SnapshotStore, trained: Trained
) -> None:
    v2 = _write(store, trained)
    _half_copy(store, v2)
    with TestClient(create_app(settings_for(store.root))) as client:
        deadline = time.monotonic() + 30
        body = client.get("/readyz").json()
        while time.monotonic() < deadline and body["dependencies"]["snapshot"][
                "state"] != "refused":
            time.sleep(0.05)
            body = client.get("/readyz").json()
        r = client.get("/readyz")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ready"] is True and body["status"] == "degraded"
        assert body["snapshot_version"] == 1
        dep = body["dependencies"]["snapshot"]
        assert dep["state"] == "refused" and dep["latest"] == v2
        assert f"LATEST names snapshot {v2}, which was refused" in dep["reason"]
        assert str(v2) in client.get("/v1/model").json()["refused_versions"]
        assert 'liverec_serving_degraded{reason="snapshot_refused"} 1.0' in client.get(
            "/metrics").text


def test_a_snapshot_from_a_trainer_that_started_over_is_loaded_with_a_warning(
    tmp_path: Path, trained: Trained, caplog: pytest.LogCaptureFixture
) -> None:
    """A trainer that lost its snapshots starts from an empty model at version 1: the
    server still loads it (a reset may be intended) but says so and counts it."""
    models, history, watermark = trained
    root = tmp_path / "snaps"
    store = SnapshotStore(root)
    for events in (1000, 3000, 6000):
        store.write(models, history=history, offsets={}, events_total=events,
                    watermark=watermark)
    state = ServingState(settings_for(root), ServingMetrics())
    assert state.load_initial() and state.current is not None
    assert state.current.version == 3

    def regressions(reason: str) -> float | None:
        return state.metrics.registry.get_sample_value(
            "liverec_serving_snapshot_regressions_total", {"reason": reason})

    # An ordinary newer version with more events: no warning.
    store.write(models, history=history, offsets={}, events_total=7000, watermark=watermark)
    with caplog.at_level(logging.WARNING, logger="serving.state"):
        assert state.check_reload() is True
    assert not [r for r in caplog.records if "started over" in r.getMessage()]
    assert regressions("version_lower") == 0 and regressions("events_fell") == 0

    # The trainer lost its snapshots and started over: version 1, few events.
    shutil.rmtree(root)
    SnapshotStore(root).write(models, history=history, offsets={}, events_total=200,
                              watermark=watermark)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="serving.state"):
        assert state.check_reload() is True  # loaded all the same
    assert state.current.version == 1
    warned = [r.getMessage() for r in caplog.records if "started over" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert "version went down from 4 to 1" in warned[0]
    assert "learned events fell from 7000 to 200" in warned[0]
    assert regressions("version_lower") == 1 and regressions("events_fell") == 1

    # A higher version whose events fell below half: the count alone is flagged.
    SnapshotStore(root).write(models, history=history, offsets={}, events_total=90,
                              watermark=watermark)
    assert state.check_reload() is True and state.current.version == 2
    assert regressions("version_lower") == 1 and regressions("events_fell") == 2


def test_with_nothing_served_a_refused_first_snapshot_is_not_reread_every_tick(
    tmp_path: Path, trained: Trained
) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    v1 = _write(store, trained)
    path, whole = _half_copy(store, v1)
    state = ServingState(settings_for(store.root), ServingMetrics(), clock=_Clock())
    for _ in range(5):
        assert state.check_reload() is False
    assert _refused_count(state) == 1 and v1 in state.refused
    ready, deps = state.dependencies()
    assert not ready and deps["snapshot"]["state"] == "missing"
    assert f"no version verifies; the newest: snapshot {v1}: " in str(deps["snapshot"]["reason"])
    path.write_bytes(whole)  # the copy completes
    assert state.check_reload() or state.check_reload()
    assert state.current is not None and state.current.version == v1 and not state.refused


def test_a_refusal_at_start_is_not_read_again_on_the_first_tick(
    tmp_path: Path, trained: Trained, caplog: pytest.LogCaptureFixture
) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    v1 = _write(store, trained)
    _half_copy(store, v1)
    state = ServingState(settings_for(store.root), ServingMetrics(), clock=_Clock())
    with caplog.at_level(logging.WARNING, logger="online_models.snapshot"):
        assert state.load_at_start() is False
        assert state.check_reload() is False
    assert _refused_count(state) == 1 and v1 in state.refused
    refusals = [r for r in caplog.records if "refusing snapshot" in r.getMessage()]
    assert len(refusals) == 1, caplog.text  # was logged twice, 15 ms apart


def test_a_version_refused_for_days_keeps_its_capped_delay() -> None:
    """The delay doubles up to its cap and stays there: the 1,025th refusal (85 hours
    in at 5 minutes) overflowed 2.0 ** 1024 and broke every later reload."""
    from online_models.refusals import Refusals

    now = [0.0]
    refusals: Refusals[int] = Refusals(first_s=5.0, max_s=300.0, clock=lambda: now[0])
    for _ in range(2000):
        r = refusals.refuse(7, "corrupt", ())
        now[0] = r.retry_at
    assert r.attempts == 2000
    assert refusals.refuse(7, "corrupt", ()).retry_at - now[0] == 300.0
