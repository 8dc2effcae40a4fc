"""Extra snapshot roots: another trainer's models served beside the main root's."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import numpy as np
import pytest

from online_models import registry
from online_models.base import Batch, UserHistory
from online_models.snapshot import SnapshotStore
from online_models.synthetic import generate_events
from serving.app import create_app
from serving.metrics import ServingMetrics
from serving.settings import ServeSettings
from serving.state import ServingState
from tests.serving.client import TestClient
from tests.serving.conftest import Trained, settings_for


def _sequence_root(root: Path, n_events: int = 2000, seed: int = 1) -> SnapshotStore:
    """A root as a trainer of its own writes it: one model (``sequence``) and a clash
    (``popularity``, also in the main root) learned on another stream."""
    events = generate_events(n_events, n_users=80, n_items=150, seed=seed)
    batch = Batch.from_columns([e["user_id"] for e in events], [e["item_id"] for e in events],
                               None, [float(e["timestamp"]) for e in events])
    models = {"sequence": registry.create("sequence"), "popularity": registry.create("popularity")}
    for chunk in batch.chunks(256):
        for m in models.values():
            m.learn(chunk)
    history = UserHistory(max_items=50)
    history.extend(batch.users, batch.items)
    store = SnapshotStore(root)
    store.write(models, history=history, offsets={}, events_total=n_events,
                watermark=float(batch.timestamps.max()))
    return store


def test_extra_root_models_are_served_and_reload_on_their_own(
    store: SnapshotStore, tmp_path: Path
) -> None:
    extra = _sequence_root(tmp_path / "seq")
    settings = settings_for(store.root, extra_snapshots=(extra.root,))
    state = ServingState(settings, ServingMetrics())
    assert state.load_initial()
    cur = state.current
    assert cur is not None and cur.version == 1
    # the extra root's model joins; the main root keeps its own popularity model
    assert set(cur.snapshot.models) == {"popularity", "bpr", "itemknn", "sequence"}
    served = cur.snapshot.models["popularity"].score_all("")
    assert np.array_equal(served, store.load().models["popularity"].score_all(""))
    assert not np.array_equal(served, extra.load().models["popularity"].score_all(""))
    summary = cur.summary()
    assert summary["extra_snapshots"][str(extra.root)]["models"] == ["sequence"]
    assert summary["extra_snapshots"][str(extra.root)]["version"] == 1
    assert "sequence" in summary["models"]

    assert state.check_reload() is False  # nothing moved
    # A new version of the extra root alone swaps in (the main version stays).
    models = extra.load().models
    extra.write(models, history=UserHistory(), offsets={}, events_total=9, watermark=1.0)
    assert state.check_reload() is True
    cur = state.current
    assert cur is not None and cur.version == 1
    assert cur.summary()["extra_snapshots"][str(extra.root)]["version"] == 2
    # A corrupt extra version is refused; the loaded one keeps serving.
    v3 = extra.write(models, history=UserHistory(), offsets={}, events_total=9,
                     watermark=1.0).version
    path = next(extra.path_of(v3).glob("model-sequence*"))
    path.write_bytes(path.read_bytes()[:-7])
    assert state.check_reload() is False
    assert (extra.root, v3) in state.extras.refused
    assert state.current is not None and "sequence" in state.current.snapshot.models


def test_extra_root_model_answers_requests(store: SnapshotStore, tmp_path: Path) -> None:
    extra = _sequence_root(tmp_path / "seq")
    with TestClient(create_app(settings_for(store.root, extra_snapshots=(extra.root,)))) as c:
        r = c.get("/v1/recommendations", params={"user_id": "u000001", "model": "sequence"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "sequence" and len(body["items"]) == 10
        assert "sequence" in c.get("/v1/model").json()["models"]


def test_readyz_reports_an_extra_root_without_a_snapshot(
    store: SnapshotStore, tmp_path: Path
) -> None:
    empty = tmp_path / "seq-not-yet"
    with TestClient(create_app(settings_for(store.root, extra_snapshots=(empty,)))) as c:
        r = c.get("/readyz")
        assert r.status_code == 200  # the main root's models serve
        dep = r.json()["dependencies"]["extra_snapshots"]
        assert dep["state"] == "missing" and str(empty) in dep["reason"]
        metrics = c.get("/metrics").text
        assert 'liverec_serving_degraded{reason="extra_snapshot_missing"} 1.0' in metrics
        _sequence_root(empty)  # its trainer writes a first snapshot: picked up
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "sequence" not in c.get("/v1/model").json()[
                "models"]:
            time.sleep(0.05)
        dep = c.get("/readyz").json()["dependencies"]["extra_snapshots"]
        assert dep == {"state": "loaded", "versions": {str(empty): 1}}


def test_extra_snapshots_setting_takes_a_comma_separated_list(monkeypatch) -> None:
    monkeypatch.setenv("LIVEREC_EXTRA_SNAPSHOTS", "/a, /b")
    assert ServeSettings().extra_snapshots == (Path("/a"), Path("/b"))


def test_no_snapshot_root_is_created_by_the_server(
    tmp_path: Path, trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Operator review: ``serve --extra-snapshots /ro/seqnn`` on a read-only mount whose
    root did not exist yet exited with EROFS, and a mistyped ``--snapshots`` became an
    empty directory. The server only reads: it waits for both roots to appear."""
    main, ro = tmp_path / "snapshots-typo", tmp_path / "ro"
    ro.mkdir()
    extra = ro / "seqnn"
    real_mkdir = Path.mkdir

    def read_only_mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self == ro or ro in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    state = ServingState(settings_for(main, extra_snapshots=(extra,)), ServingMetrics())
    assert state.load_initial() is False and state.check_reload() is False
    assert not main.exists() and not extra.exists()
    ready, deps = state.dependencies()
    assert not ready
    assert deps["snapshot"]["state"] == "missing"
    assert f"{main} does not exist yet" in str(deps["snapshot"]["reason"])
    assert f"{extra}: does not exist yet" in str(deps["extra_snapshots"]["reason"])

    # The trainers create their roots and write: both are picked up.
    models, history, watermark = trained
    SnapshotStore(main).write(models, history=history, offsets={}, events_total=10,
                              watermark=watermark)
    assert state.check_reload() is True
    assert state.current is not None and state.current.version == 1
    monkeypatch.undo()  # the mount's writer
    _sequence_root(extra)
    assert state.check_reload() is True
    assert "sequence" in state.current.snapshot.models
    ready, deps = state.dependencies()
    assert ready and deps["extra_snapshots"]["state"] == "loaded"


