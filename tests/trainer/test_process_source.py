"""The trainer's ``--source process`` against a real broker: a reader process that
dies is replaced (ever later while they keep dying), and the stream goes on with
nothing lost or learned twice."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from stream.replay import produce_events
from tests.trainer.helpers import TrainerProcess, scrape, synthetic_events, wait_for

pytestmark = pytest.mark.kafka

LEARNED = ("liverec_trainer_events_learned_since_start", ())


def _process_trainer(kafka_bootstrap: str, topic: str, tmp_path: Path) -> TrainerProcess:
    """``liverec train --source process`` (popularity only) on ``topic``."""
    return TrainerProcess(
        ["--bootstrap", kafka_bootstrap, "--topic", topic, "--group", f"g-{topic}",
         "--snapshots", str(tmp_path / "snaps"), "--metrics-port", "0",
         "--models", "popularity", "--source", "process", "--max-seconds", "300",
         "--status-every-s", "1"],
        tmp_path / "train.log")


def _readers(proc: TrainerProcess) -> list[str]:
    """The pids of the reader processes the trainer started, in order."""
    return re.findall(r"child process \(pid (\d+)\)", proc.log_text())


def test_a_killed_reader_process_is_replaced_and_nothing_is_lost(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    events = synthetic_events(6000, seed=11)
    produce_events(kafka_bootstrap, topic, events[:3000])
    proc = _process_trainer(kafka_bootstrap, topic, tmp_path)
    try:
        port = proc.metrics_port()
        wait_for(lambda: scrape(port).get(LEARNED) == 3000, 120, "the first half learned")

        assert len(_readers(proc)) == 1, proc.log_text()[-2000:]
        os.kill(int(_readers(proc)[0]), signal.SIGKILL)
        wait_for(lambda: len(_readers(proc)) == 2, 60, "a new reader process")
        # The new one dies too before it read anything: the next waits twice as long.
        os.kill(int(_readers(proc)[1]), signal.SIGKILL)
        wait_for(lambda: len(_readers(proc)) == 3, 60, "a third reader process")
        delays = re.findall(r"starting another reader process in ([\d.]+) s",
                            proc.log_text())
        assert delays == ["0.5", "1.0"], proc.log_text()[-2000:]
        produce_events(kafka_bootstrap, topic, events[3000:])
        samples = wait_for(lambda: (s := scrape(port)).get(LEARNED) == 6000 and s, 120,
                           "the second half learned")
        dropped = ("liverec_trainer_duplicates_dropped_total", (("topic", topic),))
        assert samples.get(dropped, 0) == 0  # nothing read twice
        # The restarts are counted where an operator looks for a failing consumer
        # (exported with the gauges, every --status-every-s).
        errors = ("liverec_trainer_loop_errors_total", (("stage", "consume"),))
        wait_for(lambda: scrape(port).get(errors) == 2, 30, "the restarts counted")
        assert proc.terminate() == 0
    finally:
        if proc.proc.poll() is None:
            proc.kill()


def test_a_hung_reader_process_is_replaced_and_nothing_is_lost(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    # A stopped reader (SIGSTOP: what a deadlock looks like from outside) sends no
    # heartbeat: after ChildReader.silence_s (15 s) the trainer kills it and starts
    # another, which reads on from the last accepted batch.
    topic = new_topic(partitions=2)
    events = synthetic_events(4000, seed=12)
    produce_events(kafka_bootstrap, topic, events[:2000])
    proc = _process_trainer(kafka_bootstrap, topic, tmp_path)
    try:
        port = proc.metrics_port()
        wait_for(lambda: scrape(port).get(LEARNED) == 2000, 120, "the first half learned")
        first = _readers(proc)
        assert len(first) == 1, proc.log_text()[-2000:]
        os.kill(int(first[0]), signal.SIGSTOP)
        produce_events(kafka_bootstrap, topic, events[2000:])
        wait_for(lambda: "sent nothing for" in proc.log_text(), 60, "the hung reader noticed")
        samples = wait_for(lambda: (s := scrape(port)).get(LEARNED) == 4000 and s, 120,
                           "the second half learned")
        dropped = ("liverec_trainer_duplicates_dropped_total", (("topic", topic),))
        assert samples.get(dropped, 0) == 0  # nothing read twice
        assert proc.terminate() == 0
    finally:
        if proc.proc.poll() is None:
            proc.kill()
        for pid in _readers(proc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
