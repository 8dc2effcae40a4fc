"""Scale-out throughput: 1 vs N ``liverec train --scale-out`` processes on one topic.

For each trainer count, a fresh group of trainers starts on a fresh, empty
P-partition topic; once every trainer owns partitions, the events are produced and
the group learns them (its own snapshot directory and update topic); then the
trainers are stopped (SIGTERM). ``--prefilled`` fills one topic before the trainers
start instead (then the first member may learn much of a short stream before the
others join: on 100k events the second trainer learned next to nothing in some
runs). ``--one-transaction`` produces them, once every trainer owns partitions, inside
one Kafka transaction, and the window opens at its commit: the trainers read
``read_committed``, so the whole stream appears at once to a group that has formed,
and the producer's CPU (the benchmark's, on the same cores) stays out of the window --
the topic is pre-filled as in the issue-9 benchmark, without the head start.
Progress is the group's *committed* input offsets (a transaction commits the updates
and the offsets together, so committed == learned and published), sampled every
0.1 s while the events are produced and after.
Two rates: **overall**, the events over the seconds from the start of producing them
to the last commit (with ``--prefilled``: the events committed after the first move
seen, over the seconds from it to the last; the rebalances while members join
included; with ``--one-transaction``: from the commit of the fill), and
**steady**, events committed after the last member's last partition
assignment over the seconds from then to the end (all members learning). It also
reports update-topic bytes per learned event (accuracy: bench_scale_out_accuracy.py)
and where the CPU went over the same window as *overall*: cores busy on the whole
machine (``/proc/stat``), in the trainers, in the broker (a child process when the
benchmark starts it), and CPU seconds per 1,000 learned events. With those, the ratio
of N to 1 trainers splits into (cores busy, N / 1) x (CPU per event, 1 / N), and
``ceiling`` is the rate N trainers would reach with every core busy at their CPU
cost per event: what the machine allows the design, not a measurement.

Run (a local broker is started unless ``LIVEREC_KAFKA_BOOTSTRAP`` is set)::

    .venv/bin/python bench/bench_scale_out.py --events 200000 --trainers 1 2

``--repeats R`` measures the counts R times in turns and prints each round's ratio and
their median: one run's ratio swings with its one-trainer run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import confluent_kafka as ck
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import click_events

from stream.broker import resolve_bootstrap
from stream.events import ClickEvent, encode
from stream.kafka import (
    ConsumerOptions,
    KafkaClientError,
    create_topics,
    delete_topics,
    make_consumer,
)
from stream.replay import produce_events
from trainer.partitioned import updates_topic

REPO = Path(__file__).resolve().parents[1]


def _assigned_at(text: str) -> list[float]:
    """Wall-clock times of the "assigned partition" log lines of a trainer log."""
    out = []
    for stamp in re.findall(r"^(\S+ \S+) INFO trainer\.partitioned: assigned partition",
                            text, flags=re.M):
        out.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def _cpu_s(procs: list[psutil.Process]) -> float:
    """CPU seconds (user + system) of ``procs`` so far; a process gone counts 0."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def _runq_wait_s(pid: int) -> float:
    """Seconds the process's main thread (the trainer's loop) has been runnable but
    waiting for a core (``/proc/<pid>/schedstat``); 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass(frozen=True)
class CpuUse:
    """Cores busy over the measured window, and CPU seconds per 1,000 events."""

    machine_cores: float
    trainer_cores: float
    broker_cores: float
    machine_s_per_1k: float

    def ceiling(self, cores: int) -> float:
        """Events/s with ``cores`` busy at this run's machine CPU per event."""
        return cores * 1000 / max(self.machine_s_per_1k, 1e-12)


@dataclass(frozen=True)
class Sample:
    t: float
    committed: int
    per_partition: tuple[int, ...]
    machine_s: float
    trainer_s: tuple[float, ...]
    broker_s: float
    trainer_wait_s: tuple[float, ...]


def _broker_procs() -> list[psutil.Process]:
    """The local broker when this benchmark started it (a ``java`` child)."""
    return [c for c in psutil.Process().children(recursive=True)
            if "java" in c.name().lower()]


