"""PROTOTYPE, measurement only (not the trainer's code path): the whole Kafka consumer
-- poll and columnar decode -- in a child process, its columns sent over a pipe, so
that the learner no longer pays the source thread's CPU under the GIL.

The trainer's source thread is replaced (``trainer.service.BatchSource``) by one that
only unpacks and queues what the child sends. What the prototype leaves out, and a
real implementation must do: one partition read with ``assign()`` (no consumer
group, no rebalance, no seeks), no dead-letter topic (a reject aborts), no commits
(the trainer's snapshots still hold the offsets), and the child (``proto_process_child.py``, a
subprocess with only librdkafka, numpy and ``stream.columns`` imported) is started
when the source starts, not beside the group join. It runs the default mix through
``trainer.Trainer`` with the thread source and with the process source, alternating,
each beside a fresh in-memory learn rate, and prints both ratios per round::

    .venv/bin/python bench/proto_process_source.py --rounds 4

(a local broker is started unless ``LIVEREC_KAFKA_BOOTSTRAP`` is set).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proto_process_child import unpack_frame

from stream.consumer import Partition
from trainer import service
from trainer.source import BatchSource, PolledBatch

CHILD = Path(__file__).with_name("proto_process_child.py")


def _read_exactly(fd: int, n: int) -> bytes:
    parts = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError("the child process ended")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


class ProcSource(BatchSource):
    """The source thread of the prototype: unpack the child's batches and queue them."""

    bootstrap = topic = ""

    def _loop(self) -> None:
        part = (self.topic, 0)
        with self._hand_over:
            self.assigned = frozenset({part})
            offset = self.on_assign({part}).get(part, 0)
            self._generation += 1
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), self.bootstrap, self.topic, str(offset),
             str(self.batch_size), str(self.max_wait_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ,
                                                            "PYTHONPATH": str(CHILD.parent.parent)})
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while not self._stop.is_set():
            self._drain_commits()
            if not select.select([fd], [], [], 0.05)[0]:
                continue
            first, nxt, n, cols = unpack_frame(
                _read_exactly(fd, struct.unpack("<i", _read_exactly(fd, 4))[0]))
            self._put(PolledBatch(cols, [], {part: nxt}, {part: first}, n), self._generation)

    def stop(self, final_offsets: Mapping[Partition, int] | None,
             timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._space.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(b"x")
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main(argv: list[str] | None = None) -> None:
    from bench_train import click_events, learn_rate, prefilled_topic, train_rate

    from liverec.runtime import pin_malloc_mmap_threshold

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--events", type=int, default=100_000)
    args = ap.parse_args(argv)
    pin_malloc_mmap_threshold()
    logging.basicConfig(level=logging.WARNING)
    n = args.events
    events = click_events(n, 20000, 20000)
    rows: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp, prefilled_topic(events, Path(tmp)) as kafka:
        ProcSource.bootstrap, ProcSource.topic = kafka.bootstrap, kafka.topic
        for r in range(args.rounds):
            for variant in (["thread", "process"] if r % 2 == 0 else ["process", "thread"]):
                learn = learn_rate(events, "all", 256)
                service.BatchSource = (  # type: ignore[misc]
                    ProcSource if variant == "process" else BatchSource)
                rate, tr = train_rate(kafka, n, "all", 256, 1.0, Path(tmp))
                res: Any = tr.result  # type: ignore[attr-defined]
                ph = n / res.learning_s / learn
                rows.append((variant, rate / learn, ph, res.seconds))
                print(f"round {r} {variant}: trainer {res.seconds:.2f} s (join "
                      f"{res.first_batch_s:.2f}, shutdown {res.shutdown_s:.2f}), train/learn "
                      f"{rate / learn:.2f}, learning phase {ph:.2f}, events scored per model "
                      f"{tr.evaluator.n_evaluated}", flush=True)
    for v in ("thread", "process"):
        xs = [x for x in rows if x[0] == v]
        print(f"{v}: median train/learn {statistics.median(x[1] for x in xs):.3f}, "
              f"learning phase {statistics.median(x[2] for x in xs):.3f}, "
              f"trainer mean {statistics.mean(x[3] for x in xs):.2f} s")


if __name__ == "__main__":
    main()
