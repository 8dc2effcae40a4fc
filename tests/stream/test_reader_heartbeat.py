"""The reader process's heartbeat, without Kafka: an idle reader stays alive to its
parent, a stopped one is given up, and a message that stalls halfway raises."""

from __future__ import annotations

import os
import signal
import time

import pytest

from stream.child_reader import ChildReader
from stream.events import DEFAULT_LIMITS, EVENT_WEIGHTS
from stream.reader_child import read_message
from stream.settings import KafkaSettings


def test_a_message_that_stalls_halfway_raises_and_a_heartbeat_is_empty() -> None:
    r, w = os.pipe()
    try:
        os.write(w, (0).to_bytes(4, "little"))
        assert read_message(r, timeout_s=1.0) == b""  # a heartbeat
        os.write(w, (10).to_bytes(4, "little") + b"abc")  # 3 of 10 bytes
        with pytest.raises(TimeoutError, match="7 of 10 bytes unread"):
            read_message(r, timeout_s=0.2)
    finally:
        os.close(r)
        os.close(w)


def test_an_idle_reader_is_alive_and_a_stopped_one_is_given_up() -> None:
    # Nothing listens on port 1: the reader idles unassigned, sending heartbeats only.
    reader = ChildReader(KafkaSettings(bootstrap="127.0.0.1:1", topic="t"), "g",
                         batch_size=64, max_wait_s=0.2, limits=DEFAULT_LIMITS,
                         weights=EVENT_WEIGHTS)
    reader.silence_s = 3.0
    try:
        end = time.monotonic() + 5.0  # longer than silence_s: heartbeats keep it alive
        while time.monotonic() < end:
            assert reader.read(0.2) is None
        os.kill(reader.proc.pid, signal.SIGSTOP)
        end = time.monotonic() + 30.0
        with pytest.raises(TimeoutError, match="sent nothing for"):
            while time.monotonic() < end:
                reader.read(0.2)
    finally:
        reader.proc.kill()
        reader.proc.wait()


def test_a_sigterm_to_the_process_group_leaves_stopping_to_the_parent() -> None:
    # systemd (and timeout(1)) signal the whole group: the reader must not die under
    # the parent while it writes its final snapshot; the parent's stop ends it.
    reader = ChildReader(KafkaSettings(bootstrap="127.0.0.1:1", topic="t"), "g",
                         batch_size=64, max_wait_s=0.2, limits=DEFAULT_LIMITS,
                         weights=EVENT_WEIGHTS)
    try:
        started = reader._heard  # until its first heartbeat the reader may be importing
        end = time.monotonic() + 30.0
        while reader._heard == started and time.monotonic() < end:
            assert reader.read(0.2) is None
        assert reader._heard > started, "no heartbeat from the reader"
        os.kill(reader.proc.pid, signal.SIGTERM)
        end = time.monotonic() + 2.5  # over two heartbeats: alive, still sending
        while time.monotonic() < end:
            assert reader.read(0.2) is None
        assert reader.proc.poll() is None
        reader.stop(timeout_s=10.0)
        assert reader.proc.returncode == 0
    finally:
        if reader.proc.poll() is None:
            reader.proc.kill()
            reader.proc.wait()