def _owned(text: str) -> set[int]:
    """Partitions a trainer's log says it owns now (its assigned/revoked lines)."""
    owned: set[int] = set()
    for verb, p in re.findall(r"(assigned partition|partition) (\d+)(?::| revoked)", text):
        if verb == "assigned partition":
            owned.add(int(p))
        else:
            owned.discard(int(p))
    return owned


def _wait_until_joined(procs: list[subprocess.Popen[bytes]], logs: list[Path],
                       partitions: int) -> None:
    """Until every trainer owns partitions and together they own all of them."""
    deadline = time.monotonic() + 120
    while True:
        owned = [_owned(log.read_text(errors="replace")) for log in logs]
        if all(owned) and len(set().union(*owned)) == partitions:
            return
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"the trainers did not split the topic: {owned}")
        time.sleep(0.2)


def produce_in_one_transaction(bootstrap: str, topic: str, events: list[ClickEvent]
                                ) -> Callable[[], None]:
    """Send ``events`` (keyed by user) inside one open transaction; returns the
    function that commits it (until then ``read_committed`` readers see none)."""
    p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                     "transactional.id": f"bench-fill-{uuid.uuid4().hex[:8]}",
                     "transaction.timeout.ms": 300_000})
    p.init_transactions(30)
    p.begin_transaction()
    for ev in events:
        while True:
            try:
                p.produce(topic, value=encode(ev), key=ev.user_id.encode("utf-8"))
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                p.poll(0.05)
    if p.flush(60):
        raise RuntimeError("the fill's records were not all delivered")

    def commit() -> None:
        p.commit_transaction(60)

    return commit


