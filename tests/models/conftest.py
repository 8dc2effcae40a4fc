"""Shared fixtures for model tests: a small seeded synthetic stream and model builders."""

from __future__ import annotations

from typing import Any

import pytest

from online_models import registry
from online_models.base import Batch, OnlineModel
from online_models.content import ItemFeatures
from online_models.datasets import Dataset, to_batches
from online_models.synthetic import generate_events, planted_item_texts

ALL_MODELS: tuple[str, ...] = tuple(registry.MODEL_PATHS)


def synthetic_features(n_items: int = 1_000) -> ItemFeatures:
    """Planted content for the synthetic stream's items ``i000000``...: a few shared words."""
    return ItemFeatures.from_texts(planted_item_texts(n_items))


def make_model(name: str, **params: Any) -> OnlineModel:
    """A fresh registry model with its default hyperparameters and ``params``.

    Models that take item content (``set_item_features``) get the synthetic features.
    """
    model = registry.create(name, **params)
    setter = getattr(model, "set_item_features", None)
    if setter is not None:
        setter(synthetic_features())
    return model


def learn_all(model: OnlineModel, batches: list[Batch]) -> OnlineModel:
    for b in batches:
        model.learn(b)
    return model


@pytest.fixture(scope="session")
def small_stream() -> Dataset:
    """3,000 seeded synthetic events: 80 users, 200 items, sessions, new items."""
    return Dataset.from_records(generate_events(3_000, 80, 200, seed=7), name="small")


@pytest.fixture(scope="session")
def small_batches(small_stream: Dataset) -> list[Batch]:
    return list(to_batches(small_stream, 256))
