"""How often the trainer snapshots while it catches up and while it keeps up.

One trainer (``trainer.Trainer``, default settings, the default model mix) on a fresh
one-partition topic. First ``--catch-up`` events of the issue-9 stream are produced
before it starts (it has a backlog), then ``--live`` more at about ``--rate`` events/s (it
keeps up and waits for records part of the time). It prints, every few seconds, the
events learned, the snapshot version, the last state copy's milliseconds and the share
of the last second the learner waited for records; and the snapshots written per
second in the live phase.

``--old-rule`` runs the rule before round 2, session 23 (copies bounded by the share
alone, never by the idle time); pass the old shares through the environment too to
reproduce the old defaults (``LIVEREC_SNAPSHOT_MAX_SHARE=0.05
LIVEREC_EVAL_CPU_SHARE=0.09``). Run (a local broker is started unless
``LIVEREC_KAFKA_BOOTSTRAP`` is set)::

    .venv/bin/python bench/bench_snapshot_cadence.py
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from bench_train import click_events, prefilled_topic

import trainer.service as service
from stream.events import encode
from stream.kafka import make_producer, send_all
from trainer import Trainer, TrainerSettings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catch-up", type=int, default=40_000, help="events produced at once")
    ap.add_argument("--live", type=int, default=30_000, help="events produced after them")
    ap.add_argument("--rate", type=float, default=1_500.0, help="live events per second")
    ap.add_argument("--old-rule", action="store_true",
                    help="copies bounded by snapshot_max_share alone (no idle time)")
    args = ap.parse_args(argv)
    if args.old_rule:
        service.IDLE_COPY_FRACTION = 0.0
    events = click_events(args.catch_up + args.live, 20_000, 20_000)
    with tempfile.TemporaryDirectory() as d, \
            prefilled_topic(events[:args.catch_up], Path(d)) as kafka:
        settings = TrainerSettings(group=f"g-{kafka.topic}", snapshots=Path(d) / "snaps",
                                   metrics_port=-1, status_every_s=60,
                                   until_events_total=len(events))
        trainer = Trainer(settings, kafka)
        learner = threading.Thread(target=trainer.run, name="trainer")
        learner.start()
        t0 = time.monotonic()

        def mark(phase: str) -> None:
            print(f"{time.monotonic() - t0:6.1f} s  {phase:9s} learned "
                  f"{trainer.events_total:7,d}  snapshot {trainer.snapshot_version}  "
                  f"last copy {trainer._capture_s * 1e3:4.0f} ms  "
                  f"waited {trainer._idle_share:.0%} of the last second", flush=True)

        while trainer.events_total < args.catch_up and learner.is_alive():
            mark("catch-up")
            time.sleep(1.0)
        mark("caught up")
        v0, w0 = trainer.snapshot_version or 0, time.monotonic()
        live, step = events[args.catch_up:], max(1, int(args.rate / 10))
        producer = make_producer(kafka)
        try:
            for i in range(0, len(live), step):
                send_all(producer, kafka.topic, [(e.user_id.encode(), encode(e))
                                                 for e in live[i:i + step]])
                time.sleep(step / args.rate)
                if i % (step * 30) == 0:
                    mark("live")
        finally:
            producer.close()
        learner.join()
        spent = time.monotonic() - w0
        written = (trainer.snapshot_version or 0) - v0
        print(f"live phase: {written} snapshots in {spent:.1f} s "
              f"({written / spent:.2f} a second)")

if __name__ == "__main__":
    main()
