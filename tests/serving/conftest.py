"""Fixtures: a small real snapshot (models trained on a tiny synthetic stream) and apps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from online_models import registry
from online_models.base import Batch, OnlineModel, UserHistory
from online_models.snapshot import SnapshotStore
from online_models.synthetic import generate_events
from serving.app import create_app
from serving.settings import ServeSettings
from tests.serving.client import TestClient

MODELS = ("popularity", "bpr", "itemknn")


Trained = tuple[dict[str, OnlineModel], UserHistory, float]


def train(n_events: int = 3000, seed: int = 0) -> Trained:
    """Real models trained on a tiny synthetic stream, its history and watermark."""
    events = generate_events(n_events, n_users=80, n_items=150, seed=seed)
    batch = Batch.from_columns(
        [e["user_id"] for e in events],
        [e["item_id"] for e in events],
        None,
        [float(e["timestamp"]) for e in events],
    )
    models: dict[str, OnlineModel] = {}
    for name in MODELS:
        params: dict[str, Any] = {"n_factors": 16, "seed": seed} if name == "bpr" else {}
        models[name] = registry.create(name, **params)
        for chunk in batch.chunks(256):
            models[name].learn(chunk)
    history = UserHistory(max_items=50)
    history.extend(batch.users, batch.items)
    return models, history, float(batch.timestamps.max())


@pytest.fixture(scope="session")
def trained() -> Trained:
    return train()


@pytest.fixture
def store(tmp_path: Path, trained: Trained) -> SnapshotStore:
    models, history, watermark = trained
    s = SnapshotStore(tmp_path / "snapshots", keep=10)
    s.write(
        models,
        history=history,
        offsets={},
        events_total=3000,
        watermark=watermark,
        metrics={
            "bpr": {"rolling": {"hr": 0.12, "n": 100}},
            "data_drift": {"item_popularity": {"psi": 0.05}},
        },
    )
    return s


def settings_for(root: Path, **overrides: Any) -> ServeSettings:
    base: dict[str, Any] = {
        "snapshots": root,
        "reload_interval_s": 0.05,
        "dashboard_interval_s": 0.2,
        "bootstrap": "",
    }
    return ServeSettings(**{**base, **overrides})


@pytest.fixture
def client(store: SnapshotStore) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(store.root))) as c:
        yield c
