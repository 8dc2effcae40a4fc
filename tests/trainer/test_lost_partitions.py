"""A scale-out trainer's check of its assigned partitions (no Kafka): the policy's
wording, and the CLI's exit status (the refusal on a real broker:
tests/trainer/test_scale_out_lost.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from liverec.cli import app
from trainer.lost_snapshot import MissingSnapshotError, check_partitions
from trainer.partitioned import ScaleOutTrainer


def _check(lost: dict[int, int], policy: str = "refuse") -> str | None:
    return check_partitions(lost, root=Path("/snaps"), group="g", topic="clicks",
                            updates="clicks.updates", policy=policy)  # type: ignore[arg-type]


def test_partitions_with_state_or_without_commits_pass() -> None:
    assert _check({}) is None


def test_a_committed_partition_without_state_is_refused_with_what_to_do() -> None:
    text = _check({3: 70, 1: 1200})
    assert text is not None
    assert text.startswith("no valid state of partition(s) 1, 3 in /snaps/partitions, but "
                           "consumer group 'g' committed offsets on 'clicks' (partition 1 "
                           "at 1200, partition 3 at 70)")
    # The single trainer's three ways out; starting over also needs the update topic gone.
    assert "Restore the snapshot directory (or fix --snapshots)" in text
    assert "new group (--group), after deleting the update topic 'clicks.updates'" in text
    assert text.endswith("--on-missing-snapshot resume (LIVEREC_ON_MISSING_SNAPSHOT=resume)")


def test_resume_goes_on_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trainer.lost_snapshot"):
        assert _check({0: 5}, policy="resume") is None
    (rec,) = caplog.records
    assert rec.levelno == logging.WARNING
    assert "resuming group 'g' at its commits (partition 0 at 5)" in rec.getMessage()


def test_the_cli_exits_2_with_the_refusal(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: ScaleOutTrainer) -> None:
        raise MissingSnapshotError("no valid state of partition(s) 0 in ...")

    monkeypatch.setattr(ScaleOutTrainer, "run", refuse)
    out = CliRunner().invoke(app, [
        "train", "--scale-out", "--bootstrap", "127.0.0.1:1", "--topic", "clicks",
        "--snapshots", str(tmp_path), "--models", "popularity", "--metrics-port", "-1"])
    assert out.exit_code == 2, out.output
    assert "error: no valid state of partition(s) 0" in out.output
