"""Crash safety: SIGKILL the trainer at three random moments while 200k events stream in.

Afterwards ``events_total`` equals the number produced and the popularity and item-kNN
state equals a crash-free run's exactly: events after a snapshot are re-read and
re-learned, events before it are never learned twice. Time decay and item-kNN's position
decay are off, so the state is exact counts (sums of small integer weights, exact in
float64 whatever the order of additions); with them on, mini-batch boundaries (which
depend on fetch timing, crash or no crash) reorder float additions and two crash-free
runs already differ in the last place.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import orjson
import pytest

from online_models import registry
from online_models.base import Batch, OnlineModel
from online_models.snapshot import SnapshotStore
from stream.events import ClickEvent
from stream.replay import produce_events
from tests.trainer.helpers import TrainerProcess, synthetic_events, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS = 200_000
MODEL_PARAMS = {
    "popularity": {"half_life_seconds": None},
    "itemknn": {"half_life_seconds": None, "position_decay": 1.0},
}


def _reference(events: list[ClickEvent]) -> dict[str, OnlineModel]:
    """Crash-free state: fresh models fed every event once, in odd-sized batches."""
    models = {n: registry.create(n, **p) for n, p in MODEL_PARAMS.items()}
    batch = Batch.from_columns(
        [e.user_id for e in events],
        [e.item_id for e in events],
        [e.weight for e in events],
        [e.ts for e in events],
    )
    for chunk in batch.chunks(977):
        for m in models.values():
            m.learn(chunk)
    return models


def _assigned(proc: TrainerProcess) -> bool:
    return "trainer.source: assigned [(" in proc.log_text()


@pytest.mark.parametrize("source", ["thread", "process"])
def test_sigkill_three_times_then_state_equals_crash_free_run(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, source: str
) -> None:
    topic = new_topic(partitions=1)  # one partition: a fixed order to compare against
    events = synthetic_events(N_EVENTS, seed=3)
    snaps = tmp_path / "snaps"
    args = [
        "--bootstrap",
        kafka_bootstrap,
        "--topic",
        topic,
        "--group",
        f"g-{topic}",
        "--snapshots",
        str(snaps),
        "--models",
        "popularity,itemknn",
        "--model-params",
        orjson.dumps(MODEL_PARAMS).decode(),
        "--no-drift-adapt",
        "--eval-sample",
        "0.05",
        "--snapshot-every-s",
        "0.5",
        "--metrics-port",
        "-1",
        "--status-every-s",
        "2",
        "--session-timeout-ms",
        "6000",
        "--source",
        source,
    ]

    # The last chunk waits for the three kills: however fast the trainer learns, every
    # kill lands before the stream's end (it once learned everything before the third).
    kills_done = threading.Event()

    def stream_in() -> None:
        for start in range(0, N_EVENTS, 20_000):
            if start + 20_000 >= N_EVENTS:
                kills_done.wait(300)
            produce_events(kafka_bootstrap, topic, events[start : start + 20_000])
            time.sleep(1.0)

    producer = threading.Thread(target=stream_in, daemon=True)
    producer.start()
    rng = random.Random(42)
    store = SnapshotStore(snaps)
    totals_at_kill = []
    for n in range(3):
        proc = TrainerProcess(args, tmp_path / f"run{n}.log")
        # Random moments while it learns (start-up alone can take seconds on 2 cores).
        wait_for(partial(_assigned, proc), 120, "partition assignment")
        time.sleep(rng.uniform(0.5, 6.0))
        proc.kill()
        assert proc.proc.returncode == -9
        latest = store.load_latest_valid()
        totals_at_kill.append(latest.events_total if latest else 0)
    kills_done.set()
    producer.join(300)
    assert not producer.is_alive()

    final_proc = TrainerProcess(
        [*args, "--until-events-total", str(N_EVENTS), "--max-seconds", "600"],
        tmp_path / "final.log",
    )
    assert final_proc.wait(700) == 0, final_proc.log_text()[-3000:]
    # The kills landed mid-stream (else this test would prove nothing).
    assert all(t < N_EVENTS for t in totals_at_kill), totals_at_kill
    assert totals_at_kill[-1] > 0, totals_at_kill

    snap = store.load()
    assert snap.events_total == N_EVENTS
    assert snap.offsets == {topic: {0: N_EVENTS}}
    ref = _reference(events)
    for name in ("popularity", "itemknn"):
        got, want = snap.models[name].get_state(), ref[name].get_state()
        assert set(got.arrays) == set(want.arrays), name
        for key in want.arrays:
            np.testing.assert_array_equal(
                got.arrays[key], want.arrays[key], err_msg=f"{name}.{key}"
            )
        assert got.meta == want.meta, name
    # No event learned twice: the popularity mass is exactly the sum of the weights.
    mass = snap.models["popularity"].get_state().arrays["mass"]
    assert float(mass.sum()) == pytest.approx(sum(e.weight for e in events), rel=0, abs=1e-6)
