"""Scale-out throughput: 1 vs N ``liverec train --scale-out`` processes on one topic.

For each trainer count, a fresh group learns one pre-filled P-partition topic (its
own snapshot directory and update topic). Progress is the group's *committed* input
offsets (a transaction commits the updates and the offsets together, so committed ==
learned and published), sampled every 0.1 s. Two rates: **overall**, events over the
seconds between the first and the last move (the rebalances while members join
included), and **steady**, events committed after the last member's last partition
assignment over the seconds from then to the end (all members learning). It also
reports update-topic bytes per learned event (accuracy: bench_scale_out_accuracy.py).

Run (a local broker is started unless ``LIVEREC_KAFKA_BOOTSTRAP`` is set)::

    .venv/bin/python bench/bench_scale_out.py --events 200000 --trainers 1 2
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

from stream.broker import resolve_bootstrap
from stream.events import ClickEvent, validate_dict
from stream.kafka import ConsumerOptions, create_topics, delete_topics, make_consumer
from stream.replay import produce_events
from trainer.partitioned import updates_topic

REPO = Path(__file__).resolve().parents[1]


def _events(n: int, users: int, items: int) -> list[ClickEvent]:
    from online_models.synthetic import generate_events

    out = []
    for row in generate_events(n, users, items, seed=1):
        ev = validate_dict(row)
        assert isinstance(ev, ClickEvent)
        out.append(ev)
    return out


def _assigned_at(text: str) -> list[float]:
    """Wall-clock times of the "assigned partition" log lines of a trainer log."""
    out = []
    for stamp in re.findall(r"^(\S+ \S+) INFO trainer\.partitioned: assigned partition",
                            text, flags=re.M):
        out.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def run(bootstrap: str, topic: str, n: int, k: int, partitions: int, models: str,
        batch_size: int, workdir: Path, group: str | None = None
        ) -> tuple[float, float, int, int]:
    """(overall events/s, steady events/s, update bytes, events evaluated) of ``k``
    trainers learning the whole topic (``n`` records) into ``workdir/<group>``."""
    group = group or f"bench-{k}-{uuid.uuid4().hex[:6]}"
    snaps = workdir / group
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = []
    for i in range(k):
        log = open(workdir / f"{group}-{i}.log", "wb")  # noqa: SIM115
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "liverec.cli", "train", "--bootstrap", bootstrap,
             "--topic", topic, "--group", group, "--snapshots", str(snaps),
             "--models", models, "--scale-out", "--instance-id", f"t{i}",
             "--batch-size", str(batch_size), "--metrics-port", "-1",
             "--idle-exit-s", "6", "--snapshot-every-s", "2", "--merge-every-s", "30",
             "--log-level", "INFO"],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env), log))
    probe = make_consumer(bootstrap, ConsumerOptions(group_id=group, client_id="bench"))
    parts = [(topic, p) for p in range(partitions)]
    samples: list[tuple[float, int]] = []
    seen = 0
    try:
        while seen < n:
            got = probe.committed(parts)
            total = sum(v or 0 for v in got.values())
            if total > seen:
                seen = total
                samples.append((time.time(), total))
            if any(p.poll() is not None for p, _ in procs) and seen < n:
                raise RuntimeError(f"a trainer exited early; see {workdir}")
            time.sleep(0.1)
    finally:
        probe.close()
    update_bytes = evaluated = 0
    assigned: list[float] = []
    for p, log in procs:
        p.wait(120)
        log.close()
    for i in range(k):
        text = (workdir / f"{group}-{i}.log").read_text(errors="replace")
        update_bytes += sum(int(b) for b in re.findall(r"\((\d+) bytes\)", text))
        assigned.extend(_assigned_at(text))
        evaluated += sum(int(e) for e in re.findall(r"stopped: .* evaluated=(\d+)", text))
    (t0, _), (t1, _) = samples[0], samples[-1]
    overall = n / max(t1 - t0, 1e-9)
    last = max((t for t in assigned if t <= t1), default=t0)
    before = max((c for t, c in samples if t <= last), default=0)
    start = min((t for t, _ in samples if t >= last), default=t1)
    steady = (n - before) / max(t1 - max(last, min(start, t1)), 1e-9)
    return overall, steady, update_bytes, evaluated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--trainers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", default="popularity,itemknn,sequence")
    ap.add_argument("--batch-size", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = resolve_bootstrap(Path(tmp) / "kafka")
        bootstrap = broker.bootstrap
        topic = f"bench-scale-{uuid.uuid4().hex[:8]}"
        try:
            create_topics(bootstrap, {topic: args.partitions})
            produce_events(bootstrap, topic, _events(args.events, args.users, args.items))
            rates = {}
            for k in args.trainers:
                overall, steady, nbytes, evaluated = run(bootstrap, topic, args.events, k,
                                              args.partitions, args.models,
                                              args.batch_size, Path(tmp))
                delete_topics(bootstrap, [updates_topic(topic)])  # one name: one run at a time
                rates[k] = (overall, steady)
                print(f"trainers={k}: overall {overall:,.0f} events/s, steady {steady:,.0f} "
                      f"events/s, update topic {nbytes / args.events:,.0f} bytes per learned "
                      f"event, {evaluated:,} events evaluated", flush=True)
            b_over, b_steady = rates[args.trainers[0]]
            for k, (o, st) in rates.items():
                print(f"trainers={k}: overall {o / b_over:.2f}x, steady {st / b_steady:.2f}x "
                      f"trainers={args.trainers[0]}")
        finally:
            delete_topics(bootstrap, [topic])
            broker.close()


if __name__ == "__main__":
    main()
