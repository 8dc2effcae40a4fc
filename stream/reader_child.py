"""A Kafka reader in a child process: poll, decode into columns, send them on.

Used by the trainer's ``--source process`` (:mod:`trainer.process_source`).

The trainer's learner and its source thread share one GIL, so the source's CPU --
librdkafka's messages turned into Python objects, JSON decoding -- is paid by the
learner in full (BENCHMARKS, "Trainer throughput", sessions 26-27). This module runs
that work in a separate process. It owns no consumer group: the parent keeps the
group consumer (rebalance hooks, commits, the dead-letter topic) and tells this
reader what to read. The child starts quickly because it imports only librdkafka,
numpy, :mod:`stream.columns` and :mod:`stream.consume_errors`.

Protocol (every message is a 4-byte little-endian length, then the body):

* parent -> child (stdin), JSON bodies:
  ``{"op": "config", "conf": {...librdkafka...}, "topic", "batch_size", "max_wait_s",
  "limits": {...}, "weights": {...}}`` first (on stdin, not the command line, so that
  credentials stay out of the process list); then any number of
  ``{"op": "assign", "gen": g, "offsets": {"<partition>": offset or null}}`` -- the
  complete assignment, each partition read from its offset (null: the group's
  committed offset), also one read already -- and ``{"op": "stop"}``.
  End of input (the parent died) stops the child too.
* child -> parent (stdout): one frame per polled batch, see :func:`encode_frame`,
  and an empty message whenever nothing was sent for :data:`HEARTBEAT_S` (so that the
  parent tells an idle reader from a hung one).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from stream.columns import EventColumns, decode_columns
from stream.consume_errors import records_only
from stream.events import Limits, Rejected
from stream.logfilter import RepeatFilter
from stream.logformat import JsonFormatter

__all__ = ["Frame", "decode_frame", "encode_frame", "read_message", "usable", "write_message"]

log = logging.getLogger("liverec.reader")

_LEN = struct.Struct("<I")
#: seconds without a frame after which the reader sends an empty message
HEARTBEAT_S = 1.0
SEP = "\x1f"  # not printable: never inside a valid id (decode rejects it)


def write_message(out: IO[bytes], body: bytes) -> None:
    out.write(_LEN.pack(len(body)) + body)
    out.flush()


def _read_exactly(fd: int, n: int, deadline: float | None = None) -> bytes | None:
    parts, left = [], n
    while left:
        if deadline is not None and not select.select(
                [fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError(f"a message stalled with {left} of {n} bytes unread")
        chunk = os.read(fd, left)
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_message(fd: int, timeout_s: float | None = None) -> bytes | None:
    """The next message from file descriptor ``fd`` (unbuffered, so that ``select``
    on it tells the truth), or None at the end of input. With ``timeout_s``, a
    message that does not arrive whole within it raises :class:`TimeoutError`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    head = _read_exactly(fd, 4, deadline)
    if head is None:
        return None
    return _read_exactly(fd, _LEN.unpack(head)[0], deadline)


@dataclass(slots=True)
class Frame:
    """One polled batch as the child read it, under assignment generation ``gen``.

    ``first`` / ``next`` are per partition the first offset read and the offset after
    the last; ``rejects`` are ``(position, partition, offset, Rejected)``, raw bytes
    included, for the parent to dead-letter."""

    gen: int
    records: int
    first: dict[int, int]
    next: dict[int, int]
    columns: EventColumns
    rejects: list[tuple[int, int, int, Rejected]]


def encode_frame(gen: int, partitions: Sequence[int], offsets: Sequence[int],
                 cols: EventColumns, rejects: list[tuple[int, Rejected]]) -> bytes:
    """A frame: a JSON header (generation, offsets, rejects), then the columns packed
    (positions int32, weights float32, timestamps float64, then the four string
    columns joined by :data:`SEP`)."""
    first: dict[int, int] = {}
    nxt: dict[int, int] = {}
    for p, o in zip(partitions, offsets, strict=True):
        first.setdefault(p, o)
        nxt[p] = o + 1
    head = json.dumps({
        "gen": gen, "records": len(offsets), "first": first, "next": nxt,
        "m": len(cols.positions),
        "rejects": [[i, partitions[i], offsets[i], r.reason, r.detail,
                     base64.b64encode(r.raw or b"").decode()] for i, r in rejects],
    }).encode()
    strs = SEP.join(cols.event_ids + cols.users + cols.items
                    + ["" if s is None else s for s in cols.sessions]).encode()
    return b"".join((_LEN.pack(len(head)), head,
                     np.asarray(cols.positions, np.int32).tobytes(),
                     cols.weights.astype(np.float32).tobytes(),
                     cols.timestamps.astype(np.float64).tobytes(), strs))


