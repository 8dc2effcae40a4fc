"""A trainer whose snapshots are gone while its group's commits remain (a lost volume,
a wrong --snapshots) refuses to start from scratch at those commits, unless told to."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from liverec.cli import app
from online_models import registry
from online_models.popularity import Popularity
from online_models.snapshot import SnapshotStore
from stream.kafka import committed_offsets
from stream.replay import produce_events
from stream.settings import KafkaSettings
from tests.trainer.helpers import synthetic_events
from trainer import Trainer, TrainerSettings
from trainer.lost_snapshot import MissingSnapshotError

pytestmark = pytest.mark.kafka


def _settings(root: Path, group: str, **more: object) -> TrainerSettings:
    return TrainerSettings(snapshots=root, models="popularity", group=group, metrics_port=-1,
                           idle_exit_s=2, max_seconds=60, **more)  # type: ignore[arg-type]


def _commits(kafka: KafkaSettings, group: str) -> dict[int, int]:
    return committed_offsets(kafka, group, kafka.topic)


def test_a_lost_snapshot_directory_stops_the_trainer_before_it_writes_anything(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    topic = new_topic()
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    group = f"g-{topic}"
    produce_events(kafka_bootstrap, topic, synthetic_events(600, seed=1))
    first = tmp_path / "first"
    assert Trainer(_settings(first, group), kafka).run().events_total == 600
    assert _commits(kafka, group) == {0: 600}

    produce_events(kafka_bootstrap, topic, synthetic_events(100, seed=2))
    shutil.rmtree(first)  # the volume is gone
    with pytest.raises(MissingSnapshotError) as err:
        Trainer(_settings(first, group), kafka).run()
    text = str(err.value)
    assert f"consumer group {group!r}" in text and "partition 0 at 600" in text
    assert "--on-missing-snapshot resume" in text and "--group" in text
    # Nothing durable: no snapshot a server would load, and the commits as they were.
    assert SnapshotStore(first).latest_version() is None
    assert _commits(kafka, group) == {0: 600}

    # Accepting the loss: it learns on from the commits, and says what it skipped.
    with caplog.at_level(logging.WARNING, logger="trainer.lost_snapshot"):
        result = Trainer(_settings(first, group, on_missing_snapshot="resume"), kafka).run()
    assert result.events_total == 100
    assert any("resuming group" in r.getMessage() for r in caplog.records)
    assert SnapshotStore(first).load().events_total == 100
    assert _commits(kafka, group) == {0: 700}


def test_the_cli_says_what_to_do_and_exits_2(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    topic = new_topic()
    group = f"g-{topic}"
    produce_events(kafka_bootstrap, topic, synthetic_events(300, seed=3))
    args = ["train", "--bootstrap", kafka_bootstrap, "--topic", topic, "--group", group,
            "--models", "popularity", "--metrics-port", "-1", "--idle-exit-s", "2",
            "--max-seconds", "60"]
    runner = CliRunner()
    ok = runner.invoke(app, [*args, "--snapshots", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    # A typo'd --snapshots on the same group: refused, not a silent empty model.
    typo = runner.invoke(app, [*args, "--snapshots", str(tmp_path / "b")])
    assert typo.exit_code == 2
    assert "no valid snapshot in" in typo.output and "partition 0 at 300" in typo.output
    assert SnapshotStore(tmp_path / "b").latest_version() is None


class GonePopularity(Popularity):
    """A model this process knows only while the test registers it (a plugin)."""

    name = "test-gone"


def test_snapshots_refused_for_a_missing_model_are_not_called_lost(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    topic = new_topic()
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    group = f"g-{topic}"
    produce_events(kafka_bootstrap, topic, synthetic_events(300, seed=4))
    monkeypatch.setitem(registry.MODEL_PATHS, "test-gone",
                        "tests.trainer.test_lost_snapshot:GonePopularity")
    root = tmp_path / "snaps"
    settings = _settings(root, group).model_copy(update={"models": "popularity,test-gone"})
    assert Trainer(settings, kafka).run().events_total == 300
    written = SnapshotStore(root).latest_version()

    monkeypatch.delitem(registry.MODEL_PATHS, "test-gone")  # the plugin uninstalled
    with pytest.raises(MissingSnapshotError) as err:
        Trainer(_settings(root, group), kafka).run()
    text = str(err.value)
    assert text.startswith(f"every snapshot in {root} was refused (1 version(s)), and they "
                           "hold model(s) this install cannot build: test-gone. Install the "
                           "plugin package(s)")
    assert "lost" not in text
    assert SnapshotStore(root).latest_version() == written  # nothing written over them
    assert _commits(kafka, group) == {0: 300}
    # Also with no commits to protect (a new group): intact snapshots are not replaced.
    with pytest.raises(MissingSnapshotError, match="cannot build: test-gone"):
        Trainer(_settings(root, f"{group}-new"), kafka).run()
    assert SnapshotStore(root).latest_version() == written


def test_damaged_snapshots_with_commits_name_the_damage_and_the_way_out(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    topic = new_topic()
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, topic=topic)
    group = f"g-{topic}"
    produce_events(kafka_bootstrap, topic, synthetic_events(200, seed=5))
    root = tmp_path / "snaps"
    assert Trainer(_settings(root, group), kafka).run().events_total == 200
    store = SnapshotStore(root)
    for f in store.path_of(store.latest_version() or 0).glob("*.safetensors"):
        f.write_bytes(b"damaged")
    with pytest.raises(MissingSnapshotError) as err:
        Trainer(_settings(root, group), kafka).run()
    text = str(err.value)
    assert text.startswith(f"every snapshot in {root} was refused (1 version(s); the newest: ")
    assert "Where the files are damaged for good" in text
    assert "--on-missing-snapshot resume" in text and "--group" in text
