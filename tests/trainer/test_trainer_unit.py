"""The trainer's batch handling without Kafka: dedup, rejects, learning, failing models,
drift adaptation, snapshot + restore (consumed batches are built by hand)."""

from __future__ import annotations

import math
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from online_models import registry
from online_models.base import Batch
from stream.columns import decode_columns
from stream.events import ClickEvent, Rejected, encode
from stream.settings import KafkaSettings
from tests.trainer.helpers import synthetic_events
from trainer import DedupWindow, Trainer, TrainerResult, TrainerSettings
from trainer.source import BatchSource, PolledBatch

KAFKA = KafkaSettings(topic="clicks")


class ExplodingPopularity(registry.model_class("popularity")):  # type: ignore[misc]
    """Popularity that fails on every batch (the trainer must survive it)."""

    name = "test-exploding"

    def learn(self, batch: Batch) -> None:
        raise RuntimeError("boom")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrainerSettings:
    monkeypatch.setitem(registry.MODEL_PATHS, "test-exploding",
                        "tests.trainer.test_trainer_unit:ExplodingPopularity")
    return TrainerSettings(
        snapshots=tmp_path / "snaps", models="popularity,itemknn",
        metrics_port=-1, drift_adapt_events=300, eval_sample=1.0, eval_cpu_share=0,
    )


def _consumed(events: list[ClickEvent], start: int, rejected: int = 0) -> PolledBatch:
    """A polled batch as the source thread hands it over (rejects already dead-lettered)."""
    cols, rejects = decode_columns([encode(e) for e in events], now=events[-1].ts)
    assert not rejects
    rej = [(Rejected(b"x", "not_json", "bad"), "clicks", 0, start + len(events) + k)
           for k in range(rejected)]
    return PolledBatch(cols, rej, offsets={("clicks", 0): start + len(events) + rejected},
                       first_offsets={("clicks", 0): start},
                       records=len(events) + rejected)


def _sample(trainer: Trainer, name: str, labels: dict[str, str]) -> float:
    value = trainer.metrics.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def test_result_learning_time_leaves_out_the_join_and_the_shutdown() -> None:
    result = TrainerResult(10, 10, 0, 0, 3, seconds=12.5, first_batch_s=0.5, shutdown_s=2.0)
    assert result.learning_s == pytest.approx(10.0)
    # No batch came: nothing was learned, so no learning time either.
    idle = TrainerResult(0, 0, 0, 0, None, seconds=3.0, first_batch_s=None, shutdown_s=0.1)
    assert idle.learning_s == 0.0


def test_closing_line_gives_the_rate_while_busy_when_the_run_waited() -> None:
    from liverec.cmd_train import _rates

    waited = TrainerResult(1000, 1000, 0, 0, 1, 12.0, 1.0, 1.0, busy_s=0.5)
    assert _rates(waited) == (
        "learning 10.0 s (100 events/s; busy 5% of it: 2,000 events/s while busy)")
    # A run that never waited: the average is the speed, said once.
    flat_out = TrainerResult(1000, 1000, 0, 0, 1, 12.0, 1.0, 1.0, busy_s=9.9)
    assert _rates(flat_out) == "learning 10.0 s (100 events/s; busy 99% of it)"


@pytest.mark.parametrize(("source", "client", "kind"), [
    ("auto", "confluent", "process"), ("auto", "kafka-python", "thread"),
    ("thread", "confluent", "thread"), ("process", "confluent", "process"),
])
def test_source_auto_reads_in_a_process_on_librdkafka_only(
    tmp_path: Path, source: Any, client: Any, kind: str
) -> None:
    t = Trainer(TrainerSettings(snapshots=tmp_path, models="popularity", source=source),
                KafkaSettings(topic="clicks", client=client))
    assert t.source_kind == kind