def test_a_refused_extra_version_is_tried_again(store: SnapshotStore, tmp_path: Path) -> None:
    extra = _sequence_root(tmp_path / "seq")
    now = [0.0]
    state = ServingState(settings_for(store.root, extra_snapshots=(extra.root,)),
                         ServingMetrics(), clock=lambda: now[0])
    assert state.load_initial()
    models = extra.load().models
    v2 = extra.write(models, history=UserHistory(), offsets={}, events_total=9,
                     watermark=1.0).version
    path = next(extra.path_of(v2).glob("model-sequence*"))
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # caught half-copied
    assert state.check_reload() is False
    assert (extra.root, v2) in state.extras.refused
    ready, deps = state.dependencies()
    dep = deps["extra_snapshots"]
    assert ready and dep["state"] == "refused" and dep["refused"] == {str(extra.root): v2}
    assert f"LATEST names snapshot {v2}, which was refused" in str(dep["reason"])
    assert state.check_reload() is False  # not every tick
    path.write_bytes(whole)  # the copy completes
    assert state.check_reload() or state.check_reload()
    cur = state.current
    assert cur is not None and cur.summary()["extra_snapshots"][str(extra.root)]["version"] == v2
    assert not state.extras.refused
    assert state.dependencies()[1]["extra_snapshots"]["state"] == "loaded"