def run(bootstrap: str, topic: str, n: int, k: int, partitions: int, models: str,
        batch_size: int, workdir: Path, fill: Callable[[], object] | None = None,
        reveal: Callable[[], Callable[[], None]] | None = None,
        commit_every_s: float | None = None) -> tuple[float, float, int, int, CpuUse]:
    """(overall events/s, steady events/s, update bytes, events evaluated, CPU use) of
    ``k`` trainers learning the whole topic (``n`` records) into ``workdir/<group>``.

    With ``fill``, the topic is empty at the start and ``fill`` produces the records
    once every trainer owns partitions; with ``reveal``, that produces them in a
    transaction and returns its commit, which opens the window; with neither, the
    topic is pre-filled. ``commit_every_s``: the trainers' ``--commit-every-s`` (None:
    their default)."""
    live = fill is not None or reveal is not None
    group = f"bench-{k}-{uuid.uuid4().hex[:6]}"
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
             "--idle-exit-s", "60" if live else "6",
             "--snapshot-every-s", "2", "--merge-every-s", "30",
             "--log-level", "INFO",
             *(["--commit-every-s", str(commit_every_s)] if commit_every_s is not None
               else [])],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env), log))
    trainers = [psutil.Process(p.pid) for p, _ in procs]
    brokers = _broker_procs()
    if live:
        _wait_until_joined([p for p, _ in procs], [workdir / f"{group}-{i}.log"
                                                   for i in range(k)], partitions)
    parts = [(topic, p) for p in range(partitions)]
    samples: list[Sample] = []

    def sample(committed: int, per_partition: tuple[int, ...]) -> None:
        samples.append(Sample(time.time(), committed, per_partition, _machine_busy_s(),
                              tuple(_cpu_s([t]) for t in trainers), _cpu_s(brokers),
                              tuple(_runq_wait_s(t.pid) for t in trainers)))

    if reveal is not None:
        t_fill = time.time()
        commit = reveal()
        print(f"trainers={k}: producing the events in a transaction took "
              f"{time.time() - t_fill:.2f} s (before the window)", flush=True)
        sample(0, (0,) * partitions)
        commit()
    if fill is not None:
        # The window opens as the events start to arrive; they are produced in a
        # thread while the probe samples, since the trainers learn meanwhile.
        sample(0, (0,) * partitions)
        produced: list[float] = []

        def produce() -> None:
            fill()
            produced.append(time.time())

        filler = threading.Thread(target=produce, daemon=True)
        filler.start()
    probe = make_consumer(bootstrap, ConsumerOptions(group_id=group, client_id="bench"))
    seen = 0
    try:
        while seen < n:
            try:
                got = probe.committed(parts)
            except KafkaClientError as exc:  # e.g. "Not coordinator" while the group forms
                print(f"probe: {exc}; retrying", file=sys.stderr)
                time.sleep(0.5)
                continue
            total = sum(v or 0 for v in got.values())
            if total > seen:
                seen = total
                per = tuple(got.get(tp) or 0 for tp in parts)
                sample(total, per)
            gone = [i for i, (p, _) in enumerate(procs) if p.poll() is not None]
            if gone and seen < n:
                tail = (workdir / f"{group}-{gone[0]}.log").read_text(errors="replace")
                raise RuntimeError(f"trainer t{gone[0]} exited early; its log ends:\n"
                                   + tail[-3000:])
            time.sleep(0.1)
    finally:
        probe.close()
    if fill is not None:
        filler.join()
        print(f"trainers={k}: producing the events took {produced[0] - samples[0].t:.2f} s",
              flush=True)
    if live:
        for p, _ in procs:  # all learned: stop now rather than after the idle wait
            p.send_signal(signal.SIGTERM)
    update_bytes = evaluated = 0
    assigned: list[float] = []
    loop_phases: list[str] = []
    for p, log in procs:
        p.wait(120)
        log.close()
    for i in range(k):
        text = (workdir / f"{group}-{i}.log").read_text(errors="replace")
        update_bytes += sum(int(b) for b in re.findall(r"\((\d+) bytes\)", text))
        assigned.extend(_assigned_at(text))
        evaluated += sum(int(e) for e in re.findall(r"stopped: .* evaluated=(\d+)", text))
        loop_phases.extend(re.findall(r"loop time by phase \(.*?\): (.*)$", text, flags=re.M))
    first, end = samples[0], samples[-1]
    t0, t1 = first.t, end.t
    span = max(t1 - t0, 1e-9)
    # Until session 28 this was n / span, with the window opened by the first commit
    # seen after producing ended: that commit already held 20-54% of the events with 2
    # trainers (2-14% with one), counted over a window that left out their time.
    overall = (end.committed - first.committed) / span
    last = max((t for t in assigned if t <= t1), default=t0)
    before = max((s.committed for s in samples if s.t <= last), default=0)
    start = min((s.t for s in samples if s.t >= last), default=t1)
    steady = (n - before) / max(t1 - max(last, min(start, t1)), 1e-9)
    learned = max(end.committed - first.committed, 1)
    done = []
    for part in range(partitions):
        final = end.per_partition[part]
        at = min(s.t for s in samples if s.per_partition[part] >= final)
        done.append(f"p{part} {at - t0:.1f} s")
    print(f"trainers={k}: each partition's last commit after "
          + ("producing began: " if fill is not None else
             "the fill's commit: " if reveal is not None else "the first commit: ")
          + ", ".join(done) + "; cores per trainer process: " + ", ".join(
              f"t{i} {(b - a) / max(end.t - first.t, 1e-9):.2f}"
              for i, (a, b) in enumerate(zip(first.trainer_s, end.trainer_s, strict=True))),
          flush=True)
    print(f"trainers={k}: main thread waiting for a core: " + ", ".join(
        f"t{i} {b - a:.1f} s" for i, (a, b) in
        enumerate(zip(first.trainer_wait_s, end.trainer_wait_s, strict=True)))
        + f" of {span:.1f} s", flush=True)
    for i, phases in enumerate(loop_phases):
        print(f"trainers={k}: t{i} loop time by phase (wall/CPU s, whole run): {phases}",
              flush=True)
    cpu = CpuUse(
        machine_cores=(end.machine_s - first.machine_s) / span,
        trainer_cores=(sum(end.trainer_s) - sum(first.trainer_s)) / span,
        broker_cores=(end.broker_s - first.broker_s) / span,
        machine_s_per_1k=(end.machine_s - first.machine_s) * 1000 / learned,
    )
    return overall, steady, update_bytes, evaluated, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--partitions", type=int, default=4,
                    help="partitions of the topic (default 4: every trainer learns the same "
                         "share; 3 with 2 trainers gives the folding one a single partition)")
    ap.add_argument("--trainers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", default="popularity,itemknn,sequence")
    ap.add_argument("--batch-size", type=int, default=2000)
    fill_mode = ap.add_mutually_exclusive_group()
    fill_mode.add_argument("--prefilled", action="store_true",
                           help="fill the topic before the trainers start (the first member "
                                "may learn much of it before the others join; the default "
                                "produces the events once every trainer owns partitions)")
    fill_mode.add_argument("--one-transaction", action="store_true",
                           help="produce the events, once every trainer owns partitions, in "
                                "one transaction and open the window at its commit (the "
                                "stream appears at once; producing is not in the window)")
    ap.add_argument("--commit-every-s", type=float, default=None,
                    help="the trainers' --commit-every-s: seconds a transaction stays open "
                         "over consecutive polls (0: one per poll; default: the trainer's)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="measure every trainer count this many times, in turns (1, 2, 1, "
                         "2, ...), each round's ratio against that round's first count; "
                         "prints every round's ratios and their median")
    ap.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                    help="copy the trainers' logs into DIR (kept after the run)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = resolve_bootstrap(Path(tmp) / "kafka")
        bootstrap = broker.bootstrap
        events = click_events(args.events, args.users, args.items, seed=1)
        topics: list[str] = []

        def new_topic(filled: bool) -> str:
            topic = f"bench-scale-{uuid.uuid4().hex[:8]}"
            create_topics(bootstrap, {topic: args.partitions})
            topics.extend([topic, updates_topic(topic)])
            if filled:
                produce_events(bootstrap, topic, events)
            return topic

        try:
            topic = new_topic(filled=True) if args.prefilled else ""
            cores = os.cpu_count() or 1
            base = args.trainers[0]
            ratios: dict[int, list[float]] = {k: [] for k in args.trainers}
            for rnd in range(1, args.repeats + 1):
                rates = {}
                for k in args.trainers:
                    fill = reveal = None
                    if not args.prefilled:
                        topic = new_topic(filled=False)
                        if args.one_transaction:
                            reveal = partial(produce_in_one_transaction, bootstrap, topic,
                                             events)
                        else:
                            fill = partial(produce_events, bootstrap, topic, events)
                    overall, steady, nbytes, evaluated, cpu = run(
                        bootstrap, topic, args.events, k, args.partitions, args.models,
                        args.batch_size, Path(tmp), fill, reveal, args.commit_every_s)
                    # one update-topic name per input topic: one run at a time
                    delete_topics(bootstrap, [updates_topic(topic)])
                    if args.keep_logs is not None:
                        args.keep_logs.mkdir(parents=True, exist_ok=True)
                        for log in Path(tmp).glob("bench-*.log"):
                            shutil.copy(log, args.keep_logs / log.name)
                    rates[k] = (overall, steady, cpu)
                    print(f"trainers={k}: overall {overall:,.0f} events/s, steady "
                          f"{steady:,.0f} events/s, update topic {nbytes / args.events:,.0f} "
                          f"bytes per learned event, {evaluated:,} events evaluated",
                          flush=True)
                    print(f"trainers={k}: cores busy {cpu.machine_cores:.2f} of {cores} "
                          f"(trainers {cpu.trainer_cores:.2f}, broker {cpu.broker_cores:.2f}), "
                          f"{cpu.machine_s_per_1k * 1000:.0f} CPU ms per 1,000 events, "
                          f"ceiling {cpu.ceiling(cores):,.0f} events/s with {cores} cores busy",
                          flush=True)
                b_over, b_steady, b_cpu = rates[base]
                for k, (o, st, cpu) in rates.items():
                    ratios[k].append(o / b_over)
                    print(f"round {rnd}: trainers={k}: overall {o / b_over:.2f}x, steady "
                          f"{st / b_steady:.2f}x trainers={base} = cores busy "
                          f"{cpu.machine_cores / b_cpu.machine_cores:.2f}x x CPU per event "
                          f"{b_cpu.machine_s_per_1k / cpu.machine_s_per_1k:.2f}x; ceiling "
                          f"{cpu.ceiling(cores) / b_over:.2f}x", flush=True)
            if args.repeats > 1:
                for k in args.trainers[1:]:
                    print(f"trainers={k} vs trainers={base}, overall, {args.repeats} rounds: "
                          + ", ".join(f"{r:.2f}x" for r in ratios[k])
                          + f"; median {statistics.median(ratios[k]):.2f}x, lowest "
                          f"{min(ratios[k]):.2f}x")
        finally:
            delete_topics(bootstrap, topics)
            broker.close()


if __name__ == "__main__":
    main()
