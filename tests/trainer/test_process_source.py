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


def test_a_killed_reader_process_is_replaced_and_nothing_is_lost(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    events = synthetic_events(6000, seed=11)
    produce_events(kafka_bootstrap, topic, events[:3000])
    proc = TrainerProcess(
        ["--bootstrap", kafka_bootstrap, "--topic", topic, "--group", f"g-{topic}",
         "--snapshots", str(tmp_path / "snaps"), "--metrics-port", "0",
         "--models", "popularity", "--source", "process", "--max-seconds", "300",
         "--status-every-s", "1"],
        tmp_path / "train.log")
    try:
        port = proc.metrics_port()
        learned = ("liverec_trainer_events_learned_since_start", ())
        wait_for(lambda: scrape(port).get(learned) == 3000, 120, "the first half learned")

        def readers() -> list[str]:
            return re.findall(r"child process \(pid (\d+)\)", proc.log_text())

        assert len(readers()) == 1, proc.log_text()[-2000:]
        os.kill(int(readers()[0]), signal.SIGKILL)
        wait_for(lambda: len(readers()) == 2, 60, "a new reader process")
        # The new one dies too before it read anything: the next waits twice as long.
        os.kill(int(readers()[1]), signal.SIGKILL)
        wait_for(lambda: len(readers()) == 3, 60, "a third reader process")
        delays = re.findall(r"starting another reader process in ([\d.]+) s",
                            proc.log_text())
        assert delays == ["0.5", "1.0"], proc.log_text()[-2000:]
        produce_events(kafka_bootstrap, topic, events[3000:])
        samples = wait_for(lambda: (s := scrape(port)).get(learned) == 6000 and s, 120,
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
    proc = TrainerProcess(
        ["--bootstrap", kafka_bootstrap, "--topic", topic, "--group", f"g-{topic}",
         "--snapshots", str(tmp_path / "snaps"), "--metrics-port", "0",
         "--models", "popularity", "--source", "process", "--max-seconds", "300",
         "--status-every-s", "1"],
        tmp_path / "train.log")
    try:
        port = proc.metrics_port()
        learned = ("liverec_trainer_events_learned_since_start", ())
        wait_for(lambda: scrape(port).get(learned) == 2000, 120, "the first half learned")
        first = re.findall(r"child process \(pid (\d+)\)", proc.log_text())
        assert len(first) == 1, proc.log_text()[-2000:]
        os.kill(int(first[0]), signal.SIGSTOP)
        produce_events(kafka_bootstrap, topic, events[2000:])
        wait_for(lambda: "sent nothing for" in proc.log_text(), 60, "the hung reader noticed")
        samples = wait_for(lambda: (s := scrape(port)).get(learned) == 4000 and s, 120,
                           "the second half learned")
        dropped = ("liverec_trainer_duplicates_dropped_total", (("topic", topic),))
        assert samples.get(dropped, 0) == 0  # nothing read twice
        assert proc.terminate() == 0
    finally:
        if proc.proc.poll() is None:
            proc.kill()
        for pid in re.findall(r"child process \(pid (\d+)\)", proc.log_text()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
