"""Rebalances lose nothing and learn nothing twice: a second trainer joins the group
mid-stream, takes half the partitions, and the revoking trainer's snapshot + commit
before the move means the two together learn every event exactly once."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from online_models.snapshot import SnapshotStore
from stream.kafka import end_offsets
from stream.replay import produce_events
from tests.trainer.helpers import TrainerProcess, synthetic_events, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS = 40_000


def _args(bootstrap: str, topic: str, snaps: Path, client: str, source: str) -> list[str]:
    # Periodic snapshots are rare here: only the checkpoint + commit inside the revoke
    # callback can keep the joining trainer from re-learning what the first one learned.
    return ["--bootstrap", bootstrap, "--topic", topic, "--group", f"g-{topic}",
            "--snapshots", str(snaps), "--models", "popularity", "--metrics-port", "-1",
            "--snapshot-every-s", "120", "--status-every-s", "1", "--session-timeout-ms",
            "6000", "--idle-exit-s", "8", "--max-seconds", "300", "--kafka-client", client,
            "--source", source,
            # a member that lost its group unnoticed (kafka-python) is rebuilt quickly
            "--join-timeout-s", "5",
            # LIVEREC_TEST_TRAINER_LOG_LEVEL=debug logs every batch's offset ranges
            "--log-level", os.environ.get("LIVEREC_TEST_TRAINER_LOG_LEVEL", "info")]


def _learned(snaps: Path) -> int:
    return SnapshotStore(snaps).load().events_total


def _story(trainer: TrainerProcess) -> str:
    """The trainer's rebalances and its end, for a failure message."""
    keep = ("trainer.source", "stopping", "stopped", "commit", "ERROR", "WARNING")
    return "\n".join(line for line in trainer.log_text().splitlines()
                     if any(k in line for k in keep))


@pytest.mark.parametrize(("client", "source"), [
    ("confluent", "thread"), ("kafka-python", "thread"), ("confluent", "process")])
def test_a_joining_trainer_takes_partitions_without_loss_or_double_learning(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, client: str,
    source: str,
) -> None:
    topic = new_topic(partitions=4)
    events = synthetic_events(N_EVENTS, seed=21, n_users=4000)

    produce_errors: list[BaseException] = []

    def stream_in() -> None:
        # ~16 s of stream: the second trainer must join while events still arrive
        # (the trainer learns a 4,000-event chunk in well under a second).
        try:
            for start in range(0, N_EVENTS, 1000):
                produce_events(kafka_bootstrap, topic, events[start:start + 1000])
                time.sleep(0.4)
        except BaseException as exc:
            produce_errors.append(exc)

    producer = threading.Thread(target=stream_in, daemon=True)
    producer.start()
    a_snaps, b_snaps = tmp_path / "a", tmp_path / "b"
    a = TrainerProcess(_args(kafka_bootstrap, topic, a_snaps, client, source),
                       tmp_path / "a.log")
    wait_for(lambda: "trainer.source: assigned [(" in a.log_text(), 120, "first assignment")
    wait_for(lambda: "events learned=" in a.log_text()
             and "events learned=0 " not in a.log_text().splitlines()[-1], 120, "a learning")
    b = TrainerProcess(_args(kafka_bootstrap, topic, b_snaps, client, source),
                       tmp_path / "b.log")
    producer.join(300)
    assert not produce_errors, produce_errors
    # Every event is in the topic, once: a shortfall below is the trainers' doing.
    assert sum(end_offsets(kafka_bootstrap, topic).values()) == N_EVENTS
    assert a.wait(400) == 0, a.log_text()[-3000:]
    assert b.wait(400) == 0, b.log_text()[-3000:]

    assert "revoked" in a.log_text(), "no rebalance happened: the test proves nothing"
    a_total, b_total = _learned(a_snaps), _learned(b_snaps)
    assert b_total > 0, "the joining trainer learned nothing"
    # Every event learned exactly once across the two trainers.
    assert a_total + b_total == N_EVENTS, (
        f"learned {a_total} + {b_total} of {N_EVENTS}; topic ends "
        f"{end_offsets(kafka_bootstrap, topic)}; final snapshot offsets a "
        f"{SnapshotStore(a_snaps).load().offsets} b {SnapshotStore(b_snaps).load().offsets}"
        f"\n--- a:\n{_story(a)}\n--- b:\n{_story(b)}")
    assert "commit before revoke failed" not in a.log_text()