def test_source_process_is_refused_with_kafka_python(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs client confluent"):
        Trainer(TrainerSettings(snapshots=tmp_path, models="popularity", source="process"),
                KafkaSettings(topic="clicks", client="kafka-python"))


def test_dedup_window_expires_by_event_time_and_count() -> None:
    d = DedupWindow(window_s=100, max_ids=3)
    assert d.add("a", 0.0) and not d.add("a", 50.0)
    assert d.add("b", 150.0)  # watermark 150: "a" (t=0) is out of the window
    assert "a" not in d and "b" in d
    for k in range(5):
        d.add(f"x{k}", 160.0 + k)
    assert len(d) == 3
    back = DedupWindow.from_arrays(d.to_arrays(), window_s=100, max_ids=3)
    assert list(back._ids.items()) == list(d._ids.items())


def test_handle_drops_duplicates_counts_rejects_and_learns(settings: TrainerSettings) -> None:
    events = synthetic_events(600, seed=5)
    t = Trainer(settings, KAFKA)
    t.handle(_consumed(events[:400], 0, rejected=2))
    # A redelivered overlap: 100 already learned, 200 new.
    t.handle(_consumed(events[300:600], 402))
    assert t.events_total == 600 and t.duplicates == 100 and t.rejected == 2
    assert _sample(t, "liverec_trainer_duplicates_dropped_total", {"topic": "clicks"}) == 100
    assert _sample(t, "liverec_trainer_events_rejected_total",
                   {"topic": "clicks", "reason": "not_json"}) == 2
    assert _sample(t, "liverec_trainer_evaluated_events_total", {"model": "itemknn"}) > 0
    assert t.models["popularity"].n_items == len({e.item_id for e in events})
    assert t.offsets == {("clicks", 0): 702}


def test_checkpoint_then_restore_resumes_exact_state(settings: TrainerSettings) -> None:
    events = synthetic_events(500, seed=6)
    t = Trainer(settings, KAFKA)
    t.handle(_consumed(events, 0))
    assert t.checkpoint("test", wait=True) is not None
    assert _sample(t, "liverec_trainer_snapshot_version", {}) == 1

    again = Trainer(settings, KAFKA)
    assert again.events_total == 500 and again.offsets == {("clicks", 0): 500}
    for name in ("popularity", "itemknn"):
        a, b = t.models[name].get_state(), again.models[name].get_state()
        for key in a.arrays:
            np.testing.assert_array_equal(a.arrays[key], b.arrays[key])
    # The restored dedup set refuses a redelivery of what the snapshot holds.
    again.handle(_consumed(events[:50], 0))
    assert again.events_total == 500 and again.duplicates == 50


def _revoke(t: Trainer, parts: set[tuple[str, int]]) -> dict[tuple[str, int], int] | None:
    """Run the consumer thread's revoke hook while this thread serves it as the learner."""
    out: list[dict[tuple[str, int], int] | None] = []
    hook = threading.Thread(target=lambda: out.append(t._on_revoke(parts)))
    t._learning = True
    hook.start()
    while hook.is_alive():
        t._serve_revoke()
        hook.join(0.01)
    return out[0]


def test_a_partition_coming_back_later_resumes_from_the_group_commit(
    settings: TrainerSettings,
) -> None:
    p0, p1 = ("clicks", 0), ("clicks", 1)
    t = Trainer(settings, KAFKA)
    t.handle(_consumed(synthetic_events(300, seed=8), 0))
    # An eager rebalance revokes everything and hands p0 straight back: it resumes
    # where this trainer left it (the offset the revoke checkpoint committed).
    assert _revoke(t, {p0}) == {p0: 300}
    assert t._on_assign({p0, p1}) == {p0: 300}
    # Revoked again and given to another trainer, which learns on; when p0 comes back
    # in a later rebalance, this trainer's 300 is stale: the group's commit decides.
    assert _revoke(t, {p0, p1}) == {p0: 300}
    assert t._on_assign({p1}) == {}
    assert t._on_assign({p0}) == {}


def test_a_revoke_right_after_a_restore_commits_the_snapshot_offsets(
    settings: TrainerSettings,
) -> None:
    # Killed after its snapshot was durable but before the commit: the restarted
    # trainer learns nothing before a rebalance moves p0 away. The revoke must still
    # hand over the snapshot's offset, or the next owner re-learns what it holds.
    p0 = ("clicks", 0)
    first = Trainer(settings, KAFKA)
    first.handle(_consumed(synthetic_events(300, seed=8), 0))
    assert first.checkpoint("periodic", wait=True) is not None
    first.checkpointer.close()
    again = Trainer(settings, KAFKA)
    assert again._on_assign({p0}) == {p0: 300}
    assert _revoke(again, {p0}) == {p0: 300}


def test_a_partition_assigned_only_after_the_start_follows_the_group_commit(
    settings: TrainerSettings,
) -> None:
    # Restarted while another member holds p1: the snapshot's offset for p1 is stale
    # by the time p1 comes here (that member learned on), as for a revoked partition.
    p0, p1 = ("clicks", 0), ("clicks", 1)
    first = Trainer(settings, KAFKA)
    first.handle(_consumed(synthetic_events(300, seed=8), 0))
    on_p1 = _consumed(synthetic_events(100, seed=9), 0)
    first.handle(PolledBatch(on_p1.columns, offsets={p1: 100}, first_offsets={p1: 0},
                             records=100))
    assert first.checkpoint("periodic", wait=True) is not None
    first.checkpointer.close()
    again = Trainer(settings, KAFKA)
    assert again.offsets == {p0: 300, p1: 100}
    assert again._on_assign({p0}) == {p0: 300}
    assert again._on_assign({p1}) == {}


def test_lag_of_a_revoked_partition_goes_and_dlq_failures_survive_a_new_consumer(
    settings: TrainerSettings,
) -> None:
    t = Trainer(settings, KAFKA)
    p0, p3 = ("clicks", 0), ("clicks", 3)
    src = BatchSource(lambda **kw: None, batch_size=10, max_wait_s=0.1, prefetch=2,
                      limits=KAFKA.limits, weights=KAFKA.event_weights,
                      on_assign=t._on_assign, on_revoke=lambda parts: None)
    t.source = src
    t._on_assign({p0, p3})
    src.assigned, src.lag = frozenset({p0, p3}), {p0: 10, p3: 5000}
    src.consumer = types.SimpleNamespace(  # type: ignore[assignment]
        dlq_failures_total=0, dead_letter=lambda fresh: None)
    rejects = [(Rejected(b"x", "not_json", "bad"), "clicks", 0, k) for k in range(5)]

    def failing(fresh: list[Any]) -> None:
        src.consumer.dlq_failures_total += len(fresh)  # type: ignore[union-attr]

    src.consumer.dead_letter = failing  # type: ignore[union-attr]
    src._dead_letter(rejects)
    t._update_gauges()
    lag = "liverec_trainer_consumer_lag_messages"
    assert _sample(t, lag, {"topic": "clicks", "partition": "3"}) == 5000
    # p3 moves to another member (the source's lag lags a second behind), and the
    # source thread rebuilds its consumer, whose own count starts again at 0.
    src.assigned = frozenset({p0})
    src.consumer = types.SimpleNamespace(  # type: ignore[assignment]
        dlq_failures_total=0, dead_letter=failing)
    src._dead_letter([(Rejected(b"x", "not_json", "bad"), "clicks", 0, k)
                      for k in range(5, 8)])
    t._update_gauges()
    assert t.metrics.registry.get_sample_value(
        lag, {"topic": "clicks", "partition": "3"}) is None
    assert _sample(t, lag, {"topic": "clicks", "partition": "0"}) == 10
    assert _sample(t, "liverec_trainer_dlq_failures_total", {}) == 8


def test_a_failing_model_does_not_stop_the_others(settings: TrainerSettings) -> None:
    s = settings.model_copy(update={"models": "popularity,test-exploding"})
    t = Trainer(s, KAFKA)
    t.handle(_consumed(synthetic_events(200, seed=7), 0))
    assert t.events_total == 200
    assert t.models["popularity"].n_items > 0
    assert _sample(t, "liverec_trainer_learn_errors_total", {"model": "test-exploding"}) == 1
    assert _sample(t, "liverec_trainer_learn_errors_total", {"model": "popularity"}) == 0


def test_drift_adaptation_overrides_then_restores(settings: TrainerSettings) -> None:
    t = Trainer(settings, KAFKA)
    pop: Any = t.models["popularity"]
    original = pop.get_params()["half_life_seconds"]
    assert t.adaptation.start("popularity", pop, t.events_total)
    t.metrics.drift_adapting.labels(model="popularity").set(1)
    assert pop.get_params()["half_life_seconds"] == pytest.approx(
        original * settings.drift_half_life_factor)
    # Mid-adaptation snapshot keeps the originals so a restart can restore them.
    t.handle(_consumed(synthetic_events(100, seed=8), 0))
    t.checkpoint("test", wait=True)
    restarted = Trainer(settings, KAFKA)
    assert restarted.adaptation.active["popularity"]["originals"]["half_life_seconds"] == original
    assert _sample(restarted, "liverec_trainer_drift_adaptation_active",
                   {"model": "popularity"}) == 1
    t.handle(_consumed(synthetic_events(300, seed=9), 100))
    assert pop.get_params()["half_life_seconds"] == original
    assert _sample(t, "liverec_trainer_drift_adaptation_active", {"model": "popularity"}) == 0


def _measured(t: Trainer) -> None:
    """The governor as after a first second with one core busy and no bookkeeping
    (tests that call it on the real clocks, well within a second)."""
    t.evaluation._bk_share, t.evaluation._cpu_rate = 0.0, 1.0


def test_evaluation_governor_first_second_counts_what_it_measured_so_far(
    settings: TrainerSettings,
) -> None:
    """The first call has measured nothing: the floor. Until a whole second has been
    measured, the budget is what the share leaves of the time so far after the
    bookkeeping and the scoring already spent: cheap evaluation opens it at once,
    bookkeeping that takes the share keeps it at the floor."""
    update = {"eval_cpu_share": 0.1, "eval_min_per_minute": 600.0}
    t = Trainer(settings.model_copy(update=update), KAFKA)
    t.evaluation.govern(scored=32, seconds=0.0032, bookkeeping_s=0.001, now=0.0)
    assert t.evaluator.sample.max_per_s == pytest.approx(10.0)
    # 0.5 s in, one core: bookkeeping 0.002 s and scoring 0.0064 s spent of 0.05 s.
    t.evaluation.govern(scored=32, seconds=0.0032, bookkeeping_s=0.001, now=0.5)
    assert t.evaluator.sample.max_per_s == pytest.approx((0.1 - 0.0084 / 0.5) / 1e-4)
    costly = Trainer(settings.model_copy(update={
        **update, "snapshots": settings.snapshots / "b"}), KAFKA)
    costly.evaluation.govern(scored=32, seconds=0.0032, bookkeeping_s=0.01, now=0.0)
    costly.evaluation.govern(scored=32, seconds=0.0032, bookkeeping_s=0.06, now=0.5)
    assert costly.evaluator.sample.max_per_s == pytest.approx(10.0)  # 14% bookkeeping
    unfloored = Trainer(settings.model_copy(update={
        "eval_cpu_share": 0.1, "eval_min_per_minute": 0.0,
        "snapshots": settings.snapshots / "c"}), KAFKA)
    assert unfloored.evaluator.sample.max_per_s == pytest.approx(1.0)  # a trickle


def test_evaluation_governor_keeps_the_cpu_share_but_not_below_the_floor(
    settings: TrainerSettings,
) -> None:
    t = Trainer(settings.model_copy(update={"eval_cpu_share": 0.1,
                                            "eval_min_per_minute": 600.0}), KAFKA)
    assert t.evaluator.sample.max_per_s == pytest.approx(10.0)  # nothing measured: the floor
    _measured(t)
    t.evaluation.govern(scored=100, seconds=0.01)  # 0.1 ms per scored event
    assert t.evaluator.sample.max_per_s == pytest.approx(0.1 / 1e-4)
    for _ in range(50):  # scoring became expensive: 100 ms per event
        t.evaluation.govern(scored=10, seconds=1.0)
    assert t.evaluator.sample.max_per_s == pytest.approx(10.0, rel=1e-3)  # the floor
    fixed = Trainer(settings.model_copy(update={"eval_budget_per_s": 5.0,
                                                "snapshots": settings.snapshots / "b"}), KAFKA)
    fixed.evaluation.govern(scored=10, seconds=1.0)
    assert fixed.evaluator.sample.max_per_s == 5.0  # a fixed budget is left alone


def test_evaluation_governor_floor_yields_to_the_share_during_a_backlog(
    settings: TrainerSettings,
) -> None:
    """At full speed (the learner always finds a batch waiting) the CPU share bounds
    evaluation: the per-minute floor gives way, down to a trickle that keeps the gauges
    moving; once the backlog is gone the floor is back."""
    from trainer.evaluation import BACKLOG_MIN_PER_S

    t = Trainer(settings.model_copy(update={"eval_cpu_share": 0.1,
                                            "eval_min_per_minute": 1000.0}), KAFKA)
    _measured(t)
    t.evaluation.govern(scored=10, seconds=0.05)  # 5 ms per event: the share affords 20/s
    assert t.evaluator.sample.max_per_s == pytest.approx(20.0)
    t.evaluation.govern(scored=10, seconds=0.5)  # 50 ms per event: the share affords ~2/s
    assert t.evaluator.sample.max_per_s == pytest.approx(1000.0 / 60)  # the floor
    t.evaluation.backlog = True
    t.evaluation.govern(scored=10, seconds=0.5)
    assert BACKLOG_MIN_PER_S < t.evaluator.sample.max_per_s < 1000.0 / 60  # the share
    for _ in range(50):  # 1 s per event: the share affords 0.1/s
        t.evaluation.govern(scored=10, seconds=10.0)
    assert t.evaluator.sample.max_per_s == pytest.approx(BACKLOG_MIN_PER_S)  # the trickle
    t.evaluation.backlog = False
    t.evaluation.govern(scored=10, seconds=10.0)
    assert t.evaluator.sample.max_per_s == pytest.approx(1000.0 / 60)


def test_evaluation_governor_takes_its_share_of_the_process_cpu(
    settings: TrainerSettings,
) -> None:
    """The share is of the trainer process's CPU time: with half a core busy, 10% of it
    is 5% of wall time; with 1.5 cores, 15%."""
    t = Trainer(settings.model_copy(update={"eval_cpu_share": 0.1,
                                            "eval_min_per_minute": 0.0}), KAFKA)
    t.evaluation.govern(scored=100, seconds=0.01, now=0.0, cpu_now=0.0)  # 0.1 ms per event
    assert t.evaluator.sample.max_per_s == pytest.approx(1e-3)  # no floor, not measured
    t.evaluation.govern(scored=100, seconds=0.01, now=1.0, cpu_now=0.5)
    assert t.evaluator.sample.max_per_s == pytest.approx(500.0)
    for k in range(2, 40):
        t.evaluation.govern(scored=100, seconds=0.01, now=float(k), cpu_now=0.5 + 1.5 * (k - 1))
    assert t.evaluator.sample.max_per_s == pytest.approx(1500.0, rel=1e-3)


def test_evaluation_governor_pays_back_an_overrun(
    settings: TrainerSettings,
) -> None:
    """Scoring that overran the share in a window (the cost was learned late) lowers the
    next budgets until the time is paid back; an overrun counts at most a repayment
    period's worth."""
    t = Trainer(settings.model_copy(update={"eval_cpu_share": 0.1,
                                            "eval_min_per_minute": 0.0}), KAFKA)
    t.evaluation.govern(scored=100, seconds=0.01, now=0.0)  # 0.1 ms per event
    t.evaluation.govern(scored=100, seconds=0.01, now=1.0)  # within the share
    assert t.evaluator.sample.max_per_s == pytest.approx(1000.0)
    # Same cost per event, but 0.3 s of scoring in that second: 0.2 s beyond the share,
    # paid back over 5 s, leaves 0.1 - 0.2 / 5 = 6% for scoring.
    t.evaluation.govern(scored=2900, seconds=0.29, now=1.5)
    t.evaluation.govern(scored=100, seconds=0.01, now=2.0)
    overrun = t.evaluator.sample.max_per_s
    assert overrun == pytest.approx(600.0)
    for k in range(3, 30):  # within the share again: the debt is paid, the budget recovers
        t.evaluation.govern(scored=1, seconds=0.0001, now=float(k))
    assert t.evaluator.sample.max_per_s > overrun
    for k in range(30, 60):  # scoring alone takes 90% of a core: the debt stays bounded
        t.evaluation.govern(scored=100, seconds=0.9, now=float(k))
    assert t.evaluation._debt <= 0.1 * 5.0 + 1e-9


def test_evaluation_governor_weighs_every_scored_event_alike(
    settings: TrainerSettings,
) -> None:
    """Single events scored at 1 ms each between 32-event groups at 4 ms each (larger
    matrices): the cost per scored event is what was spent over what was scored, ~3.9 ms,
    not the mean of the two per-call figures (2.5 ms, which let evaluation overrun)."""
    t = Trainer(settings.model_copy(update={"eval_cpu_share": 0.1,
                                            "eval_min_per_minute": 0.0}), KAFKA)
    _measured(t)
    for _ in range(40):
        t.evaluation.govern(scored=1, seconds=0.001)
        t.evaluation.govern(scored=32, seconds=0.128)
    spent_per_event = (0.001 + 0.128) / 33
    assert t.evaluator.sample.max_per_s == pytest.approx(0.1 / spent_per_event, rel=0.15)


def test_evaluation_governor_counts_the_bookkeeping_in_the_share(
    settings: TrainerSettings,
) -> None:
    t = Trainer(settings.model_copy(update={"eval_cpu_share": 0.1,
                                            "eval_min_per_minute": 60.0}), KAFKA)
    t.evaluation.govern(scored=100, seconds=0.01, bookkeeping_s=0.0, now=0.0)  # 0.1 ms per event
    assert t.evaluator.sample.max_per_s == pytest.approx(1.0)  # the floor until measured
    # Bookkeeping of every event takes 4% of wall time, seen over a second: 6% is left.
    t.evaluation.govern(scored=100, seconds=0.01, bookkeeping_s=0.04, now=1.0)
    assert t.evaluator.sample.max_per_s == pytest.approx(600.0)
    for k in range(2, 30):  # bookkeeping alone takes 20%: nothing left but the floor
        t.evaluation.govern(scored=100, seconds=0.01, bookkeeping_s=0.2, now=float(k))
    assert t.evaluator.sample.max_per_s == pytest.approx(1.0)
    before = t.evaluation._bk_share
    t.evaluation.govern(scored=0, seconds=0.0, bookkeeping_s=0.5, now=29.5)  # within the window
    assert t.evaluation._bk_share == before  # shares are taken over at least a second


def test_snapshots_space_out_when_copying_the_state_takes_long(
        settings: TrainerSettings) -> None:
    t = Trainer(settings.model_copy(update={"snapshot_every_s": 1.0}), KAFKA)
    t.handle(_consumed(synthetic_events(300, seed=2), 0))
    assert t.checkpoint("test", wait=True) is not None
    assert t._capture_s > 0  # measured on the copy
    t._capture_s = 0.01  # a cheap copy: every snapshot_every_s
    assert t._snapshot_gap() == 1.0
    t._capture_s = 0.5  # copying takes 0.5 s: at most 2.5% of the time -> every 20 s
    assert t._snapshot_gap() == pytest.approx(20.0)
    t._idle_share = 0.6  # the learner waited 60% of the last second for records:
    assert t._snapshot_gap() == pytest.approx(0.5 / 0.3)  # copies may take half of that
    t._idle_share = 0.02  # a backlog: the share alone bounds them
    assert t._snapshot_gap() == pytest.approx(20.0)
    off = Trainer(settings.model_copy(update={"snapshot_max_share": 0.0}), KAFKA)
    off._capture_s = 0.5
    assert off._snapshot_gap() == settings.snapshot_every_s


def test_snapshots_space_out_when_writing_them_takes_long(settings: TrainerSettings) -> None:
    t = Trainer(settings.model_copy(update={"snapshot_every_s": 1.0}), KAFKA)
    t.handle(_consumed(synthetic_events(300, seed=2), 0))
    t.checkpoint("test")  # written in the background
    t._finish_checkpoint(wait=True)
    assert t.checkpointer.last_write_s > 0  # measured on the write
    t._capture_s = 0.0
    t.checkpointer.last_write_s = 0.1  # a quick write: every snapshot_every_s
    assert t._snapshot_gap() == 1.0
    t.checkpointer.last_write_s = 1.0  # writing takes 1 s: at most 25% of the time
    assert t._snapshot_gap() == pytest.approx(4.0)
    off = Trainer(settings.model_copy(update={"snapshot_every_s": 1.0,
                                              "snapshot_write_share": 0.0}), KAFKA)
    off.checkpointer.last_write_s = 1.0
    assert off._snapshot_gap() == 1.0


def test_multi_step_models_export_their_optimiser_steps(tmp_path: Path) -> None:
    settings = TrainerSettings(
        snapshots=tmp_path / "snaps", models="popularity,seqnn", metrics_port=-1,
        eval_cpu_share=0, model_params={"seqnn": {"warmup_examples": 0}},
    )
    t = Trainer(settings, KAFKA)
    t.handle(_consumed(synthetic_events(300, seed=4), 0))
    steps = _sample(t, "liverec_trainer_model_train_steps_total", {"model": "seqnn"})
    assert steps == t.models["seqnn"].steps_total > 0  # type: ignore[attr-defined]
    # Single-step models export nothing.
    assert t.metrics.registry.get_sample_value(
        "liverec_trainer_model_train_steps_total", {"model": "popularity"}) is None


def test_users_beyond_history_max_users_are_forgotten_everywhere(
    settings: TrainerSettings,
) -> None:
    """The least recently active users beyond the bound leave the history, the
    evaluator's counts and the per-user state of the models that can forget, while the
    item side learns every event as before."""
    mix = "popularity,itemknn,sequence,bpr"
    bounded = Trainer(settings.model_copy(update={
        "models": mix, "history_max_users": 50, "snapshots": settings.snapshots / "b"}), KAFKA)
    free = Trainer(settings.model_copy(update={
        "models": mix, "history_max_users": None, "snapshots": settings.snapshots / "f"}),
        KAFKA)
    events = synthetic_events(3000, seed=11, n_users=400)
    for start in range(0, 3000, 250):
        for t in (bounded, free):
            t.handle(_consumed(events[start:start + 250], start))

    held = set(bounded.history._items)
    assert len(held) == 50 and len(free.history) > 200
    assert set(bounded.evaluator._user_count) <= held
    for name in ("popularity", "itemknn", "sequence", "bpr"):
        live = {u for u in bounded.models[name].users.ids if u is not None}
        assert live <= held, name
    seen = len({e.user_id for e in events})
    forgotten = _sample(bounded, "liverec_trainer_users_forgotten_total", {})
    assert forgotten >= seen - 50
    bounded._update_gauges()
    assert _sample(bounded, "liverec_trainer_users_tracked", {}) == 50
    # Forgetting users changes nothing on the item side of a count model ...
    a, b = bounded.models["popularity"], free.models["popularity"]
    assert a.items.ids == b.items.ids
    np.testing.assert_allclose(a.get_state().arrays["mass"], b.get_state().arrays["mass"])
    # ... and every event was learned, returning users included, without an error.
    assert bounded.events_total == free.events_total == 3000
    assert _sample(bounded, "liverec_trainer_loop_errors_total", {"stage": "process"}) == 0

    # The bound holds after a restore, which goes on forgetting.
    assert bounded.checkpoint("test", wait=True) is not None
    again = Trainer(bounded.settings, KAFKA)
    assert list(again.history._items) == list(bounded.history._items)
    more = synthetic_events(500, seed=12, n_users=400)
    again.handle(_consumed(more, 3000))
    assert len(again.history) == 50
    assert {u for u in again.models["itemknn"].users.ids if u is not None} <= \
        set(again.history._items)
    # A lower bound than the snapshot's: the surplus users go at once, and their model
    # state with the first batch.
    lower = Trainer(bounded.settings.model_copy(update={"history_max_users": 20}), KAFKA)
    assert len(lower.history) == 20
    lower.handle(_consumed(synthetic_events(100, seed=13, n_users=400), 3500))
    assert len(lower.history) == 20
    assert {u for u in lower.models["itemknn"].users.ids if u is not None} <= \
        set(lower.history._items)


@pytest.mark.parametrize(("every_s", "compared"), [(0.0, True), (3600.0, False)])
def test_embedding_drift_is_compared_at_most_every_interval(
        settings: TrainerSettings, every_s: float, compared: bool) -> None:
    """The factor models' item embeddings are compared at a durable snapshot when the
    last comparison is ``embedding_drift_every_s`` old; the first one only keeps them."""
    t = Trainer(settings.model_copy(update={"models": "popularity,bpr",
                                            "embedding_drift_every_s": every_s}), KAFKA)
    name = "liverec_trainer_embedding_drift_cosine_distance"
    t.handle(_consumed(synthetic_events(300, seed=3), 0))
    assert t.checkpoint("test", wait=True) is not None
    assert _sample(t, name, {"model": "bpr"}) == 0.0  # (the series exists from the start)
    t.handle(_consumed(synthetic_events(300, seed=4), 300))
    assert t.checkpoint("test", wait=True) is not None
    drift = _sample(t, name, {"model": "bpr"})
    if compared:
        assert 0.0 < drift < 2.0  # learning moved the vectors
    else:
        assert drift == 0.0


def test_a_commit_interval_beyond_half_the_transaction_timeout_is_refused() -> None:
    """A scale-out transaction open that long could be aborted by the broker under load."""
    with pytest.raises(ValueError, match="half of transaction_timeout_ms"):
        TrainerSettings(commit_every_s=6.0)
    ok = TrainerSettings(commit_every_s=6.0, transaction_timeout_ms=20_000)
    assert ok.commit_every_s == 6.0


def test_status_line_says_when_no_partitions_are_held(tmp_path: Path) -> None:
    """A bootstrap nobody answers on must not look like a quiet topic."""
    kafka = KafkaSettings(bootstrap="127.0.0.1:9", topic="clicks")
    t = Trainer(TrainerSettings(snapshots=tmp_path, models="popularity", group="g1"), kafka)
    assert t.status_line().startswith(
        "partitions=0 (waiting to join group g1 at 127.0.0.1:9) events learned=0 ")
    two = frozenset({("clicks", 0), ("clicks", 1)})
    t.source = types.SimpleNamespace(assigned=two, kafka_contact_age=lambda: 2.0)
    assert t.status_line().startswith("partitions=2 events learned=0 ")
    # Kafka silent for longer than 30 s: said, partitions or not
    t.source = types.SimpleNamespace(assigned=two, kafka_contact_age=lambda: 95.0)
    assert t.status_line().startswith(
        "partitions=2 (no answer from Kafka at 127.0.0.1:9 for 95 s) events learned=0 ")
    # no partitions because the topic is not there (a typo): said instead of the group
    t.source = types.SimpleNamespace(assigned=frozenset(), kafka_contact_age=lambda: 1.0,
                                     topic_missing=True)
    assert t.status_line().startswith(
        "partitions=0 (topic clicks does not exist at 127.0.0.1:9, or this principal may "
        "not read it: waiting for it) events learned=0 ")
    t.source = types.SimpleNamespace(assigned=frozenset(), kafka_contact_age=lambda: 95.0,
                                     topic_missing=False)
    t.stop()  # the shutdown gave them back: nothing to wait for is said
    assert t.status_line().startswith("partitions=0 events learned=0 ")


def test_the_status_line_says_how_many_evaluated_events_its_hit_rates_rest_on(
    settings: TrainerSettings,
) -> None:
    t = Trainer(settings.model_copy(update={"eval_sample": 1.0, "eval_budget_per_s": 1e9}),
                KAFKA)
    assert t.evaluation.hr_line().startswith(f"hr@{settings.k} over 0 [")
    t.handle(_consumed(synthetic_events(600, seed=3), 0))
    line = t.evaluation.hr_line()
    n = max(int(t.evaluator.rolling(m)["n"]) for m in t.models)
    assert n > 0 and line.startswith(f"hr@{settings.k} over {n} [popularity=0.")
    t.capped.update(repeat=3, burst=2)  # what the flood guard held back, as it counts it
    assert " rejected=0 capped=5 rate=" in t.status_line()


def test_two_settings_of_one_model_train_side_by_side_and_restore(
    settings: TrainerSettings,
) -> None:
    s = settings.model_copy(update={"models": "popularity,itemknn,itemknn@short",
                                    "model_params": {"itemknn@short": {"window": 3}}})
    t = Trainer(s, KAFKA)
    assert type(t.models["itemknn@short"]) is type(t.models["itemknn"])
    assert t.models["itemknn@short"].get_params()["window"] == 3
    assert t.models["itemknn"].get_params()["window"] != 3
    t.handle(_consumed(synthetic_events(400, seed=5), 0))
    assert " itemknn@short=0." in t.evaluation.hr_line()
    t.checkpoint("test", wait=True)
    restarted = Trainer(s, KAFKA)
    assert restarted.models["itemknn@short"].get_params()["window"] == 3
    assert restarted.events_total == 400
    with pytest.raises(ValueError, match="named twice: itemknn"):
        TrainerSettings(snapshots=settings.snapshots, models="itemknn,itemknn").model_names()


def test_data_drift_reads_nan_until_it_is_measured_and_the_dashboard_skips_it() -> None:
    """PSI and JS were exported as 0 until two windows had filled (10,000 events by
    default): a flat 'no drift' line on the dashboard where nothing was measured yet."""
    from prometheus_client import generate_latest

    from serving.dashboard import trainer_figures
    from trainer.metrics import TrainerMetrics

    m = TrainerMetrics(["popularity"], "clicks")
    for name in ("liverec_trainer_data_drift_psi", "liverec_trainer_data_drift_js_divergence"):
        v = m.registry.get_sample_value(name, {"distribution": "item_popularity"})
        assert v is not None and math.isnan(v), name
    text = generate_latest(m.registry).decode()
    assert trainer_figures(text, None)["psi"] == {}
    m.data_drift_psi.labels(distribution="item_popularity").set(0.31)
    assert trainer_figures(generate_latest(m.registry).decode(), None)["psi"] == {
        "item_popularity": 0.31}


def test_the_status_line_rate_covers_the_time_since_the_last_line(tmp_path: Path) -> None:
    """It showed the gauge's last 1-second window: 'rate=0/s' in the line after a burst
    of 5,000 events that had ended a second before (new-user review)."""
    import re
    import time

    t = Trainer(TrainerSettings(snapshots=tmp_path, models="popularity", group="g1"),
                KafkaSettings(bootstrap="127.0.0.1:9", topic="clicks"))
    t._line_mark = (time.monotonic() - 2.0, 0)
    t.events_learned = 5_000  # learned since that line; none in the last second
    m = re.search(r" rate=(\d+)/s ", t.status_line())
    assert m is not None and 2_300 <= int(m.group(1)) <= 2_500, m
    m = re.search(r" rate=(\d+)/s ", t.status_line())  # nothing learned since
    assert m is not None and int(m.group(1)) == 0
