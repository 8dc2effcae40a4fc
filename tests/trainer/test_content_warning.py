"""A trainer that learns a content ranker without any item content says so at start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from online_models import registry
from stream.settings import KafkaSettings
from trainer import TrainerSettings
from trainer.content import TrainerContent


def test_a_content_ranker_without_content_is_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    models = registry.create_models(["popularity", "content-knn"])
    content = TrainerContent(TrainerSettings(snapshots=tmp_path), KafkaSettings())
    with caplog.at_level(logging.WARNING, logger="trainer.content"):
        content.attach(models)
        content.attach(registry.create_models(["popularity", "itemknn"]))  # nothing to say
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("content-knn ranks by item content, and none is given")
    assert "--item-features" in line
