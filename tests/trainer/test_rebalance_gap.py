"""A scale-out trainer's role waits for a rebalance's assignment (no broker: the
rebalance callbacks are called as the consumer calls them)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stream.settings import KafkaSettings
from trainer.partitioned import ScaleOutTrainer
from trainer.settings import TrainerSettings


def test_role_waits_between_revocation_and_assignment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = ScaleOutTrainer(
        TrainerSettings(group="g", snapshots=tmp_path, models="popularity", scale_out=True,
                        instance_id="t0", session_timeout_ms=6000, metrics_port=-1),
        KafkaSettings(bootstrap="127.0.0.1:9", topic="clicks"))
    synced: list[set[int]] = []
    monkeypatch.setattr(trainer.item_side, "sync_role",
                        lambda parts: synced.append(set(parts)))
    trainer._sync_role()
    assert synced == [set()]  # no rebalance under way: the role follows the partitions

    trainer._on_revoke({("clicks", 3)})
    trainer._sync_role()
    # Revoked, assignment not yet here: folding (and the evaluation) stays as it is
    # rather than stopping for a set the assignment may hand straight back.
    assert synced == [set()]

    # A member handed nothing gets no assignment callback: the wait ends after the
    # session timeout.
    trainer._gap.revoked(now=time.monotonic() - 6.5)
    trainer._sync_role()
    assert synced == [set(), set()]
    trainer._sync_role()
    assert synced == [set(), set(), set()]
