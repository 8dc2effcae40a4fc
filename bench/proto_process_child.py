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

from stream.columns import decode_columns

SEP = "\x1f"


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
            m = len(cols.positions)
            strs = SEP.join(cols.event_ids + cols.users + cols.items +
                            ["" if s is None else s for s in cols.sessions]).encode()
            body = (struct.pack("<qqii", msgs[0].offset() or 0, (msgs[-1].offset() or 0) + 1,
                                len(msgs), m)
                    + np.asarray(cols.positions, np.int32).tobytes()
                    + cols.weights.astype(np.float32).tobytes()
                    + cols.timestamps.astype(np.float64).tobytes() + strs)
            out.write(struct.pack("<i", len(body)) + body)
            out.flush()
    finally:
        c.close()


if __name__ == "__main__":
    main()
