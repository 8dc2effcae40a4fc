"""PROTOTYPE child of ``bench/proto_process_source.py`` (measurement only): read one
partition from an offset, decode each polled batch into columns, and write them to
stdout as length-prefixed frames; stop when stdin closes or gets a byte.

Imports only what the child needs (librdkafka, numpy, ``stream.columns``), so that it
starts in a fraction of the time a ``multiprocessing`` spawn of the parent takes.

    python bench/proto_process_child.py BOOTSTRAP TOPIC OFFSET BATCH_SIZE MAX_WAIT_S
"""

from __future__ import annotations

import select
import struct
import sys
import time

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from stream.columns import EventColumns, decode_columns

SEP = "\x1f"
#: a frame's head: first offset, next offset, records polled, valid events
HEAD = struct.Struct("<qqii")


def pack_frame(first: int, nxt: int, records: int, cols: EventColumns) -> bytes:
    """One polled batch: :data:`HEAD`, then positions (int32), weights (float32),
    timestamps (float64) and the four string columns joined by :data:`SEP`."""
    m = len(cols.positions)
    strs = SEP.join(cols.event_ids + cols.users + cols.items +
                    ["" if s is None else s for s in cols.sessions]).encode()
    return (HEAD.pack(first, nxt, records, m)
            + np.asarray(cols.positions, np.int32).tobytes()
            + cols.weights.astype(np.float32).tobytes()
            + cols.timestamps.astype(np.float64).tobytes() + strs)


def unpack_frame(body: bytes) -> tuple[int, int, int, EventColumns]:
    """``(first, next, records, columns)`` of a :func:`pack_frame` body."""
    first, nxt, records, m = HEAD.unpack_from(body)
    o = HEAD.size
    pos = np.frombuffer(body, np.int32, m, o).tolist()
    o += 4 * m
    w = np.frombuffer(body, np.float32, m, o).copy()
    o += 4 * m
    ts = np.frombuffer(body, np.float64, m, o).copy()
    o += 8 * m
    strs = body[o:].decode().split(SEP) if m else []
    return first, nxt, records, EventColumns(
        positions=pos, event_ids=strs[:m], users=strs[m:2 * m], items=strs[2 * m:3 * m],
        weights=w, timestamps=ts, sessions=[s or None for s in strs[3 * m:]])


def main() -> None:
    bootstrap, topic = sys.argv[1], sys.argv[2]
    offset, batch_size, max_wait_s = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    out = sys.stdout.buffer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "proto-unused",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, 0, offset)])
    try:
        while not select.select([sys.stdin], [], [], 0)[0]:
            deadline = time.monotonic() + max_wait_s
            msgs = c.consume(batch_size, 0.05)
            while len(msgs) < batch_size:
                rem = deadline - time.monotonic()
                if rem <= 0:
                    break
                more = c.consume(batch_size - len(msgs), min(0.05, rem))
                if not more and msgs:
                    break
                msgs += more
            msgs = [m for m in msgs if m.error() is None]
            if not msgs:
                continue
            cols, rejects = decode_columns([m.value() for m in msgs])
            assert not rejects, "the prototype has no dead-letter path"
            body = pack_frame(msgs[0].offset() or 0, (msgs[-1].offset() or 0) + 1,
                              len(msgs), cols)
            out.write(struct.pack("<i", len(body)) + body)
            out.flush()
    finally:
        c.close()


if __name__ == "__main__":
    main()
