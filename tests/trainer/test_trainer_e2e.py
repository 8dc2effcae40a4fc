"""`liverec train` end to end against a real broker: counts, rejects, duplicates, metrics,
snapshot manifest, and fallback from a tampered snapshot."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from online_models.snapshot import SnapshotError, SnapshotStore
from stream.kafka import make_producer, send_all
from stream.replay import produce_events
from tests.trainer.helpers import BAD_MESSAGES, TrainerProcess, scrape, synthetic_events, wait_for

pytestmark = pytest.mark.kafka

N_EVENTS = 100_000
N_DUPLICATES = 500
MAX_USERS = 500


def _produce_bad(bootstrap: str, topic: str, copies: int) -> None:
    producer = make_producer(bootstrap)
    try:
        send_all(producer, topic, [(b"bad", raw) for _ in range(copies)
                                   for raw, _ in BAD_MESSAGES])
    finally:
        producer.close()


def _args(bootstrap: str, topic: str, snaps: Path, *extra: str) -> list[str]:
    return ["--bootstrap", bootstrap, "--topic", topic, "--group", f"g-{topic}",
            "--snapshots", str(snaps), "--metrics-port", "0", "--status-every-s", "2", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["thread", "process"])
def test_train_counts_valid_events_rejects_and_duplicates(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, source: str
) -> None:
    topic = new_topic(partitions=2)
    events = synthetic_events(N_EVENTS, seed=1)
    produce_events(kafka_bootstrap, topic, events)
    _produce_bad(kafka_bootstrap, topic, copies=3)
    # A redelivered slice: the same event ids again, which must not be learned twice.
    produce_events(kafka_bootstrap, topic, events[1000 : 1000 + N_DUPLICATES])

    snaps = tmp_path / "snaps"
    # Fewer users held than the stream has: the least recent are forgotten on the way.
    proc = TrainerProcess(
        _args(kafka_bootstrap, topic, snaps, "--models", "popularity,itemknn",
              "--max-seconds", "600", "--history-max-users", str(MAX_USERS),
              "--source", source),
        tmp_path / "train.log",
    )
    try:
        port = proc.metrics_port()
        key_total = ("liverec_trainer_events_learned_since_start", ())
        wait_for(lambda: scrape(port).get(key_total) == N_EVENTS, 600, "all events learned")
        labels_t = (("topic", topic),)
        # Duplicates are counted once the consumer has read past them.
        samples = wait_for(
            lambda: (s := scrape(port)).get(("liverec_trainer_duplicates_dropped_total", labels_t))
            == N_DUPLICATES and s,
            120, "duplicates counted",
        )
        for reason in {r for _, r in BAD_MESSAGES}:
            key = ("liverec_trainer_events_rejected_total", (("reason", reason), ("topic", topic)))
            expected = 3 * sum(r == reason for _, r in BAD_MESSAGES)
            assert samples[key] == expected, (reason, samples[key])
        assert samples[("liverec_trainer_events_rejected_total",
                        (("reason", "bad_timestamp"), ("topic", topic)))] == 0
        assert samples[("liverec_trainer_events_learned_total", labels_t)] == N_EVENTS
        for model in ("popularity", "itemknn"):
            by_model = (("model", model),)
            assert samples[("liverec_trainer_evaluated_events_total", by_model)] > 0
            assert samples[("liverec_trainer_model_items", by_model)] > 0
            assert samples[("liverec_trainer_learn_duration_seconds_count", by_model)] > 0
            assert 0 < samples[("liverec_trainer_rolling_hit_ratio", by_model)] <= 1
        assert samples[("liverec_trainer_snapshot_version", ())] >= 1
        users = len({e.user_id for e in events})
        assert users > MAX_USERS
        assert samples[("liverec_trainer_users_tracked", ())] == MAX_USERS
        assert samples[("liverec_trainer_users_forgotten_total", ())] >= users - MAX_USERS
        for model in ("popularity", "itemknn"):
            assert samples[("liverec_trainer_model_users", (("model", model),))] <= MAX_USERS
        assert proc.terminate() == 0
    finally:
        if proc.proc.poll() is None:
            proc.kill()

    manifest = SnapshotStore(snaps).read_manifest()
    assert manifest["events_total"] == N_EVENTS
    # Every record consumed: valid, bad and duplicate ones all moved the offsets.
    total_records = N_EVENTS + 3 * len(BAD_MESSAGES) + N_DUPLICATES
    assert sum(manifest["offsets"][topic].values()) == total_records
    assert set(manifest["models"]) == {"popularity", "itemknn"}
    assert "SIGTERM" in proc.log_text() or "signal 15" in proc.log_text()
    assert ("polling and decoding in a child process" in proc.log_text()) == (
        source == "process")
    # The exit line splits the run into the join, learning and the shutdown.
    phases = re.search(r"first batch after ([\d.]+) s, learning ([\d.]+) s \(([\d,]+) "
                       r"events/s; busy \d+% of it: ([\d,]+) events/s while busy\), "
                       r"shutdown ([\d.]+) s", proc.log_text())
    # It waited for SIGTERM after the last record, so the line also gives the rate
    # while busy, above the phase's average.
    assert phases, proc.log_text()[-2000:]
    join_s, learning_s, rate, busy_rate, shutdown_s = (
        float(g.replace(",", "")) for g in phases.groups())
    assert join_s > 0 and learning_s > 0 and shutdown_s > 0
    assert busy_rate > rate, phases.group(0)


def test_tampered_snapshot_is_refused_and_previous_used(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=1)
    events = synthetic_events(6000, seed=2)
    snaps = tmp_path / "snaps"
    common = ["--models", "popularity", "--eval-sample", "0.25", "--idle-exit-s", "3",
              "--snapshot-every-s", "0.2"]

    # Two runs so there are at least two versions at different offsets.
    produce_events(kafka_bootstrap, topic, events[:3000])
    first = TrainerProcess(_args(kafka_bootstrap, topic, snaps, *common), tmp_path / "a.log")
    assert first.wait(300) == 0
    produce_events(kafka_bootstrap, topic, events[3000:])
    second = TrainerProcess(_args(kafka_bootstrap, topic, snaps, *common), tmp_path / "b.log")
    assert second.wait(300) == 0

    store = SnapshotStore(snaps)
    newest = store.latest_version()
    assert newest is not None and store.read_manifest(newest)["events_total"] == 6000
    victim = store.path_of(newest) / "model-popularity.safetensors"
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))

    with pytest.raises(SnapshotError, match="checksum"):
        store.load(newest)
    fallback = store.load_latest_valid()
    assert fallback is not None and fallback.version < newest

    # The trainer refuses it too, restarts from the previous snapshot and re-learns
    # exactly the events after that snapshot's offsets.
    third = TrainerProcess(_args(kafka_bootstrap, topic, snaps, *common), tmp_path / "c.log")
    assert third.wait(300) == 0
    log = third.log_text()
    assert "checksum mismatch" in log and f"restored snapshot {fallback.version}" in log
    final = store.load()
    assert final.version > newest
    assert final.events_total == 6000
    pop = final.models["popularity"]
    assert set(pop.items.ids) == {ev.item_id for ev in events}
    assert set(pop.users.ids) == {ev.user_id for ev in events}
