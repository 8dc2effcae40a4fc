"""The parent's handle on a :mod:`stream.reader_child` process.

The trainer's ``--source process`` (:mod:`trainer.process_source`) keeps its group
consumer with every partition paused and sends the complete assignment here with a
new generation after each rebalance hook or rewind; frames of an older generation
are dropped. The offsets sent are explicit wherever a batch was accepted: frames read
before a command are dropped, so they must be read again. Lag is the high watermark
minus the offset after the last accepted frame (the paused consumer does not move).
The reader sends an empty message every second it has nothing else to send; a reader
silent for :attr:`ChildReader.silence_s` (stopped, deadlocked, stuck mid-frame) counts
as dead, as one that exited does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stream.events import Limits
from stream.kafka.confluent import security_config
from stream.reader_child import Frame, decode_frame, read_message, write_message
from stream.settings import KafkaSettings

__all__ = ["ChildReader"]

log = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parent.parent


class ChildReader:
    """Start a reader process for ``settings.topic``, read under ``group``'s
    committed offsets (it never commits; a partition without one starts at
    ``auto_offset_reset``), and hand out its :class:`Frame` s."""

    #: seconds without any message (frame or heartbeat) after which :meth:`read`
    #: gives the reader up for hung
    silence_s = 15.0

    def __init__(self, settings: KafkaSettings, group: str, *, batch_size: int,
                 max_wait_s: float, limits: Limits, weights: Mapping[str, float],
                 client_id: str = "liverec-reader", auto_offset_reset: str = "earliest"
                 ) -> None:
        if not settings.bootstrap:
            raise ValueError("no Kafka bootstrap configured")
        self.auto_offset_reset = auto_offset_reset
        conf: dict[str, Any] = {
            "bootstrap.servers": settings.bootstrap, "client.id": client_id,
            "group.id": group, "enable.auto.offset.store": False,
            "enable.partition.eof": False, "auto.offset.reset": auto_offset_reset,
            **security_config(settings),
        }
        self._config = {
            "op": "config", "conf": conf, "topic": settings.topic,
            "batch_size": batch_size, "max_wait_s": max_wait_s,
            "limits": dataclasses.asdict(limits),
            "weights": dict(weights),
        }
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.reader_child"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout.fileno()
        write_message(self._in, json.dumps(self._config).encode())
        #: when the reader last sent anything (its start counts)
        self._heard = time.monotonic()

    @property
    def stopping(self) -> bool:
        """:meth:`request_stop` was called (commands are no longer sent)."""
        return self._in.closed

    def assign(self, gen: int, offsets: Mapping[int, int | None]) -> None:
        """Read exactly these partitions from now on, each from its offset (None: the
        group's committed offset). Frames read under an earlier assignment may still
        come: check ``gen``."""
        write_message(self._in, json.dumps(
            {"op": "assign", "gen": gen,
             "offsets": {str(p): o for p, o in offsets.items()}}).encode())

    def read(self, timeout_s: float) -> Frame | None:
        """The next frame, or None when none came within ``timeout_s``.

        Raises :class:`EOFError` when the reader ended and :class:`TimeoutError` when
        it sent nothing, not even a heartbeat, for :attr:`silence_s` (a message
        begun and not finished within that time too).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            wait = max(0.0, deadline - time.monotonic())
            if not select.select([self._out], [], [], wait)[0]:
                silent = time.monotonic() - self._heard
                if silent > self.silence_s:
                    raise TimeoutError(f"the reader process (pid {self.proc.pid}) sent "
                                       f"nothing for {silent:.0f} s")
                return None
            body = read_message(self._out, timeout_s=self.silence_s)
            if body is None:
                raise EOFError(f"the reader process ended (exit code {self.proc.poll()})")
            self._heard = time.monotonic()
            if body:
                return decode_frame(body)
            if time.monotonic() >= deadline:  # a heartbeat
                return None

    def request_stop(self) -> None:
        """Ask the reader to stop (its input closes); :meth:`stop` waits for it."""
        if self._in.closed:
            return
        try:
            write_message(self._in, b'{"op": "stop"}')
            self._in.close()
        except OSError:
            pass  # gone already

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the reader to stop and wait for it (frames not read are dropped)."""
        self.request_stop()
        # Drain its output meanwhile: a reader blocked writing a frame sees the stop.
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            if select.select([self._out], [], [], 0.05)[0] and not os.read(self._out, 1 << 16):
                break
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("the reader process did not stop within %.0f s: killing it",
                        timeout_s)
            self.proc.kill()
            self.proc.wait()
