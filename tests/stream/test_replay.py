"""Replay CSVs into a real broker: every row arrives, rejects are counted, ids repeat."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Any

import pytest

from stream.consumer import MiniBatchConsumer
from stream.events import ClickEvent
from stream.kafka import as_settings, end_offsets
from stream.replay import Replayer, replay_file
from stream.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def _consume(settings: KafkaSettings | str, topic: str, n: int, group: str
             ) -> list[ClickEvent]:
    events: list[ClickEvent] = []
    s = as_settings(settings).model_copy(update={"topic": topic})
    with MiniBatchConsumer(s, group, batch_size=2_000, max_wait_ms=500) as c:
        idle = 0
        while len(events) < n and idle < 40:
            b = c.next_batch()
            events.extend(b.events)
            idle = idle + 1 if b.empty else 0
    return events


def _consume_ids(settings: KafkaSettings | str, topic: str, n: int, group: str) -> list[str]:
    return [e.event_id for e in _consume(settings, topic, n, group)]


def test_custom_csv_gzip_with_bad_rows(kafka_settings, new_topic, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture):
    topic = new_topic(partitions=2)
    path = tmp_path / "clicks.csv.gz"
    rows = ["who,what,when,kind",
            "u1,i1,1700000030,click",
            "u2,i2,1700000010,view",
            "u1,i3,not-a-time,view",
            "u3,i1,1700000020,like",
            "u3,i2,2023-11-14T22:13:50Z,purchase"]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    kwargs: dict[str, Any] = dict(user_col="who", item_col="what", time_col="when",
                                  event_type_col="kind", progress=False)
    with caplog.at_level(logging.WARNING, logger="stream.replay"):
        first = replay_file(path, kafka_settings, topic, **kwargs)
    said = [r.getMessage() for r in caplog.records]
    # each invalid row is named with its line and reason, not only counted
    assert any(f"{path} line 4: bad_timestamp" in m and f"{topic}.dlq" in m for m in said)
    assert any("line 5: " in m for m in said), said
    assert first.sent == 3
    assert first.n_rejected == 2 and first.failed == 0
    assert sum(end_offsets(kafka_settings, f"{topic}.dlq").values()) == 2
    ids = _consume_ids(kafka_settings, topic, 3, "g-r1")
    assert len(ids) == 3
    # A re-replay yields the same ids, which downstream drops as duplicates.
    replay_file(path, kafka_settings, topic, **kwargs)
    again = _consume_ids(kafka_settings, topic, 6, "g-r2")
    assert sorted(again) == sorted(ids * 2)
    # --limit: the earliest valid events, whatever their place in the file
    limited = new_topic(partitions=1)
    part = replay_file(path, kafka_settings, limited, limit=2, **kwargs)
    assert part.sent == 2 and part.n_rejected == 2
    assert sum(end_offsets(kafka_settings, limited).values()) == 2  # no more than these
    got = _consume(kafka_settings, limited, 2, "g-r3")
    assert [(e.user_id, e.item_id) for e in got] == [("u2", "i2"), ("u1", "i1")]


def test_rate_and_speedup_are_exclusive(kafka_bootstrap):
    with pytest.raises(ValueError, match="at most one"):
        Replayer(kafka_bootstrap, "x", rate=10, speedup=2)


@pytest.mark.slow
@pytest.mark.data
def test_movielens_all_events_arrive(kafka_bootstrap, new_topic, shared_data: Path):
    ratings = shared_data / "movielens-small" / "ratings.csv"
    if not ratings.exists():
        pytest.skip(f"{ratings} is absent")
    topic = new_topic(partitions=4)
    result = replay_file(ratings, kafka_bootstrap, topic, preset="movielens", progress=False)
    assert (result.sent, result.n_rejected, result.failed) == (100_836, 0, 0)
    assert sum(end_offsets(kafka_bootstrap, topic).values()) == 100_836
    ids = _consume_ids(kafka_bootstrap, topic, 100_836, "g-ml")
    assert len(ids) == 100_836 and len(set(ids)) == 100_836



def test_summary_names_the_skipped_rows_reasons() -> None:
    from collections import Counter

    from stream.replay import ReplayResult

    r = ReplayResult(sent=3, skipped=Counter(cancelled=2, no_customer=5), elapsed_s=1.0)
    assert "skipped 7 (cancelled=2, no_customer=5)" in r.summary()
    assert not r.summary().startswith("interrupted")


def _replay_until_ctrl_c(bootstrap: str, topic: str, path: Path, after: int,
                         *args: str) -> tuple[int, str]:
    """``liverec replay`` on ``path``; SIGINT once ``after`` records are in ``topic``."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEREC_")}
    env["LIVEREC_KAFKA_BOOTSTRAP"] = bootstrap
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "liverec"), "replay", str(path), "--topic", topic,
         "--no-progress", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum(
                end_offsets(bootstrap, topic).values()) < after:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out


@pytest.mark.parametrize("args", [
    ("--rate", "200"),  # paced: one row at a time
    ("--max-speed",),  # chunks of 4096 through the batch send
    ("--max-speed", "--client", "kafka-python"),
])
def test_ctrl_c_stops_a_replay_with_an_exact_summary(kafka_bootstrap, new_topic,
                                                     tmp_path: Path, args) -> None:
    """Ctrl-C: sending stops between two sends, what was sent is delivered, and the
    summary's count is exactly what the topic holds (exit 130, no failure)."""
    import re

    topic = new_topic(partitions=1)
    n = 5_000 if "--rate" in args else 1_000_000
    path = tmp_path / "clicks.csv"
    path.write_text("user_id,item_id,timestamp\n" + "".join(
        f"u{i % 50},i{i % 30},{1_700_000_000 + i}\n" for i in range(n)))
    rc, out = _replay_until_ctrl_c(kafka_bootstrap, topic, path, 100 if n < 10_000 else 20_000,
                                   *args)
    assert rc == 130, out
    m = re.search(r"interrupted: sent (\d+) ", out)
    assert m is not None and "FAILED" not in out, out
    assert 100 <= int(m.group(1)) < n, out
    assert sum(end_offsets(kafka_bootstrap, topic).values()) == int(m.group(1)), out
