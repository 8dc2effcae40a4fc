"""A scale-out trainer without a broker: its role waits for a rebalance's assignment (the
rebalance callbacks are called as the consumer calls them), and single-trainer stop
conditions are refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stream.kafka import ConsumerOptions
from stream.kafka.confluent import ConfluentConsumer
from stream.settings import KafkaSettings
from trainer.partitioned import ScaleOutTrainer
from trainer.settings import TrainerSettings


def test_role_waits_between_revocation_and_assignment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = KafkaSettings(bootstrap="127.0.0.1:9", topic="clicks")
    trainer = ScaleOutTrainer(
        TrainerSettings(group="g", snapshots=tmp_path, models="popularity", scale_out=True,
                        instance_id="t0", session_timeout_ms=6000, metrics_port=-1), kafka)
    # A consumer that never connects (nothing is polled): its assignment count is what
    # the rebalance callbacks would move.
    trainer.consumer = ConfluentConsumer(kafka, ConsumerOptions(group_id="g"))
    synced: list[set[int]] = []
    monkeypatch.setattr(trainer.item_side, "sync_role",
                        lambda parts: synced.append(set(parts)))
    monkeypatch.setattr(trainer.consumer, "partitions_for", lambda topic: [0, 1, 2, 3])
    try:
        trainer._sync_role()
        assert synced == [set()]  # no rebalance under way: the role follows the partitions

        trainer._on_revoke({("clicks", 3)})
        trainer._sync_role()
        # Revoked, assignment not yet here: folding (and the evaluation) stays as it is
        # rather than stopping for a set the assignment may hand straight back.
        assert synced == [set()]

        trainer.consumer.assignments += 1  # an empty assignment (no on_assign call)
        trainer._sync_role()
        assert synced == [set(), set()]

        # Revoked again, and no assignment within max.poll.interval.ms: the wait ends.
        trainer._on_revoke({("clicks", 3)})
        trainer._sync_role()
        assert synced == [set(), set()]
        trainer._gap.revoked(trainer.consumer.assignments, now=time.monotonic() - 301)
        trainer._sync_role()
        assert synced == [set(), set(), set()]
    finally:
        trainer.consumer.close()


def test_a_single_trainers_stop_condition_is_refused(tmp_path: Path) -> None:
    """--until-events-total counts one trainer's events_total: a scale-out member, which
    holds only its partitions' events, would never stop (it was silently ignored)."""
    with pytest.raises(ValueError, match="--until-events-total is for a single trainer"):
        ScaleOutTrainer(TrainerSettings(snapshots=tmp_path, models="popularity",
                                        scale_out=True, until_events_total=10,
                                        metrics_port=-1),
                        KafkaSettings(bootstrap="127.0.0.1:9", topic="clicks"))