def decode_frame(body: bytes) -> Frame:
    (hn,) = _LEN.unpack_from(body)
    head = json.loads(body[4:4 + hn])
    m, o = head["m"], 4 + hn
    pos = np.frombuffer(body, np.int32, m, o).tolist()
    o += 4 * m
    weights = np.frombuffer(body, np.float32, m, o).copy()
    o += 4 * m
    ts = np.frombuffer(body, np.float64, m, o).copy()
    o += 8 * m
    strs = body[o:].decode().split(SEP) if m else []
    cols = EventColumns(positions=pos, event_ids=strs[:m], users=strs[m:2 * m],
                        items=strs[2 * m:3 * m], weights=weights, timestamps=ts,
                        sessions=[s or None for s in strs[3 * m:]])
    rejects = [(i, p, off, Rejected(base64.b64decode(raw), reason, detail))
               for i, p, off, reason, detail, raw in head["rejects"]]
    return Frame(head["gen"], head["records"], {int(k): v for k, v in head["first"].items()},
                 {int(k): v for k, v in head["next"].items()}, cols, rejects)


class _Reader:
    """The child's loop: apply commands, poll, decode, write frames."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from confluent_kafka import Consumer

        self.topic: str = cfg["topic"]
        self.batch_size: int = cfg["batch_size"]
        self.max_wait_s: float = cfg["max_wait_s"]
        self.limits = Limits(**cfg["limits"])
        self.weights: dict[str, float] = cfg["weights"]
        # Its log through Python logging (else librdkafka writes to stderr itself), with
        # repeats held back as in the parent: a broker outage is one line a minute.
        rdlog = logging.getLogger("liverec.reader.librdkafka")
        rdlog.addFilter(RepeatFilter())
        self.consumer = Consumer({**cfg["conf"], "enable.auto.commit": False,
                                  "logger": rdlog})
        self.gen = 0
        self.assigned: set[int] = set()

    def assign(self, gen: int, offsets: dict[str, int | None]) -> None:
        """Read exactly these partitions, each from its offset (None: the group's
        committed offset), from now on under generation ``gen``."""
        from confluent_kafka import OFFSET_STORED, TopicPartition

        wanted = {int(p): o for p, o in offsets.items()}
        if wanted:
            self.consumer.assign([TopicPartition(self.topic, p,
                                                 OFFSET_STORED if o is None else o)
                                  for p, o in sorted(wanted.items())])
        else:
            self.consumer.unassign()
        self.assigned = set(wanted)
        self.gen = gen

    def poll(self, inp: int) -> tuple[list[int], list[int], list[bytes | None]]:
        """Up to ``batch_size`` records within ``max_wait_s``, in 50 ms slices; a
        command waiting on ``inp`` ends the wait."""
        c = self.consumer
        deadline = time.monotonic() + self.max_wait_s
        msgs = c.consume(self.batch_size, min(0.05, self.max_wait_s))
        while len(msgs) < self.batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = c.consume(self.batch_size - len(msgs), min(0.05, left))
            if (not more and msgs) or select.select([inp], [], [], 0)[0]:
                msgs += more
                break
            msgs += more
        msgs = usable(msgs)
        return ([m.partition() or 0 for m in msgs], [m.offset() or 0 for m in msgs],
                [m.value() for m in msgs])

    def run(self, inp: int, out: IO[bytes]) -> None:
        sent = time.monotonic()
        try:
            while True:
                if time.monotonic() - sent >= HEARTBEAT_S:
                    write_message(out, b"")  # alive, nothing to send
                    sent = time.monotonic()
                while select.select([inp], [], [], 0)[0]:
                    body = read_message(inp)
                    if body is None:
                        return  # the parent is gone
                    cmd = json.loads(body)
                    if cmd["op"] == "stop":
                        return
                    if cmd["op"] == "assign":
                        self.assign(cmd["gen"], cmd["offsets"])
                if not self.assigned:
                    select.select([inp], [], [], 0.05)
                    continue
                parts, offs, values = self.poll(inp)
                if not values:
                    continue
                cols, rejects = decode_columns(values, limits=self.limits,
                                               weights=self.weights)
                write_message(out, encode_frame(self.gen, parts, offs, cols, rejects))
                sent = time.monotonic()
        finally:
            self.consumer.close()


def usable(msgs: Sequence[Any]) -> list[Any]:
    """The records among ``consume()``'s messages, read as the group consumer's client
    reads them (:func:`stream.consume_errors.records_only`): a fatal error ends the
    reader with it, and the parent starts another
    (:class:`trainer.process_source.ProcessBatchSource`)."""
    return records_only(msgs, log, RuntimeError)


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group, and a SIGTERM may too
    # (systemd's default, timeout(1)): the parent stops this reader itself (stop
    # command, or its end of the pipe closing), after its own work. Died at once, it
    # would look like a crash to the parent while it writes its final snapshot.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if os.environ.get("LIVEREC_LOG_FORMAT") == "json" else logging.Formatter(
            "%(asctime)s liverec-reader[%(process)d] %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    inp, out = sys.stdin.fileno(), sys.stdout.buffer
    body = read_message(inp)
    if body is None:
        return
    cfg = json.loads(body)
    if cfg.get("op") != "config":
        raise SystemExit("the first message must be the config")
    with contextlib.suppress(BrokenPipeError):  # the parent stopped reading
        _Reader(cfg).run(inp, out)


if __name__ == "__main__":
    main()
